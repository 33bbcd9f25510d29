"""Helpers shared by the Triton kernels: exact GELU, dot precision, autotune config selection."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 kernels run on CPU through numpy: multi-config autotune fails there ("0 active drivers")
# and bf16 tl.dot returns garbage (triton issue 11584), so launchers keep one config and tests avoid bf16 dots.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@triton.jit
def gelu_erf(a):
    """Exact GELU on fp32 `a`: 0.5 * a * (1 + erf(a / sqrt 2)) (timm's nn.GELU, approximate='none')."""
    return 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))


@triton.jit
def gelu_erf_grad(a):
    """d GELU / da on fp32 `a`: Phi(a) + a * phi(a)."""
    return 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476)) + a * tl.exp(-0.5 * a * a) * 0.3989422804014327


# tanh-approximate GELU (nn.GELU(approximate="tanh"), Flax's default), with u = k (a + c a^3), k = sqrt(2/pi),
# c = 0.044715:   GELU(a) = 0.5 a (1 + tanh u) = a * sigmoid(2u)
#                 GELU'(a) = sig + 2 a sig (1 - sig) k (1 + 3 c a^2),   sig = sigmoid(2u)
# sig = 1 / (1 + e), e = exp(-2u) clamped at exp(80) and sig = 0 below 2u = -80, so 1 - sig = e * sig and the derivative
# term stay finite for any fp32 a (a^3 may overflow to inf: the clamp and a clamped a in the slope keep inf * 0 out).
# No cancellation near a = 0 or for large |a| (torch's 1 + tanh u loses digits as u -> -inf; this form does not).
@triton.jit
def _gelu_tanh_sig(a):
    """(sig, 1 - sig) of fp32 `a`, sig = sigmoid(2 k (a + c a^3)) = 0.5 (1 + tanh u)."""
    u2 = 1.5957691216057308 * (a + 0.044715 * a * a * a)  # 2u
    e = tl.exp(tl.minimum(-u2, 80.0))
    sig = tl.where(u2 < -80.0, 0.0, 1.0 / (1.0 + e))
    return sig, e * sig


@triton.jit
def gelu(a, ACT: tl.constexpr):
    """GELU of fp32 `a`: ACT = "gelu" (exact erf) or "gelu_tanh" (tanh approximation)."""
    if ACT == "gelu_tanh":
        sig, _ = _gelu_tanh_sig(a)
        return a * sig
    else:
        return gelu_erf(a)


@triton.jit
def gelu_and_grad(a, ACT: tl.constexpr):
    """(GELU(a), GELU'(a)) of fp32 `a` for ACT = "gelu" (one erf shared) or "gelu_tanh" (one exp shared)."""
    if ACT == "gelu_tanh":
        sig, one_minus = _gelu_tanh_sig(a)
        ac = tl.minimum(tl.maximum(a, -1.0e4), 1.0e4)  # sig (1 - sig) is exactly 0 long before |a| = 1e4
        slope = 1.5957691216057308 * (1.0 + 0.134145 * ac * ac)  # 2u' = 2k (1 + 3c a^2)
        return a * sig, sig + a * (sig * one_minus) * slope
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476))  # Phi(a): GELU = a Phi(a), GELU' = Phi + a phi(a)
        return a * cdf, cdf + a * tl.exp(-0.5 * a * a) * 0.3989422804014327


@triton.jit
def ln_row_stats(row_ptrs, row_mask, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 LayerNorm statistics of BLOCK_M rows of length K: returns mean [BLOCK_M], rstd [BLOCK_M].

    row_ptrs [BLOCK_M]: pointer to element 0 of each (contiguous) row. One pass over K in BLOCK_K chunks with a
    Welford update per lane on the shifted values x - x[m, 0]: lane (m, j) sees x[m, j], x[m, j + BLOCK_K], ... and
    keeps their running mean and sum of squared deviations m2; at the end the BLOCK_K lanes are merged exactly
    (n_j = samples of lane j):
        mean = x[m, 0] + sum_j n_j mean_j / K,    M2 = sum_j m2_j + sum_j n_j (mean_j - (mean - x[m, 0]))^2,
        rstd = 1 / sqrt(M2 / K + eps)
    (biased variance, as torch's layer_norm). No E[x^2] - E[x]^2 cancellation, and the shift keeps the mean's rounding
    error relative to the spread of the row rather than its offset. Only elementwise work in the loop.
    """
    mean = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    count = tl.zeros([BLOCK_K], dtype=tl.float32)  # samples seen by each lane
    shift = tl.load(row_ptrs, mask=row_mask, other=0.0).to(tl.float32)  # x[m, 0]: [BLOCK_M]
    offs_k = tl.arange(0, BLOCK_K)
    ptrs = row_ptrs[:, None] + offs_k[None, :]  # [BLOCK_M, BLOCK_K], advanced by BLOCK_K per step
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        xk = tl.load(ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32) - shift[:, None]
        count += k_mask.to(tl.float32)
        inv_n = tl.where(k_mask, 1.0 / tl.maximum(count, 1.0), 0.0)  # 0: lanes past K stay untouched
        delta = tl.where(k_mask[None, :], xk - mean, 0.0)
        mean += delta * inv_n[None, :]
        m2 += delta * (xk - mean)
        ptrs += BLOCK_K
    row_mean = tl.sum(mean * count[None, :], axis=1) / K  # of the shifted values
    dev = mean - row_mean[:, None]
    row_m2 = tl.sum(m2, axis=1) + tl.sum(dev * dev * count[None, :], axis=1)
    # IEEE-rounded sqrt (tl.sqrt may lower to the approximate instruction)
    return row_mean + shift, 1.0 / tl.sqrt_rn(row_m2 / K + eps)


def dot_precision(allow_tf32: bool, dtype: torch.dtype) -> str:
    """tl.dot input_precision: "tf32" only for fp32 operands when torch's fp32 matmul precision allows it."""
    return "tf32" if allow_tf32 and dtype == torch.float32 else "ieee"


def pick_configs(configs: list[triton.Config]) -> list[triton.Config]:
    """All configs on a GPU; under the interpreter only the first (by convention the conservative one that always
    fits)."""
    return configs[:1] if INTERPRET else configs


def torch_dtype_to_tl(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]
