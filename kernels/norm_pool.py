"""Fused final LayerNorm + mean over tokens: x [B, S, C] -> y [B, C], one launch.

  mu[b, s], rstd[b, s] = fp32 statistics of x[b, s, :] over all C   (one pass, layernorm.ln_row_stats: Welford)
  y[b, c] = g[c] * (1/S) * sum_s (x[b, s, c] - mu[b, s]) * rstd[b, s] + beta[c]
          = mean_s(LN(x)[b, s, c])                                        (g and beta factor out of the token mean)

Grid (B, C / BLOCK_C): program (b, j) walks the S tokens in BLOCK_S chunks; for each chunk it computes the per-token
statistics over the full C (from L2: every C tile of a sample re-reads the sample's rows) and adds its normalised
[BLOCK_S, BLOCK_C] tile into an fp32 column sum. No atomics: each output element has exactly one writer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmixer.mix_args import check_norm_args

from ._common import pick_configs
from ._specs import MODEL_SHAPES, ROUTE_DTYPES, Case, Ptr, SpecSet
from .layernorm import ln_row_stats


def _configs() -> list[triton.Config]:
    """Conservative first (the interpreter uses only it); BLOCK_K is the chunk of the statistics pass."""

    def cfg(bs, bc, bk, warps):
        return triton.Config({"BLOCK_S": bs, "BLOCK_C": bc, "BLOCK_K": bk}, num_warps=warps, num_stages=1)

    return [cfg(32, 64, 128, 4), cfg(16, 128, 256, 4), cfg(32, 256, 256, 8)]


@triton.autotune(configs=pick_configs(_configs()), key=["S", "C"])
@triton.jit
def _norm_pool_kernel(
    X,  # [B, S, C] dtype X, contiguous
    LN_W,  # [C] LayerNorm weight (any float dtype, read as fp32)
    LN_B,  # [C] LayerNorm bias
    OUT,  # [B, C] out, dtype X
    S,
    C,
    eps,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    x_b = X + b * S * C  # sample b's [S, C] block

    col_sum = tl.zeros([BLOCK_C], dtype=tl.float32)  # sum_s xhat[s, c]
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_mask = offs_s < S
        rows = x_b + offs_s * C  # [BLOCK_S] token row starts
        mean, rstd = ln_row_stats(rows, s_mask, C, eps, BLOCK_S, BLOCK_K)
        tile_mask = s_mask[:, None] & c_mask[None, :]
        xt = tl.load(rows[:, None] + offs_c[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        xhat = tl.where(tile_mask, (xt - mean[:, None]) * rstd[:, None], 0.0)  # [BLOCK_S, BLOCK_C]
        col_sum += tl.sum(xhat, axis=0)

    g = tl.load(LN_W + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    beta = tl.load(LN_B + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    y = col_sum / S * g + beta
    tl.store(OUT + b * C + offs_c, y.to(OUT.dtype.element_ty), mask=c_mask)


def norm_pool_fwd(x: Tensor, ln_weight: Tensor, ln_bias: Tensor, *, eps: float) -> Tensor:
    """mean over tokens of LayerNorm(x): x [B, S, C] fp32/fp16/bf16 (S >= 1), ln_* [C] any of those dtypes ->
    [B, C] in x's dtype (fastmixer.mix_args has the contract; a non-dense x is copied dense). fp32 statistics and
    accumulation; one launch."""
    check_norm_args("norm_pool_fwd", x, ln_weight, ln_bias, eps=eps, kernel=True, mixed=True)
    x = x.contiguous()
    B, S, C = x.shape
    out = torch.empty((B, C), dtype=x.dtype, device=x.device)
    if B == 0 or C == 0:
        return out

    def grid(meta):
        return (B, triton.cdiv(C, meta["BLOCK_C"]))

    _norm_pool_kernel[grid](x, ln_weight.contiguous(), ln_bias.contiguous(), out, S, C, float(eps))
    return out


# ------------------------------------------------------------------------------------------------ AOT build specs
def spec_cases() -> list[Case]:
    """The launches the AOT builds cover: the model dtypes at every model shape."""
    return [Case(route, shape) for route in ("fp32", "fp16", "bf16") for shape in MODEL_SHAPES]


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (autotune config, dtype, specialisation) at the model shapes (kernels/_specs.py)."""
    specs = SpecSet("norm_pool")
    for case in spec_cases():
        route, shape = case.route, case.shape
        x = Ptr(ROUTE_DTYPES[route][0])
        ln = Ptr(ROUTE_DTYPES[route][1])
        args = dict(X=x, LN_W=ln, LN_B=ln, OUT=x, S=shape.S, C=shape.C, eps=1e-6)
        for i, cfg in enumerate(_configs()):
            specs.add(_norm_pool_kernel, route, shape, args, cfg, config_index=i)
    return specs.specs()
