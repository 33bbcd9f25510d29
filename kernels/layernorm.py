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
    ln_tile_stats(x, shift, col_mask, K, eps) -> (mean, rstd, x - mean)   its one-chunk case, rows in registers
    ln_whole_row_stats(row_ptrs, row_mask, K, eps, BLOCK_K) -> (mean, rstd)  the same, loading the rows itself
    ln_row_grad(xhat, dy, g, C) -> dx / rstd                  whole rows [R, BLOCK_C] in registers, fp32

Forward kernel and launcher:
    `_layernorm_fwd_kernel` / `layernorm_fwd(x, g, beta, eps=, out_dtype=)`: y = LN(x) over the last dim of x
    [..., C], written in `out_dtype` (the channel-mix GEMMs' dtype W: exactly where torch rounds LN's output before
    fc1). One read of x from memory (the normalising loop re-reads the program's rows from L1/L2), one write of y.
Folded forward (channel_mix's bf16 route, x and W alike): `_ln_fold_kernel` / `ln_fold`, one launch, two kinds of
    programs: row statistics of x (mean/rstd [M] fp32, ln_tile_stats on whole rows) and gamma folded into fc1's
    weight: W1g = round_W(W1 * g) [Dc, C], cw = sum_c W1g [Dc] fp32 (of the rounded values) and b' = b1 + W1 beta
    [Dc] fp32. GEMM1 then multiplies x itself by W1g and finishes in its epilogue:
        y W1^T + b1 = rstd * (x W1g^T - mean * cw) + b'        (exact algebra; y is never written)
    One read of x and of W1 instead of a read of x, a write of y and a read of y.
Backward (the row-wise kernels of channel_mix_bwd and token_mix_bwd, whole rows of C per step, s = branch scale):
    `_ln_prep_kernel` / `ln_prep`: mean/rstd recomputed from x by ln_tile_stats (nothing but x is saved by the
    forward), y = LN(x) in W, and only where dout is not already do (branch scale or autocast): do = s * dout in W
    with fp32 per-program column partials of do (a bias gradient of the caller's). Otherwise it reads no dout.
    `_ln_bwd_kernel` / `ln_backward`: dx = dout + rstd * ln_row_grad(...) (the residual path fused in) and fp32
    per-program column partials of dg and dbeta, and of dout when asked (the caller's bias gradient when do = dout:
    this pass reads dout anyway, so ln_prep need not read it at all: one W-sized read less per channel-mix backward).
    Their partial buffers are [programs, C], programs a function of the shapes only (row_programs): no atomics; the
    caller reduces them all in one launch (channel_mix_bwd.reduce_partials). Their AOT specs belong to the backward
    modules' sets (add_row_kernel_specs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import INTERPRET, round_to
from ._specs import MODEL_SHAPES, ROUTE_DTYPES, Case, Ptr, SpecSet

# Upper bound on programs of the row-wise backward kernels (their per-program column partials are [programs, C] fp32,
# written by them and read back by the reduce launch): 3 x 132, one full wave of the LN backward on H100/H200 (3 CTAs/SM
# in the kernel report; ln_prep fits 4-5). At 2048 the partials were 12 MB per LN backward at B/16 batch 256; at 396
# they are 2.3 MB. A constant, not the device's SM count: partials (and so the sums' rounding) depend on shapes only.
_MAX_ROW_PROGRAMS = 396


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
def ln_tile_stats(x, shift, col_mask, K, eps):
    """ln_row_stats' one-chunk case on rows already in registers: x [R, BLOCK_C] fp32 whole rows (BLOCK_C >= K, any
    value where ~col_mask [BLOCK_C]), shift [R] = x[:, 0] -> (mean [R], rstd [R], x - mean [R, BLOCK_C], 0 where
    ~col_mask). With one sample per lane the lane merge of ln_row_stats is the shifted two-pass: d = x - shift,
    mean_d = sum_c d / K, mean = shift + mean_d, rstd = 1 / sqrt(sum_c (d - mean_d)^2 / K + eps): the same figures
    without its loop and per-lane state."""
    d = tl.where(col_mask[None, :], x - shift[:, None], 0.0)
    mean_d = tl.sum(d, axis=1) / K
    xc = tl.where(col_mask[None, :], d - mean_d[:, None], 0.0)
    return mean_d + shift, 1.0 / tl.sqrt_rn(tl.sum(xc * xc, axis=1) / K + eps), xc


@triton.jit
def ln_whole_row_stats(row_ptrs, row_mask, K, eps, BLOCK_K: tl.constexpr):
    """ln_row_stats for rows that fit one chunk (BLOCK_K >= K): loads the [R, BLOCK_K] rows (row_ptrs [R]: element 0
    of each contiguous row) and returns ln_tile_stats' (mean [R], rstd [R]), without the per-lane Welford state."""
    offs_k = tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    x = tl.load(row_ptrs[:, None] + offs_k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
    shift = tl.load(row_ptrs, mask=row_mask, other=0.0).to(tl.float32)  # x[m, 0] (an L1 hit)
    mean, rstd, _ = ln_tile_stats(x.to(tl.float32), shift, k_mask, K, eps)
    return mean, rstd


@triton.jit
def ln_normalize(x, mean, rstd, g, beta):
    """LayerNorm forward of a tile: x [R, N] fp32, mean/rstd [R], g/beta [N] fp32 -> (x - mean) * rstd * g + beta."""
    return (x - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]


@triton.jit
def ln_row_grad(xhat, dy, g, C):
    """LayerNorm backward of whole rows held in registers: xhat, dy [R, BLOCK_C] fp32 and g [BLOCK_C] fp32, all 0
    past column C -> d(LN)/dx contracted with dy, divided by rstd: dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat)
    with dxhat = dy * g (multiply by rstd [R, 1] for dx). Past column C the result is not 0 (callers mask the store)."""
    dxhat = dy * g[None, :]
    c1 = tl.sum(dxhat * xhat, axis=1)[:, None] / C
    c2 = tl.sum(dxhat, axis=1)[:, None] / C
    return dxhat - c2 - xhat * c1


# ------------------------------------------------------------------------------------------------ forward pass kernel
@triton.jit
def _layernorm_fwd_kernel(
    X,  # [M, C] rows to normalise, dtype X, contiguous
    LN_W,  # [C] g (any float dtype, read as fp32)
    LN_B,  # [C] beta
    Y,  # [M, C] out, dtype of the consumer (W): LN(x) rounded once from fp32
    M,
    C,
    eps,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # channels per chunk
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    rows = offs_m.to(tl.int64) * C  # [BLOCK_M] row offsets (M * C may pass 2^31)
    mean, rstd = ln_row_stats(X + rows, m_mask, C, eps, BLOCK_M, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, C, BLOCK_K):  # the same rows again, from L1/L2
        k_mask = offs_k < C - k0
        mask = m_mask[:, None] & k_mask[None, :]
        offs = rows[:, None] + (k0 + offs_k)[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(LN_W + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        beta = tl.load(LN_B + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        y = ln_normalize(x, mean, rstd, g, beta)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _ln_fold_kernel(
    X,  # [M, C] x rows, bf16 (W)
    LN_W,  # [C] g
    LN_B,  # [C] beta
    W1,  # [N, C] fc1.weight, W
    B1,  # [N] fc1.bias, W
    MEAN,  # out [M] fp32
    RSTD,  # out [M] fp32
    W1G,  # out [N, C] W: W1 * g, rounded once
    CW,  # out [N] fp32: sum_c W1G[n, c] (the rounded values)
    BF,  # out [N] fp32: b1[n] + sum_c W1[n, c] * beta[c]
    M,
    N,
    C,
    eps,
    row_programs,  # programs [0, row_programs) take x's rows, the rest W1's
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_C: tl.constexpr,  # >= C: whole rows
):
    pid = tl.program_id(0)
    offs_r = tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    if pid < row_programs:  # statistics of BLOCK_R rows of x
        rows = pid * BLOCK_R + offs_r
        r_mask = rows < M
        mean, rstd = ln_whole_row_stats(X + rows.to(tl.int64) * C, r_mask, C, eps, BLOCK_C)
        tl.store(MEAN + rows, mean, mask=r_mask)
        tl.store(RSTD + rows, rstd, mask=r_mask)
    else:  # BLOCK_R rows of W1: fold g in, and beta into the bias
        rows = (pid - row_programs) * BLOCK_R + offs_r
        r_mask = rows < N
        mask = r_mask[:, None] & c_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + offs_c[None, :]
        w = tl.load(W1 + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(LN_W + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        beta = tl.load(LN_B + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        wg = round_to(w * g[None, :], W1G.dtype.element_ty)
        tl.store(W1G + offs, wg.to(W1G.dtype.element_ty), mask=mask)
        tl.store(CW + rows, tl.sum(wg.to(tl.float32), axis=1), mask=r_mask)
        b1 = tl.load(B1 + rows, mask=r_mask, other=0.0).to(tl.float32)
        tl.store(BF + rows, b1 + tl.sum(w * beta[None, :], axis=1), mask=r_mask)


# ------------------------------------------------------------------------------------------------ backward row kernels
@triton.jit
def _ln_prep_kernel(
    X,  # [M, C] x, dtype X
    DOUT,  # [M, C] upstream gradient, dtype promote(X, W)
    SCALE,  # [B] branch scale (any float) if HAS_SCALE
    LN_W,  # [C] gamma
    LN_B,  # [C] beta
    Y,  # out [M, C] LN(x) in W
    DO,  # out [M, C] s * dout in W, if WRITE_DO
    MEAN,  # out [M] fp32
    RSTD,  # out [M] fp32
    DO_COLSUM,  # out [programs, C] fp32 column partials of s * dout, if COL_SUM (only with WRITE_DO)
    M,
    C,
    S,  # tokens per sample: the branch scale of row m is SCALE[m // S]
    rows_per_prog,  # a multiple of BLOCK_R
    eps,
    BLOCK_R: tl.constexpr,  # rows per step
    BLOCK_C: tl.constexpr,  # >= C: whole rows
    HAS_SCALE: tl.constexpr,
    WRITE_DO: tl.constexpr,  # else DOUT, DO are not read (placeholders)
    COL_SUM: tl.constexpr,
):
    tl.static_assert(WRITE_DO or not COL_SUM, "ln_prep: column partials of do only where do is written")
    pid = tl.program_id(0)
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    g = tl.load(LN_W + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    beta = tl.load(LN_B + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    colsum = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows_per_prog, BLOCK_R):
        offs_r = pid * rows_per_prog + r0 + tl.arange(0, BLOCK_R)  # [BLOCK_R] whole rows of C per step
        r_mask = offs_r < M
        rows = offs_r.to(tl.int64) * C
        mask = r_mask[:, None] & c_mask[None, :]
        offs = rows[:, None] + offs_c[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(X + rows, mask=r_mask, other=0.0).to(tl.float32)  # x[m, 0] (an L1 hit)
        mean, rstd, xc = ln_tile_stats(x, shift, c_mask, C, eps)  # whole rows: ln_row_stats' one-chunk case
        tl.store(MEAN + offs_r, mean, mask=r_mask)
        tl.store(RSTD + offs_r, rstd, mask=r_mask)
        y = xc * rstd[:, None] * g[None, :] + beta[None, :]  # = ln_normalize(x, ...), x - mean reused
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
        if WRITE_DO:
            do = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_SCALE:
                do = do * tl.load(SCALE + offs_r // S, mask=r_mask, other=0.0).to(tl.float32)[:, None]
            tl.store(DO + offs, do.to(DO.dtype.element_ty), mask=mask)
            if COL_SUM:
                colsum += tl.sum(do, axis=0)
    if COL_SUM:
        tl.store(DO_COLSUM + pid.to(tl.int64) * C + offs_c, colsum, mask=c_mask)


@triton.jit
def _ln_bwd_kernel(
    X,  # [M, C] x, dtype X
    DY,  # [M, C] gradient of LN(x), any float dtype
    DOUT,  # [M, C] upstream gradient (the residual path)
    LN_W,  # [C] gamma
    MEAN,  # [M] fp32
    RSTD,  # [M] fp32
    DX,  # out [M, C] in X
    DG_PART,  # out [programs, C] fp32 partials of sum dy * xhat
    DB_PART,  # out [programs, C] fp32 partials of sum dy
    DOUT_PART,  # out [programs, C] fp32 partials of sum dout, if DOUT_SUM
    M,
    C,
    rows_per_prog,  # a multiple of BLOCK_R
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= C: whole rows
    DOUT_SUM: tl.constexpr,
):
    # dx = dout + rstd * (dy*g - mean_C(dy*g) - xhat * mean_C(dy*g*xhat)): whole rows, fp32 (ln_row_grad).
    pid = tl.program_id(0)
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    g = tl.load(LN_W + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    dg = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows_per_prog, BLOCK_R):
        offs_r = pid * rows_per_prog + r0 + tl.arange(0, BLOCK_R)
        r_mask = offs_r < M
        mask = r_mask[:, None] & c_mask[None, :]
        offs = offs_r.to(tl.int64)[:, None] * C + offs_c[None, :]
        mean = tl.load(MEAN + offs_r, mask=r_mask, other=0.0)[:, None]
        rstd = tl.load(RSTD + offs_r, mask=r_mask, other=0.0)[:, None]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        dx = dout + rstd * ln_row_grad(xhat, dy, g, C)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dg += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
        if DOUT_SUM:
            dsum += tl.sum(dout, axis=0)
    tl.store(DG_PART + pid.to(tl.int64) * C + offs_c, dg, mask=c_mask)
    tl.store(DB_PART + pid.to(tl.int64) * C + offs_c, db, mask=c_mask)
    if DOUT_SUM:
        tl.store(DOUT_PART + pid.to(tl.int64) * C + offs_c, dsum, mask=c_mask)


# ------------------------------------------------------------------------------------------------ launchers
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


# One-warp whole-row passes (token_mix's stats pass, _ln_fold_kernel): rows in registers up to C = 2048 (every Mixer
# width), so a row's sums are warp shuffles (no shared-memory round trip between warps). Token stats pass, sm_90 SASS,
# bf16, C = 768 (whole rows of 1024 lanes): warp-instructions per row 608 with [4, 1024] on 4 warps, 348 with
# [2, 1024] on 1 warp, 326 with [4, 1024] on 1 warp (128 fp32 values per thread); the chunked Welford it replaced
# ([8, 512] on 4 warps) 1367 per 8 rows.
WHOLE_ROW_WARPS = 1
WHOLE_ROW_MAX_C = 2048


def whole_row_tile(C: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C) of a one-warp whole-row pass over rows of C <= WHOLE_ROW_MAX_C channels: BLOCK_C = the next
    power of two >= C (at least 16), BLOCK_R x BLOCK_C = 2048 values (64 per thread), at most 64 rows."""
    block_c = max(16, triton.next_power_of_2(C))
    return max(1, min(64, 2048 // block_c)), block_c


def folds(x_dtype: torch.dtype, w_dtype: torch.dtype, C: int, rows: int, hidden: int) -> bool:
    """Whether channel_mix folds LN into GEMM1 (ln_fold) for x [rows, C] and fc1_weight [hidden, C]: x and W both
    bf16 (x is then already the MMA's operand dtype; with an fp32 x under autocast it would have to be rounded first,
    which the three-way rule does not allow for rows whose mean is large against their spread), C <= 2048, and
    rows >= 2 * hidden. The fold reads W1 and writes W1g (2 x hidden x C elements) where the LN pass writes and GEMM1
    reads y (2 x rows x C): below that many rows (batch < 32 at B/16) the LN pass moves fewer bytes.
    Not fp16: W1 * g would be rounded to fp16, whose range it can leave (|W1 g| > 65504 gives inf, and NaN after the
    epilogue where torch's GELU of a large negative pre-activation is 0; tiny products go subnormal). bf16 has fp32's
    exponent range. Scaling W1g's rows by powers of two would fix that, but cost the fold pass a row max (167 instead
    of 125 registers, +19% instructions on sm_90)."""
    return x_dtype == w_dtype == torch.bfloat16 and 1 <= C <= WHOLE_ROW_MAX_C and rows >= 2 * hidden


def _fold_launch(M: int, N: int, C: int) -> dict[str, int]:
    block_r, block_c = whole_row_tile(C)
    return dict(row_programs=triton.cdiv(M, block_r), programs=triton.cdiv(M, block_r) + triton.cdiv(N, block_r),
                BLOCK_R=block_r, BLOCK_C=block_c)  # fmt: skip


def ln_fold(
    x: Tensor, ln_weight: Tensor, ln_bias: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, *, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x [..., C] and W1 [N, C], b1 [N] in bf16 (folds() true), ln_* [C] -> (mean [M] fp32, rstd [M]
    fp32, W1g [N, C] W = round_W(W1 * g), cw [N] fp32 = sum_c W1g, b' [N] fp32 = b1 + W1 beta), in one launch."""
    C = x.shape[-1]
    M, N = x.numel() // C, fc1_weight.shape[0]
    if not folds(x.dtype, fc1_weight.dtype, C, M, N):
        raise ValueError(f"ln_fold: x and fc1_weight must both be bf16, C <= {WHOLE_ROW_MAX_C} and rows >= 2 x "
                         f"hidden, got {x.dtype} / {fc1_weight.dtype}, C = {C}, rows = {M}, hidden = {N}")  # fmt: skip
    dev, f32 = x.device, torch.float32
    mean, rstd = torch.empty(M, device=dev, dtype=f32), torch.empty(M, device=dev, dtype=f32)
    w1g = torch.empty_like(fc1_weight)
    cw, bf = torch.empty(N, device=dev, dtype=f32), torch.empty(N, device=dev, dtype=f32)
    p = _fold_launch(M, N, C)
    _ln_fold_kernel[(p["programs"],)](
        x, ln_weight, ln_bias, fc1_weight, fc1_bias, mean, rstd, w1g, cw, bf, M, N, C, float(eps), p["row_programs"],
        BLOCK_R=p["BLOCK_R"], BLOCK_C=p["BLOCK_C"], num_warps=WHOLE_ROW_WARPS,
    )  # fmt: skip
    return mean, rstd, w1g, cw, bf


def _row_tile(block_c: int) -> tuple[int, int]:
    """(BLOCK_R, num_warps) of the row-wise backward kernels on GPU: [BLOCK_R, BLOCK_C] tiles of 2048 elements on 8
    warps; 2048-wide rows (C > 1024) one at a time on 4 warps (2 rows x 8 warps leaves a small stack frame on
    sm_80/sm_90: ptxas, measured). 4096-element tiles spilled 16 B in the LN backward on sm_80 with triton 3.6."""
    return (1, 4) if block_c >= 2048 else (max(1, 2048 // block_c), 8)


def _row_launch(M: int, C: int) -> tuple[int, int, int, int, int]:
    """(rows_per_prog, programs, BLOCK_R, BLOCK_C, num_warps) of the row-wise backward kernels: a function of the
    shapes only (and of interpreting, where fewer, fatter programs run much faster)."""
    block_c = triton.next_power_of_2(C)
    block_r, warps = _row_tile(block_c)
    if INTERPRET:
        block_r = 16
    max_programs = 8 if INTERPRET else _MAX_ROW_PROGRAMS
    rows_per_prog = block_r * max(1, triton.cdiv(M, block_r * max_programs))
    return rows_per_prog, triton.cdiv(M, rows_per_prog), block_r, block_c, warps


def row_programs(shape) -> int:
    """Programs of the row-wise backward kernels at `shape` (rows of their per-program partials)."""
    return _row_launch(shape.M, shape.C)[1]


def prep_writes_do(dout_dtype: torch.dtype, has_scale: bool, w_dtype: torch.dtype) -> bool:
    """Whether ln_prep writes do = s * dout in W (a branch scale, or dout not in W: autocast); else do is dout itself
    and ln_prep reads no dout."""
    return has_scale or dout_dtype != w_dtype


def ln_prep(
    x: Tensor, dout: Tensor, branch_scale: Tensor | None, ln_weight: Tensor, ln_bias: Tensor, w_dtype: torch.dtype,
    *, eps: float, col_sum: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """Row pass over x [B, S, C] (and dout [B, S, C] where it writes do) -> (y [B,S,C] W, do [B,S,C] W, mean [B*S]
    fp32, rstd [B*S] fp32, column partials of do [P, C] fp32 or None). do is dout itself when it is already W and
    unscaled (prep_writes_do false: no copy, dout not read). The column partials (col_sum) come from here only where
    do is written; otherwise None, and the caller asks ln_backward for them (dout_sum=True), which reads dout anyway."""
    B, S, C = x.shape
    M = B * S
    dev = x.device
    write_do = prep_writes_do(dout.dtype, branch_scale is not None, w_dtype)
    col_sum = col_sum and write_do
    rpp, programs, block_r, block_c, warps = _row_launch(M, C)
    y = torch.empty((B, S, C), device=dev, dtype=w_dtype)
    do = torch.empty((B, S, C), device=dev, dtype=w_dtype) if write_do else dout
    mean = torch.empty(M, device=dev, dtype=torch.float32)
    rstd = torch.empty(M, device=dev, dtype=torch.float32)
    colsum = torch.empty((programs, C), device=dev, dtype=torch.float32) if col_sum else None
    _ln_prep_kernel[(programs,)](
        x, dout if write_do else x, branch_scale if branch_scale is not None else x, ln_weight, ln_bias, y,
        do if write_do else x, mean, rstd, colsum if col_sum else mean, M, C, S, rpp, eps,
        BLOCK_R=block_r, BLOCK_C=block_c, HAS_SCALE=branch_scale is not None, WRITE_DO=write_do, COL_SUM=col_sum,
        num_warps=warps,
    )  # fmt: skip
    return y, do, mean, rstd, colsum


def ln_backward(
    x: Tensor, dy: Tensor, dout: Tensor, ln_weight: Tensor, mean: Tensor, rstd: Tensor, *, dout_sum: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """LayerNorm backward fused with the residual gradient: x, dy, dout [B, S, C] (dy any float dtype); mean/rstd
    [B*S] fp32 -> (dx [B, S, C] in x's dtype, partials of dg [P, C] fp32, partials of dbeta [P, C] fp32, partials of
    the column sums of dout [P, C] fp32 if dout_sum else None); the caller reduces the partials
    (channel_mix_bwd.reduce_partials). P = row_programs: the same partial layout as ln_prep's."""
    B, S, C = x.shape
    M = B * S
    rpp, programs, block_r, block_c, warps = _row_launch(M, C)
    dx = torch.empty_like(x)
    dg_part = torch.empty((programs, C), device=x.device, dtype=torch.float32)
    db_part = torch.empty((programs, C), device=x.device, dtype=torch.float32)
    dout_part = torch.empty((programs, C), device=x.device, dtype=torch.float32) if dout_sum else None
    _ln_bwd_kernel[(programs,)](
        x, dy, dout, ln_weight, mean, rstd, dx, dg_part, db_part, dout_part if dout_sum else dg_part, M, C, rpp,
        BLOCK_R=block_r, BLOCK_C=block_c, DOUT_SUM=dout_sum, num_warps=warps,
    )  # fmt: skip
    return dx, dg_part, db_part, dout_part


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
        args = dict(X=Ptr(x_dt), LN_W=Ptr(ln_dt), LN_B=Ptr(ln_dt), Y=Ptr(w_dt), M=shape.M, C=shape.C, eps=1e-6,
                    BLOCK_M=p["BLOCK_M"], BLOCK_K=p["BLOCK_K"])  # fmt: skip
        specs.add(_layernorm_fwd_kernel, case.route, shape, args, triton.Config({}, num_warps=p["num_warps"]))


def add_fold_spec(specs: SpecSet, case: Case) -> None:
    """Spec of ln_fold as channel_mix launches it for `case` (a route where folds() holds)."""
    x_dt, ln_dt, w_dt, _ = ROUTE_DTYPES[case.route]
    shape = case.shape
    p = _fold_launch(shape.M, shape.DC, shape.C)
    w, ln, f32 = Ptr(w_dt), Ptr(ln_dt), Ptr(torch.float32)
    args = dict(X=Ptr(x_dt), LN_W=ln, LN_B=ln, W1=w, B1=w, MEAN=f32, RSTD=f32, W1G=w, CW=f32, BF=f32, M=shape.M,
                N=shape.DC, C=shape.C, eps=1e-6, row_programs=p["row_programs"], BLOCK_R=p["BLOCK_R"],
                BLOCK_C=p["BLOCK_C"])  # fmt: skip
    specs.add(_ln_fold_kernel, case.tag, shape, args, triton.Config({}, num_warps=WHOLE_ROW_WARPS))


def add_row_kernel_specs(specs: SpecSet, case: Case, *, col_sum: bool, dy_dtype: torch.dtype) -> None:
    """Specs of ln_prep and ln_backward as channel_mix_bwd (col_sum: the do column partials, from ln_prep where it
    writes do, else from ln_backward) and token_mix_bwd call them (dy in dy_dtype)."""
    route, shape, scale = case.tag, case.shape, case.scale
    x_dt, ln_dt, w_dt, _ = ROUTE_DTYPES[case.route]
    dout_dt = torch.promote_types(x_dt, w_dt)
    x, ln, f32 = Ptr(x_dt), Ptr(ln_dt), Ptr(torch.float32)
    write_do = prep_writes_do(dout_dt, scale, w_dt)
    rpp, _, block_r, block_c, warps = _row_launch(shape.M, shape.C)
    prep = dict(X=x, DOUT=Ptr(dout_dt) if write_do else x, SCALE=x, LN_W=ln, LN_B=ln, Y=Ptr(w_dt),
                DO=Ptr(w_dt) if write_do else x, MEAN=f32, RSTD=f32, DO_COLSUM=f32, M=shape.M, C=shape.C, S=shape.S,
                rows_per_prog=rpp, eps=1e-6, BLOCK_R=block_r, BLOCK_C=block_c, HAS_SCALE=scale, WRITE_DO=write_do,
                COL_SUM=col_sum and write_do, num_warps=warps)  # fmt: skip
    specs.add(_ln_prep_kernel, route, shape, prep)
    bwd = dict(X=x, DY=Ptr(dy_dtype), DOUT=Ptr(dout_dt), LN_W=ln, MEAN=f32, RSTD=f32, DX=x, DG_PART=f32, DB_PART=f32,
               DOUT_PART=f32, M=shape.M, C=shape.C, rows_per_prog=rpp, BLOCK_R=block_r, BLOCK_C=block_c,
               DOUT_SUM=col_sum and not write_do, num_warps=warps)  # fmt: skip
    specs.add(_ln_bwd_kernel, route, shape, bwd)


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (dtype route, specialisation) of the forward pass at the model shapes (the backward row
    kernels' specs are in the backward modules' sets: add_row_kernel_specs)."""
    specs = SpecSet("layernorm")
    build_specs(specs, spec_cases())
    return specs.specs()
