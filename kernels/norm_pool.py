"""Fused final LayerNorm + mean over tokens: x [B, S, C] -> y [B, C], one launch.

  mu[b, s], rstd[b, s] = fp32 statistics of x[b, s, :] over all C   (one pass, _common.ln_row_stats: Welford)
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

from ._common import ln_row_stats, pick_configs


def _configs() -> list[triton.Config]:
    """Conservative first (the interpreter uses only it); BLOCK_K is the chunk of the statistics pass."""

    def cfg(bs, bc, bk, warps):
        return triton.Config({"BLOCK_S": bs, "BLOCK_C": bc, "BLOCK_K": bk}, num_warps=warps, num_stages=1)

    return [cfg(32, 64, 128, 4), cfg(16, 128, 256, 4), cfg(32, 256, 256, 8)]


@triton.autotune(configs=pick_configs(_configs()), key=["S", "C"])
@triton.jit
def _norm_pool_kernel(
    x_ptr,  # [B, S, C] X, contiguous
    ln_w_ptr,  # [C] LayerNorm weight (any float dtype, read as fp32)
    ln_b_ptr,  # [C] LayerNorm bias
    out_ptr,  # [B, C] X out
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
    x_b = x_ptr + b * S * C  # sample b's [S, C] block

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

    g = tl.load(ln_w_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    beta = tl.load(ln_b_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    y = col_sum / S * g + beta
    tl.store(out_ptr + b * C + offs_c, y.to(out_ptr.dtype.element_ty), mask=c_mask)


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


def gpu_build_specs() -> list[dict]:
    """One spec per (autotune config, dtype) for the sm_90/sm_80 build test (keys as in channel_mix.gpu_build_specs).

    S and C are runtime i32 arguments, so one build serves Mixer-B/16 (S=196, C=768), L/16 (196, 1024) and H/14
    (256, 1280); "attrs" carries the divisibility-by-16 hints the JIT derives there (pointers and C; S = 196 is not).
    """
    fn = _norm_pool_kernel.fn
    specs = []
    for dt in ("fp32", "fp16", "bf16"):
        types = {"x_ptr": f"*{dt}", "ln_w_ptr": "*fp32", "ln_b_ptr": "*fp32", "out_ptr": f"*{dt}", "S": "i32",
                 "C": "i32", "eps": "fp32"}  # fmt: skip
        for i, cfg in enumerate(_configs()):
            signature = {a: ("constexpr" if a in cfg.kwargs else types[a]) for a in fn.arg_names}
            hinted = [j for j, a in enumerate(fn.arg_names) if a.endswith("_ptr") or a == "C"]
            attrs = {(j,): [["tt.divisibility", 16]] for j in hinted}
            specs.append({
                "name": f"norm_pool[{dt},cfg{i}]",
                "fn": fn,
                "signature": signature,
                "constexprs": dict(cfg.kwargs),
                "attrs": attrs,
                "num_warps": cfg.num_warps,
                "num_stages": cfg.num_stages,
            })  # fmt: skip
    return specs
