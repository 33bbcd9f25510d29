"""LayerNorm pieces shared by the kernels: the row statistics, the forward and backward row math, and the light
forward pass that feeds the channel-mix GEMMs.

Math (per row m of length C, eps from the model, biased variance as torch's layer_norm; everything in fp32):
    mean = sum_c x[m, c] / C,   var = sum_c (x[m, c] - mean)^2 / C,   rstd = 1 / sqrt(var + eps)
    forward:   xhat = (x - mean) * rstd,   y = xhat * g + beta
    backward:  dxhat = dy * g
               dx = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat))
               dg = sum_m dy * xhat,   dbeta = sum_m dy                        (column sums: the caller's partials)

Statistics algorithm (one, for every kernel): `ln_row_stats`, a shifted per-lane Welford over K in BLOCK_K chunks
merged exactly at the end. With one chunk (BLOCK_K >= K) it is the shifted two-pass algorithm; with several it needs
one read of each row and only elementwise work per chunk. Never E[x^2] - E[x]^2.

Jit helpers (import them from here):
    ln_row_stats(row_ptrs, row_mask, K, eps, BLOCK_M, BLOCK_K) -> (mean [BLOCK_M], rstd [BLOCK_M])
    ln_normalize(x, mean, rstd, g, beta) -> y                 x [R, N] fp32, mean/rstd [R], g/beta [N] fp32
    ln_row_grad(xhat, dy, g, mask, C) -> dx                   whole rows [R, BLOCK_C] in registers, fp32

Kernel and launcher:
    `_layernorm_fwd_kernel` / `layernorm_fwd(x, g, beta, eps=, out_dtype=)`: y = LN(x) over the last dim of x
    [..., C], written in `out_dtype` (the channel-mix GEMMs' dtype W: exactly where torch rounds LN's output before
    fc1). One read of x from memory (the normalising loop re-reads the program's rows from L1/L2), one write of y.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._specs import MODEL_SHAPES, ROUTE_DTYPES, Case, Ptr, SpecSet


# ------------------------------------------------------------------------------------------------ jit helpers
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


@triton.jit
def ln_normalize(x, mean, rstd, g, beta):
    """LayerNorm forward of a tile: x [R, N] fp32, mean/rstd [R], g/beta [N] fp32 -> (x - mean) * rstd * g + beta."""
    return (x - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]


@triton.jit
def ln_row_grad(xhat, dy, g, mask, C):
    """LayerNorm backward of whole rows held in registers: xhat, dy [R, BLOCK_C] fp32 (0 where ~mask), g [BLOCK_C]
    fp32 -> d(LN)/dx contracted with dy, divided by rstd: dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat) with
    dxhat = dy * g (multiply by rstd [R, 1] for dx). 0 where ~mask."""
    dxhat = tl.where(mask, dy * g[None, :], 0.0)
    c1 = tl.sum(dxhat * xhat, axis=1)[:, None] / C
    c2 = tl.sum(dxhat, axis=1)[:, None] / C
    return tl.where(mask, dxhat - c2 - xhat * c1, 0.0)


# ------------------------------------------------------------------------------------------------ forward pass kernel
@triton.jit
def _layernorm_fwd_kernel(
    x_ptr,  # [M, C] X: rows to normalise, contiguous
    ln_w_ptr,  # [C] g (any float dtype, read as fp32)
    ln_b_ptr,  # [C] beta
    y_ptr,  # [M, C] out, dtype of the consumer (W): LN(x) rounded once from fp32
    M,
    C,
    eps,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # channels per chunk
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    rows = offs_m.to(tl.int64) * C  # [BLOCK_M] row offsets (M * C may pass 2^31)
    mean, rstd = ln_row_stats(x_ptr + rows, m_mask, C, eps, BLOCK_M, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, C, BLOCK_K):  # the same rows again, from L1/L2
        k_mask = offs_k < C - k0
        mask = m_mask[:, None] & k_mask[None, :]
        offs = rows[:, None] + (k0 + offs_k)[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(ln_w_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        beta = tl.load(ln_b_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        y = ln_normalize(x, mean, rstd, g, beta)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _launch_params(C: int) -> dict:
    """Tile of the forward pass, a function of C only: [BLOCK_M, BLOCK_K] chunks of 4096 fp32 values on 8 warps (16 per
    thread; BLOCK_K = 256 divides every Mixer width), at most 64 rows per program for small C."""
    block_k = min(256, triton.next_power_of_2(C))
    block_m = min(64, 4096 // block_k)
    return dict(BLOCK_M=block_m, BLOCK_K=block_k, num_warps=8 if block_m * block_k >= 4096 else 4)


def layernorm_fwd(x: Tensor, ln_weight: Tensor, ln_bias: Tensor, *, eps: float, out_dtype: torch.dtype) -> Tensor:
    """y = LayerNorm(x) over the last dim: x [..., C] fp32/fp16/bf16, ln_* [C] any of those dtypes -> y [..., C] in
    out_dtype (fp32/fp16/bf16), a new contiguous tensor. fp32 statistics and math, one rounding to out_dtype."""
    kernel_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ValueError(f"layernorm_fwd: x must be a tensor [..., C], got {type(x).__name__}")
    C = x.shape[-1]
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if not isinstance(t, Tensor) or tuple(t.shape) != (C,):
            raise ValueError(f"layernorm_fwd: {name} must have shape ({C},), got {getattr(t, 'shape', t)}")
        if t.device != x.device:
            raise ValueError(f"layernorm_fwd: {name} is on {t.device}, x on {x.device}")
    for name, dt in (("x", x.dtype), ("ln_weight", ln_weight.dtype), ("ln_bias", ln_bias.dtype), ("out", out_dtype)):
        if dt not in kernel_dtypes:
            raise TypeError(f"layernorm_fwd: {name} dtype must be float32/float16/bfloat16, got {dt}")
    x = x.contiguous()
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    M = x.numel() // C if C else 0
    if M == 0 or C == 0:
        return y
    p = _launch_params(C)
    grid = (triton.cdiv(M, p["BLOCK_M"]),)
    _layernorm_fwd_kernel[grid](
        x, ln_weight.contiguous(), ln_bias.contiguous(), y, M, C, float(eps),
        BLOCK_M=p["BLOCK_M"], BLOCK_K=p["BLOCK_K"], num_warps=p["num_warps"],
    )  # fmt: skip
    return y


def layernorm_ref(x: Tensor, ln_weight: Tensor, ln_bias: Tensor, *, eps: float, out_dtype: torch.dtype) -> Tensor:
    """What layernorm_fwd computes, in PyTorch: fp32 layer_norm, one cast to out_dtype."""
    y = torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), ln_weight.float(), ln_bias.float(), eps)
    return y.to(out_dtype)


# ------------------------------------------------------------------------------------------------ AOT build specs
def spec_cases() -> list[Case]:
    """The forward pass as channel_mix launches it: every dtype route at every model shape (x dtype -> W)."""
    return [Case(route, shape) for route in ROUTE_DTYPES for shape in MODEL_SHAPES]


def build_specs(specs: SpecSet, cases: list[Case]) -> None:
    """Add the forward pass's builds for `cases` to `specs` (channel_mix adds them to its own set too: its launcher
    runs this kernel)."""
    for case in cases:
        x_dt, ln_dt, w_dt, _ = ROUTE_DTYPES[case.route]
        shape = case.shape
        p = _launch_params(shape.C)
        args = dict(x_ptr=Ptr(x_dt), ln_w_ptr=Ptr(ln_dt), ln_b_ptr=Ptr(ln_dt), y_ptr=Ptr(w_dt), M=shape.M, C=shape.C,
                    eps=1e-6, BLOCK_M=p["BLOCK_M"], BLOCK_K=p["BLOCK_K"])  # fmt: skip
        specs.add(_layernorm_fwd_kernel, case.route, shape, args, triton.Config({}, num_warps=p["num_warps"]))


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (dtype route, specialisation) of the forward pass at the model shapes."""
    specs = SpecSet("layernorm")
    build_specs(specs, spec_cases())
    return specs.specs()
