"""Fused token-mixing forward: u = x + s[b] * (W2 · GELU(W1 · LN(x[b]) + b1) + b2), contracting over tokens.

Forward math, per image b (x_b = x[b] is [S, C]; each program reads the [S, BLOCK_C] strip x_b[:, c-tile] in place,
C contiguous, so no transposed copy of x is ever materialised):

    mu[s]   = mean_c x_b[s, c]                     rstd[s] = 1 / sqrt(mean_c (x_b[s, c] - mu[s])^2 + eps)
    Y[s, c] = (x_b[s, c] - mu[s]) * rstd[s] * g[c] + beta[c]      -> round to W     Y = LN(x_b)          [S, C]
    A[d, c] = sum_s W1[d, s] * Y[s, c] + b1[d]                    (fp32 acc)        A = W1 Y + b1        [Dt, C]
    H[d, c] = GELU(A[d, c])  (fp32; exact erf, or tanh under ACT) -> round to W
    O[s, c] = sum_d W2[s, d] * H[d, c] + b2[s]                    (fp32 acc)        O = W2 H + b2        [S, C]
    u[b, s, c] = x_b[s, c] + s[b] * O[s, c]                       (fp32, one rounding at the store, promote(X, W))

This is timm's `fc2(GELU(fc1(LN(x).transpose(1, 2)))).transpose(1, 2)`, transposed, with torch's rounding points for
the matmul inputs (LN output and GELU output in W); everything else stays fp32 until the single store.

Routes (token_mix_fwd picks; both keep the rounding points above):
  1. `_token_stats_kernel` (always): per-token fp32 mean/rstd over C (one read of x; whole rows in registers with
     layernorm.ln_tile_stats, the shifted two-pass, up to C = 2048, else ln_row_stats' lane Welford in chunks; never
     E[x^2] - E[x]^2) -> stats [2, B*S] fp32 (8 bytes per token).
  2a. Fused, S <= 256 (S_PAD = next power of two >= 16), bf16/fp16 (x and W alike) and fp32 at "ieee":
     `_token_mix_fwd_kernel`, grid (B * cdiv(C, BLOCK_C),) on axis 0 (c-tiles of one image are neighbours, so its x
     slab and the weights stay in L2). Transposed ("attention-like") so that BOTH dots have the channel tile as M:
         A^T[c, d] = sum_s Y^T[c, s] W1^T[s, d]      dot 1  [BLOCK_C, S_PAD] @ [S_PAD, BLOCK_D]
         O^T[c, s] += sum_d H^T[c, d] W2^T[d, s]     dot 2  [BLOCK_C, BLOCK_D] @ [BLOCK_D, S_PAD]
     BLOCK_C = 64 rows per warpgroup (64 on 4 warps, 128 on 8), so on sm_90 both dots are wgmma (HGMMA) with
     disjoint rows per warpgroup (dot 2 as one 64 x 256 x 16 instruction per K step at S_PAD = 256); H^T stays in
     registers as dot 2's A operand (no shared-memory round trip); W1 / W2 chunks are K-major B operands, loaded
     through the software pipeline (cp.async, num_stages) while the previous step's MMA runs. The LN strip Y^T is
     normalised once before the loop. The O^T strip [BLOCK_C, S_PAD] fp32 is 128 registers per thread at S_PAD =
     256: that is the fused route's limit.
     The fp32 "ieee" build ("fma": tl.dot on FMA units) splits dot 1 over tokens in BLOCK_K steps instead.
  2b. Split, S > 256 (384/448 px: S = 576, 784, 1024, any S up to the grid), and tf32 / autocast (fp32 x with 16-bit
     W) at any S, whose fused build spills: two GEMMs per image, no recomputation, with H^T [B, C, Dt] in W as the
     intermediate:
         `_token_fc1_kernel`  H^T[b, c, d] = round_W(GELU(sum_s W1[d, s] Y[s, c] + b1[d]))   M = Dt, N = C, K = S
         `_token_fc2_kernel`  u[b, s, c] = x + s[b] (sum_d W2[s, d] H[d, c] + b2[s])          M = S, N = C, K = Dt
     GEMM 1 normalises its Y tiles in the main loop (x + stats, as 2a does once); GEMM 2's main loop is loads and
     MMA only (both operands K-major from memory) and does not wait for each wgmma. Cost against a fused kernel:
     the same MMA FLOPs, plus H^T written and read once (2 B C Dt W-bytes: at Mixer-B/16 448 px bf16, 1.2 MB per
     image against 2.4 MB of compulsory x read + u write). Recomputing dot 1 per 256-token output tile instead would
     cost (tiles + 1) / 2 times the FLOPs: 2x at S = 576, 2.5x at S = 1024.
Why a stats pass rather than recomputing the stats in every program: each program needs mu/rstd over ALL C, so the
in-kernel route reads the whole [S, C] slab of its image once per c-tile, serially before its first MMA; the stats
pass reads x once more from HBM (0.3 MB per image at Mixer-B/16 bf16).
S is a constexpr (one compile per token count): with S = 196, W1's row stride is then known to be 8-byte aligned, so
its loads vectorise and pipeline (cp.async); as a runtime int it would not be (196 is not a multiple of 16).

Padding: the fused route pads S to S_PAD with masks (dot 1's K and dot 2's N), so at S = 196 (S_PAD = 256) 60 of
every 256 token columns, 23.4% of its MMA FLOPs, are zeros; the split route pads S only to its 64/128-token tiles
(576 = 9 x 64 in GEMM 1's K; 784 -> 832 / 896). Tried and kept out: covering S = 196 with three power-of-two token
pieces (128 + 64 + 16 = 208: one dot / accumulator per piece) cut the executed MMA work by 19% and 40 registers, but
cost more issue than it saved (sm_90 bf16, 32-wide steps: 538 -> 634 instructions per step, six wgmma groups and three
W1 / W2 chunk loads instead of two and two; time MODEL per block 115.6 -> 131.4 us at B/16, 193.0 -> 218.8 at L/16).
C and Dt are masked per tile, so any C >= 1 and Dt >= 1 work.
Padded tokens get Y = 0 and zero W1/W2 entries, padded hidden units get zero W1 rows and b1 = 0 so GELU(0) = 0:
padding never leaks into real outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmixer.kernels._common import dot_precision, gelu, keep_configs, mma, pick_configs, round_to
from fastmixer.kernels._specs import MODEL_SHAPES, ROUTE_DTYPES, TOKEN_SHAPES, Case, Ptr, SpecSet
from fastmixer.kernels.layernorm import (
    WHOLE_ROW_MAX_C,
    WHOLE_ROW_WARPS,
    ln_row_stats,
    ln_whole_row_stats,
    whole_row_tile,
)
from fastmixer.mix_args import MixArgs, check_launch_args


# ------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _token_stats_kernel(
    X,  # [N_ROWS, C] = x [B, S, C] viewed as rows of tokens; dtype X, contiguous
    STATS,  # [2, N_ROWS] fp32 out: STATS[0] = mean, STATS[1] = rstd, per token
    N_ROWS,  # B * S
    C,
    eps,
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # channels per chunk (power of two)
    WHOLE_ROWS: tl.constexpr,  # BLOCK_K >= C: the rows in registers, one chunk
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    r_mask = rows < N_ROWS
    row_ptrs = X + rows.to(tl.int64) * C  # B*S*C may pass 2^31
    if WHOLE_ROWS:  # ln_row_stats' one-chunk case on the rows in registers: no per-lane Welford state
        mean, rstd = ln_whole_row_stats(row_ptrs, r_mask, C, eps, BLOCK_K)
    else:
        mean, rstd = ln_row_stats(row_ptrs, r_mask, C, eps, BLOCK_R, BLOCK_K)
    tl.store(STATS + rows, mean, mask=r_mask)
    tl.store(STATS + N_ROWS + rows, rstd, mask=r_mask)


@triton.jit
def _ln_tile(
    X,
    STATS,
    img,
    tok,
    N_ROWS,
    C,
    offs_s,
    offs_c,
    s_mask,
    c_mask,
    g,
    beta,
    W_DTYPE: tl.constexpr,
):
    """LN(x[b])[offs_s, offs_c] -> [len(offs_s), len(offs_c)] rounded to W (torch's cast before fc1), zero outside
    (s_mask, c_mask). Row stats come from STATS (tok: STATS index of each offs_s); g, beta: [len(offs_c)] fp32."""
    mask = s_mask[:, None] & c_mask[None, :]
    xt = tl.load(X + img + offs_s[:, None] * C + offs_c[None, :], mask=mask, other=0.0, eviction_policy="evict_last")
    mu = tl.load(STATS + tok, mask=s_mask, other=0.0)
    rstd = tl.load(STATS + N_ROWS + tok, mask=s_mask, other=0.0)
    y = (xt.to(tl.float32) - mu[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]
    return round_to(tl.where(mask, y, 0.0), W_DTYPE)


@triton.jit
def _add_residual_store(o, X, OUT, offs, mask):
    """OUT[offs] = X[offs] + o (o fp32, any tile orientation; one rounding, to OUT's dtype, at the store)."""
    u = tl.load(X + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32) + o
    tl.store(OUT + offs, round_to(u, OUT.dtype.element_ty).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _token_mix_fwd_kernel(
    X,  # [B, S, C] input / residual; dtype X, contiguous
    STATS,  # [2, B*S] fp32: per-token mean, rstd (from _token_stats_kernel)
    LN_W,  # [C] LayerNorm gamma, any float dtype (loaded as fp32)
    LN_B,  # [C] LayerNorm beta
    W1,  # [DT, S] fc1 weight; dtype W (the matmul dtype)
    B1,  # [DT] fc1 bias
    W2,  # [S, DT] fc2 weight; dtype W
    B2,  # [S] fc2 bias
    SCALE,  # [B] per-sample branch scale (read only if HAS_SCALE)
    OUT,  # [B, S, C] out; dtype promote(X, W), contiguous
    N_ROWS,  # B * S: offset of rstd inside STATS
    C,
    DT,
    S: tl.constexpr,  # tokens; constexpr so W1's row stride is known (S = 196: 8-byte rows, vector loads, cp.async)
    S_PAD: tl.constexpr,  # next power of two >= max(S, 16), <= 256 (larger S take the split route)
    BLOCK_C: tl.constexpr,  # channels per program: the M of both dots (64 rows per warpgroup)
    BLOCK_D: tl.constexpr,  # hidden units per loop step (N of dot 1, K of dot 2)
    BLOCK_K: tl.constexpr,  # K step of dot 1 over tokens; >= S_PAD: one dot against an LN strip kept on chip
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" | "tf32" (fp32 operands only)
    ACT: tl.constexpr = "gelu",  # "gelu" (exact erf) | "gelu_tanh" (tanh approximation)
):
    # Transposed ("attention-like") orientation: both dots have the channel tile as M, so warpgroups own disjoint
    # 64-row slices of it in both, dot 1's output feeds dot 2 as its register A operand (no shared-memory round trip
    # for H), and the W1 / W2 chunks are the K-major shared-memory B operands:
    #   A^T[c, d] = sum_s Y^T[c, s] W1^T[s, d]        dot 1: [BLOCK_C, S_PAD] @ [S_PAD, BLOCK_D]
    #   O^T[c, s] += sum_d H^T[c, d] W2^T[d, s]       dot 2: [BLOCK_C, BLOCK_D] @ [BLOCK_D, S_PAD]
    pid = tl.program_id(0)
    n_ct = tl.cdiv(C, BLOCK_C)
    b = pid // n_ct
    offs_c = (pid % n_ct) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    offs_s = tl.arange(0, S_PAD)  # [S_PAD]
    c_mask = offs_c < C
    s_mask = offs_s < S
    img = b.to(tl.int64) * S * C  # x[b] offset (B*S*C may exceed 2^31)
    tok = b.to(tl.int64) * S  # STATS row of token (b, 0)
    g = tl.load(LN_W + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    beta = tl.load(LN_B + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    w_dtype: tl.constexpr = W1.dtype.element_ty
    if BLOCK_K >= S_PAD:
        # Whole LN(x[b])[:, c-tile]^T strip, [BLOCK_C, S_PAD] in W (padded tokens 0): the loop-invariant A operand
        # of dot 1, normalised once before the loop.
        y = _ln_tile(X, STATS, img, tok + offs_s, N_ROWS, C, offs_s, offs_c, s_mask, c_mask, g, beta, w_dtype)
        yt = tl.trans(y)

    acc = tl.zeros([BLOCK_C, S_PAD], dtype=tl.float32)  # (W2 H)^T strip, before b2
    for d0 in range(0, DT, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        d_mask = offs_d < DT
        if BLOCK_K >= S_PAD:
            # W1[d-chunk, :]^T: [S_PAD, BLOCK_D], tokens contiguous (K-major)
            w1t = tl.load(W1 + offs_d[None, :] * S + offs_s[:, None], mask=s_mask[:, None] & d_mask[None, :], other=0.0)
            a = mma(yt, w1t, None, PRECISION)  # [BLOCK_C, BLOCK_D] fp32
        else:
            # K-split over tokens (FMA path: a whole-S dot would hold S_PAD-long operand rows in registers): each
            # [BLOCK_C, BLOCK_K] LN tile is re-normalised from x (L1/L2-resident), cheap next to the FMA dot.
            a = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
            for k0 in range(0, S, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < S
                ykt = tl.trans(
                    _ln_tile(
                        X, STATS, img, tok + offs_k, N_ROWS, C, offs_k, offs_c, k_mask, c_mask, g, beta, w_dtype
                    )
                )  # fmt: skip
                w1t = tl.load(
                    W1 + offs_d[None, :] * S + offs_k[:, None], mask=k_mask[:, None] & d_mask[None, :], other=0.0
                )
                a = mma(ykt, w1t, a, PRECISION)
        a += tl.load(B1 + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        # GELU in fp32, rounded to W as torch stores the activation; padded hidden units: a = 0 -> h = 0.
        h = round_to(gelu(a, ACT), w_dtype)  # [BLOCK_C, BLOCK_D]
        # W2[:, d-chunk]^T: [BLOCK_D, S_PAD], hidden units contiguous (K-major)
        w2t = tl.load(W2 + offs_s[None, :] * DT + offs_d[:, None], mask=d_mask[:, None] & s_mask[None, :], other=0.0)
        acc = mma(h, w2t, acc, PRECISION)  # [BLOCK_C, S_PAD]

    # Epilogue: + b2, * s[b], + residual x (re-read from L2 rather than kept live across the loop), one store.
    o = acc + tl.load(B2 + offs_s, mask=s_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        o = o * tl.load(SCALE + b).to(tl.float32)
    strip = img + offs_s[None, :] * C + offs_c[:, None]  # [BLOCK_C, S_PAD] offsets of x[b, :, c-tile]^T
    _add_residual_store(o, X, OUT, strip, c_mask[:, None] & s_mask[None, :])


@triton.jit
def _image_tile(pid, ROWS, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Split-route program id -> (image b, its row offsets [BLOCK_R], channel offsets [BLOCK_C]) on a 1-D grid of
    B * cdiv(ROWS, BLOCK_R) * cdiv(C, BLOCK_C), c-tiles fastest (neighbouring programs share their weight rows)."""
    n_ct = tl.cdiv(C, BLOCK_C)
    n_rt = tl.cdiv(ROWS, BLOCK_R)
    b = pid // (n_ct * n_rt)
    rest = pid % (n_ct * n_rt)
    offs_r = (rest // n_ct) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = (rest % n_ct) * BLOCK_C + tl.arange(0, BLOCK_C)
    return b, offs_r, offs_c


@triton.jit
def _token_fc1_kernel(
    X,  # [B, S, C] input; dtype X, contiguous
    STATS,  # [2, B*S] fp32: per-token mean, rstd
    LN_W,  # [C] LayerNorm gamma
    LN_B,  # [C] LayerNorm beta
    W1,  # [DT, S] fc1 weight; dtype W
    B1,  # [DT] fc1 bias
    HT,  # [B, C, DT] out: H^T = GELU(W1 LN(x[b]) + b1)^T per image, dtype W (the split route's intermediate)
    N_ROWS,  # B * S
    C,
    DT,
    S: tl.constexpr,
    BLOCK_D: tl.constexpr,  # hidden units per program (M)
    BLOCK_C: tl.constexpr,  # channels per program (N)
    BLOCK_K: tl.constexpr,  # tokens per K step
    PRECISION: tl.constexpr,
    ACT: tl.constexpr = "gelu",
):
    # Split route, GEMM 1 per image: A[d, c] = sum_s W1[d, s] LN(x[b])[s, c] + b1[d]; H = GELU(A) stored transposed
    # (H^T[b, c, d], hidden units contiguous) so that GEMM 2 reads it K-major. Grid: B * cdiv(DT, BLOCK_D) *
    # cdiv(C, BLOCK_C) on axis 0, c-tiles fastest.
    b, offs_d, offs_c = _image_tile(tl.program_id(0), DT, C, BLOCK_D, BLOCK_C)  # [BLOCK_D], [BLOCK_C]
    d_mask = offs_d < DT
    c_mask = offs_c < C
    img = b.to(tl.int64) * S * C
    tok = b.to(tl.int64) * S
    g = tl.load(LN_W + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    beta = tl.load(LN_B + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    w_dtype: tl.constexpr = W1.dtype.element_ty
    acc = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, S, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K] tokens
        k_mask = offs_k < S
        w1 = tl.load(W1 + offs_d[:, None] * S + offs_k[None, :], mask=d_mask[:, None] & k_mask[None, :], other=0.0)
        # LN(x[b])[k-chunk, c-tile] in W: [BLOCK_K, BLOCK_C], normalised from x and the token stats
        y = _ln_tile(X, STATS, img, tok + offs_k, N_ROWS, C, offs_k, offs_c, k_mask, c_mask, g, beta, w_dtype)
        acc = mma(w1, y, acc, PRECISION)  # [BLOCK_D, BLOCK_C]
    acc += tl.load(B1 + offs_d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    h = round_to(gelu(acc, ACT), w_dtype)  # rounded to W (torch's stored activation); exact in HT's W
    ht = b.to(tl.int64) * C * DT + offs_c[None, :] * DT + offs_d[:, None]  # [BLOCK_D, BLOCK_C] offsets of H^T[b]
    tl.store(HT + ht, h.to(HT.dtype.element_ty), mask=d_mask[:, None] & c_mask[None, :])


@triton.jit
def _token_fc2_kernel(
    X,  # [B, S, C] residual; dtype X, contiguous
    HT,  # [B, C, DT] H^T from _token_fc1_kernel; dtype W
    W2,  # [S, DT] fc2 weight; dtype W
    B2,  # [S] fc2 bias
    SCALE,  # [B] per-sample branch scale (read only if HAS_SCALE)
    OUT,  # [B, S, C] out; dtype promote(X, W)
    C,
    DT,
    S: tl.constexpr,
    BLOCK_S: tl.constexpr,  # output tokens per program (M)
    BLOCK_C: tl.constexpr,  # channels per program (N)
    BLOCK_K: tl.constexpr,  # hidden units per K step
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Split route, GEMM 2 per image: u[b, s, c] = x[b, s, c] + s[b] * (sum_d W2[s, d] H[d, c] + b2[s]). A pure main
    # loop: both operands K-major straight from memory (W2 rows, H^T rows). Grid: B * cdiv(S, BLOCK_S) *
    # cdiv(C, BLOCK_C) on axis 0, c-tiles fastest.
    b, offs_s, offs_c = _image_tile(tl.program_id(0), S, C, BLOCK_S, BLOCK_C)  # [BLOCK_S], [BLOCK_C]
    s_mask = offs_s < S
    c_mask = offs_c < C
    hb = b.to(tl.int64) * C * DT
    acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, DT, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K] hidden units
        k_mask = offs_k < DT
        w2 = tl.load(W2 + offs_s[:, None] * DT + offs_k[None, :], mask=s_mask[:, None] & k_mask[None, :], other=0.0)
        h = tl.load(HT + hb + offs_c[None, :] * DT + offs_k[:, None], mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        acc = mma(w2, h, acc, PRECISION)  # [BLOCK_S, BLOCK_C]
    o = acc + tl.load(B2 + offs_s, mask=s_mask, other=0.0).to(tl.float32)[:, None]
    if HAS_SCALE:
        o = o * tl.load(SCALE + b).to(tl.float32)
    strip = b.to(tl.int64) * S * C + offs_s[:, None] * C + offs_c[None, :]  # [BLOCK_S, BLOCK_C] offsets of x[b]
    _add_residual_store(o, X, OUT, strip, s_mask[:, None] & c_mask[None, :])


# ------------------------------------------------------------------------------------------------ autotune configs
_MAX_FUSED_S_PAD = 256  # larger token counts take the split route (the O^T strip would not fit in registers)


def _fused_configs(route: str, w_dtype: torch.dtype) -> list[triton.Config]:
    """Fused-kernel configs. "mma" (fp16/bf16 operands, fp32 as tf32): dot 1 in one step against the LN strip;
    BLOCK_C = 64 rows per warpgroup (4 warps: 64, 8 warps: 128), so no warpgroup repeats another's rows. "fma" (fp32
    at "ieee"): dot 1 split over tokens. The first of each list is the conservative one (the interpreter's)."""
    c = triton.Config
    if route == "fma":  # BLOCK_K = 32 spilled 16 B on sm_90 with triton 3.6 at S = 196 (8 warps: spills on sm_80)
        return [
            c({"BLOCK_C": 32, "BLOCK_D": 16, "BLOCK_K": 16}, num_warps=4, num_stages=2),
        ]
    if w_dtype == torch.float32:  # tf32: only when forced (tests); by default tf32 takes the split route
        return [c({"BLOCK_C": 64, "BLOCK_D": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2)]
    # The O^T strip (128 fp32 registers per thread at S_PAD = 256) leaves little room: BLOCK_D = 16 and 32 on 8 warps
    # fit everywhere; _WIDE_D (32 on 4 warps) only up to S = _WIDE_D_MAX_S.
    return [
        c({"BLOCK_C": 64, "BLOCK_D": 16, "BLOCK_K": 1024}, num_warps=4, num_stages=2),
        c({"BLOCK_C": 128, "BLOCK_D": 32, "BLOCK_K": 1024}, num_warps=8, num_stages=2),
        _WIDE_D,
    ]


# BLOCK_D = 32 on one warpgroup: the per-step overhead that does not grow with BLOCK_D (the LN strip's shared-memory
# reload into dot 1's register A operand, the W1 / W2 chunk address math) is paid per 32 hidden units instead of 16.
# sm_90 bf16 at S = 196 (triton 3.8): 538 instructions per step for 512 MMA cycles (1.05) against 321 for 256 (1.25)
# at BLOCK_D = 16; 255 registers, no spill, 2 CTAs/SM. At S = 256 (no token mask) it spills (4 B with triton 3.8,
# 16 B with 3.6), so the autotuner sees it only for S <= _WIDE_D_MAX_S (also the AOT specs: gpu_build_specs).
_WIDE_D = triton.Config({"BLOCK_C": 64, "BLOCK_D": 32, "BLOCK_K": 1024}, num_warps=4, num_stages=2)
_WIDE_D_MAX_S = 196


def _fused_fits(cfg: triton.Config, S: int) -> bool:
    return cfg is not _WIDE_D or S <= _WIDE_D_MAX_S


def _prune_fused(configs, named_args, **kwargs):
    return keep_configs(configs, [c for c in configs if _fused_fits(c, kwargs["S"])])


def _split_configs(kernel: str, route: str, w_dtype: torch.dtype) -> list[triton.Config]:
    """Split-route GEMM configs: kernel "fc1" (M = BLOCK_D) or "fc2" (M = BLOCK_S); N = BLOCK_C, K = BLOCK_K."""
    m = "BLOCK_D" if kernel == "fc1" else "BLOCK_S"
    c = triton.Config
    if route == "fma":
        tiles = [(32, 64, 16, 4, 3), (64, 64, 32, 8, 3)]  # fc1 at 32x64x32 spilled 8 B with triton 3.6 at S = 784
    elif w_dtype == torch.float32:
        tiles = [(64, 128, 32, 4, 3), (128, 128, 32, 8, 3)]
    else:
        tiles = [(64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4)]
    return [c({m: bm, "BLOCK_C": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s) for bm, bn, bk, w, s in tiles]


def _autotuned(kernel, configs: list[triton.Config], key: list[str], prune=None):
    prune_by = {"early_config_prune": prune} if prune else None
    return triton.autotune(configs=pick_configs(configs), key=key, prune_configs_by=prune_by)(kernel)


# One autotuner per (route, fp32 operands?) and kernel: each with its own config list, over the same JIT functions.
_ROUTES = ("mma", "fma")
_W_OF = {False: torch.bfloat16, True: torch.float32}
_KEY = ["S", "C", "DT"]
_FUSED, _FC1, _FC2 = {}, {}, {}
for _r in _ROUTES:
    for _f, _w in _W_OF.items():
        _FUSED[_r, _f] = _autotuned(_token_mix_fwd_kernel, _fused_configs(_r, _w), _KEY, _prune_fused)
        _FC1[_r, _f] = _autotuned(_token_fc1_kernel, _split_configs("fc1", _r, _w), _KEY)
        _FC2[_r, _f] = _autotuned(_token_fc2_kernel, _split_configs("fc2", _r, _w), _KEY)


def _default_route(w_dtype: torch.dtype, precision: str) -> str:
    """fp32 operands at "ieee" run on FMA units ("fma"); everything else on tensor cores ("mma")."""
    return "fma" if w_dtype == torch.float32 and precision == "ieee" else "mma"


# ------------------------------------------------------------------------------------------------ launcher
def _s_pad(S: int) -> int:
    return max(16, triton.next_power_of_2(S))


def _is_split(S: int) -> bool:
    """Token counts whose padded strip exceeds _MAX_FUSED_S_PAD must take the two-GEMM split route."""
    return _s_pad(S) > _MAX_FUSED_S_PAD


def _default_split(S: int, x_dtype: torch.dtype, w_dtype: torch.dtype, route: str) -> bool:
    """The split route for S > 256, and for the operand mixes whose fused build spills on sm_90 (the O^T strip, 128
    fp32 registers per thread, beside an LN strip of fp32 x or tf32 operands): tf32 and autocast (fp32 x, 16-bit W).
    The fused kernel serves bf16/fp16 (x and W alike) and the fp32 FMA route at S <= 256."""
    return _is_split(S) or (route == "mma" and (w_dtype == torch.float32 or x_dtype != w_dtype))


def stats_tile(C: int) -> dict[str, int | bool]:
    """Constexprs of the stats pass (WHOLE_ROW_WARPS warps): whole rows (layernorm.whole_row_tile) up to
    WHOLE_ROW_MAX_C channels; wider rows: 2 rows in 256-channel Welford chunks."""
    if C > WHOLE_ROW_MAX_C:
        return dict(BLOCK_R=2, BLOCK_K=256, WHOLE_ROWS=False)
    block_r, block_k = whole_row_tile(C)
    return dict(BLOCK_R=block_r, BLOCK_K=block_k, WHOLE_ROWS=True)


def token_mix_fwd(
    args: MixArgs,
    *,
    eps: float,
    allow_tf32: bool,
    act: str = "gelu",
    route: str | None = None,
    split: bool | None = None,
) -> Tensor:
    """Fused token mixing. args (fastmixer.mix_args.MixArgs, which has the contract; non-dense tensors are copied
    dense): x [B, S, C] (fp32/fp16/bf16); ln_* [C]; fc1_weight [Dt, S], fc1_bias [Dt], fc2_weight [S, Dt],
    fc2_bias [S] in the matmul dtype W; branch_scale None or [B]. act: "gelu" (exact erf) or "gelu_tanh".
    Returns u = x + s * (W2 GELU(W1 LN(x)^T + b1) + b2)^T as a new contiguous [B, S, C] in promote(X, W).
    S <= 256: two launches (per-token LN stats, then everything else fused); S > 256: three (stats, GEMM 1 writing
    H^T [B, C, Dt] in W, GEMM 2 with the epilogue). route: None picks by dtype ("fma" for fp32 at ieee precision,
    else "mma"); split: None picks by S. Tests force both to cover every kernel."""
    if route not in (None, *_ROUTES):
        raise ValueError(f"token_mix_fwd: route must be one of {_ROUTES} or None, got {route!r}")
    _, args = check_launch_args("token_mix_fwd", "token", args, eps=eps, act=act)
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = args
    B, S, C = x.shape
    Dt = fc1_weight.shape[0]
    w_dtype = fc1_weight.dtype
    out = torch.empty((B, S, C), dtype=torch.promote_types(x.dtype, w_dtype), device=x.device)
    if out.numel() == 0:
        return out
    precision = dot_precision(allow_tf32, w_dtype)
    route = route or _default_route(w_dtype, precision)
    split = _default_split(S, x.dtype, w_dtype, route) if split is None else split
    if not split and _is_split(S):
        raise ValueError(f"token_mix_fwd: S = {S} needs the split route (fused route: S <= {_MAX_FUSED_S_PAD})")
    n_rows = B * S
    stats = torch.empty((2, n_rows), dtype=torch.float32, device=x.device)  # mean, rstd
    tile = stats_tile(C)
    _token_stats_kernel[(triton.cdiv(n_rows, tile["BLOCK_R"]),)](
        x, stats, n_rows, C, float(eps), **tile, num_warps=WHOLE_ROW_WARPS
    )
    has_scale = branch_scale is not None
    scale = branch_scale if has_scale else x  # dummy pointer, never read
    key = (route, w_dtype == torch.float32)
    if not split:
        _FUSED[key][lambda meta: (B * triton.cdiv(C, meta["BLOCK_C"]),)](
            x, stats, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, scale, out, n_rows, C, Dt,
            S=S, S_PAD=_s_pad(S), HAS_SCALE=has_scale, PRECISION=precision, ACT=act,
        )  # fmt: skip
        return out
    ht = torch.empty((B, C, Dt), dtype=w_dtype, device=x.device)  # H^T per image
    _FC1[key][lambda meta: (B * triton.cdiv(Dt, meta["BLOCK_D"]) * triton.cdiv(C, meta["BLOCK_C"]),)](
        x, stats, ln_weight, ln_bias, fc1_weight, fc1_bias, ht, n_rows, C, Dt,
        S=S, PRECISION=precision, ACT=act,
    )  # fmt: skip
    _FC2[key][lambda meta: (B * triton.cdiv(S, meta["BLOCK_S"]) * triton.cdiv(C, meta["BLOCK_C"]),)](
        x, ht, fc2_weight, fc2_bias, scale, out, C, Dt,
        S=S, HAS_SCALE=has_scale, PRECISION=precision,
    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ AOT build specs
def spec_cases() -> list[Case]:
    """The launches the AOT builds cover: every dtype route at every model shape without drop-path, the drop-path
    epilogue and the tanh-approximate GELU at B/16 bf16, and bf16 / fp32 / tf32 at every other supported token count
    (S is a constexpr here, so each S is its own build; S > 256 is the split route)."""
    cases = [Case(route, shape) for route in ROUTE_DTYPES for shape in MODEL_SHAPES]
    cases += [Case("bf16", MODEL_SHAPES[0], scale=True), Case("bf16", MODEL_SHAPES[0], act="gelu_tanh")]
    cases += [Case(route, shape) for route in ("bf16", "fp32", "fp32-tf32") for shape in TOKEN_SHAPES]
    return [*cases, Case("bf16", TOKEN_SHAPES[1], scale=True)]  # the split route's drop-path epilogue


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (kernel, autotune config, dtype route, specialisation) at the shapes of spec_cases()
    (kernels/_specs.py derives signature and divisibility as the JIT does). Every token count must fit (sm_90 and
    sm_80 shared memory, no spills)."""
    specs = SpecSet("token_mix")
    for case in spec_cases():
        route, shape = case.tag, case.shape
        x_dt, ln_dt, w_dt, tf32 = ROUTE_DTYPES[case.route]
        x, ln, w, f32 = Ptr(x_dt), Ptr(ln_dt), Ptr(w_dt), Ptr(torch.float32)
        out = Ptr(torch.promote_types(x_dt, w_dt))
        stats = dict(X=x, STATS=f32, N_ROWS=shape.M, C=shape.C, eps=1e-6, **stats_tile(shape.C))
        specs.add(_token_stats_kernel, route, shape, {**stats, "num_warps": WHOLE_ROW_WARPS})
        precision = dot_precision(tf32, w_dt)
        kroute = _default_route(w_dt, precision)
        common = dict(C=shape.C, DT=shape.DT, S=shape.S, PRECISION=precision)
        if not _default_split(shape.S, x_dt, w_dt, kroute):
            args = dict(X=x, STATS=f32, LN_W=ln, LN_B=ln, W1=w, B1=w, W2=w, B2=w, SCALE=x, OUT=out, N_ROWS=shape.M,
                        S_PAD=_s_pad(shape.S), HAS_SCALE=case.scale, ACT=case.act, **common)  # fmt: skip
            for i, cfg in enumerate(_fused_configs(kroute, w_dt)):
                if _fused_fits(cfg, shape.S):
                    specs.add(_token_mix_fwd_kernel, route, shape, args, cfg, config_index=i)
            continue
        fc1 = dict(X=x, STATS=f32, LN_W=ln, LN_B=ln, W1=w, B1=w, HT=w, N_ROWS=shape.M, ACT=case.act, **common)
        fc2 = dict(X=x, HT=w, W2=w, B2=w, SCALE=x, OUT=out, HAS_SCALE=case.scale, **common)
        for i, cfg in enumerate(_split_configs("fc1", kroute, w_dt)):
            specs.add(_token_fc1_kernel, route, shape, fc1, cfg, config_index=i)
        for i, cfg in enumerate(_split_configs("fc2", kroute, w_dt)):
            specs.add(_token_fc2_kernel, route, shape, fc2, cfg, config_index=i, role="scale" if case.scale else "")
    return specs.specs()
