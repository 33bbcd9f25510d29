"""Backward of the fused token-mixing sub-block (the MLP contracts the token axis S of each sample).

Forward per sample b (y = LN(x[b]) is [S, C], cast to W; s = branch_scale[b] or 1):
    a = W1 y + b1[:, None]   [Dt, C];   h = GELU(a);   out[b] = x[b] + s * (W2 h + b2[:, None])   [S, C]
Backward (do = s * dout[b], [S, C]):
    dh = W2^T do;  da = dh * GELU'(a);  dy = W1^T da                       (per sample, [Dt, C] / [S, C])
    dW2 = sum_b do h^T [S, Dt];  dW1 = sum_b da y^T [Dt, S];  db2 = sum_{b,c} do;  db1 = sum_{b,c} da
    then the LayerNorm backward over C (+ the residual dout), shared with channel_mix_bwd (kernels/layernorm.py).

Launches (token_mix_bwd): 5 Triton on sm_90 with fp16/bf16 weights at S <= 256 and a grid of batch x C-tiles >= 256
(2 + 3 fused, see _fuses), 6 otherwise; nothing else (no cuBLAS, no host sums or casts, no transposed copy of x).
  1. layernorm._ln_prep_kernel (row-wise): fp32 row stats recomputed from x, y = LN(x) in W, do = s*dout in W
     (only when dout is not already that; otherwise no read of dout).
  2+3. _token_dgrad_dy_kernel (sm_90, 16-bit W, S <= 256, large grids): per image b and [BLOCK_C] channel tile, in the
     transposed orientation of the forward's fused kernel (channels as the M of every dot, 64 rows per warpgroup,
     all three dots wgmma): the y^T and do^T strips [BLOCK_C, S_PAD] read once, then per hidden chunk of BLOCK_D
     a^T = y^T W1^T and dh^T = do^T W2 (K = S_PAD), h and da = dh * GELU'(a) stored in W, and dy^T += da^T W1
     (K = BLOCK_D, da^T from registers) into a [BLOCK_C, S_PAD] fp32 accumulator stored once in W. The hidden
     intermediate da is never read back: one [B, Dt, C] W-sized read (and a launch) less than 2 + 3 below.
     On sm_80 its mma.sync build spills (the two strips as register A operands): there, on other GPUs, for tf32 /
     fp32, for S > 256 and for small grids (each program walks every hidden chunk in sequence) the split pair runs.
  2. _token_dgrad_kernel: per image b, one dual GEMM over K = S tokens for a [BLOCK_D, BLOCK_C] tile of [Dt, C]:
     a = W1 y[b] and dh = W2^T do[b] (W2 read transposed: an M-major operand), two fp32 accumulators; the epilogue adds
     b1 and stores h = GELU(a) and da = dh * GELU'(a) in W ([B, Dt, C], for the weight gradients and dy; da rounded
     once to W, as torch does).
  3. _token_dy_kernel: per image b, dy[b] = W1^T da[b] for a [BLOCK_S, BLOCK_C] tile of [S, C] (K = Dt, W1 read
     transposed), stored in W: torch's rounding point (the grad of the LN output is in W under bf16 and autocast).
  4. _wgrad_kernel, one launch for both: dW2 = sum_{b,c} do[b,s,c] h[b,d,c] (+ db2 as row sums of do) and dW1 (+ db1
     as row sums of da) = sum_{b,c} da[b,d,c] y[b,s,c]; the first programs take dW2's tiles, the rest dW1's. The
     contraction runs over (b, c), which is not one strided axis of any [B, S, C] / [B, Dt, C] layout, so cuBLAS would
     need transposed copies (or B launches); this kernel indexes the layout directly. Split-K over b: each split writes
     fp32 partials [SPLIT, P, Q] and [SPLIT, P] (SPLIT depends on shapes only).
  5. layernorm._ln_bwd_kernel (row-wise): LN backward fused with the residual gradient, dg/dbeta partials.
  6. channel_mix_bwd._reduce_partials_kernel: the six partial buffers (dg, dbeta, dW1, db1, dW2, db2) summed in a fixed
     order in one launch, each stored in its parameter's dtype.
Why 2 + 3 are also kept split (the route of every S and dtype): the fused kernel's dy^T strip [BLOCK_C, S_PAD] fp32
takes 128 registers per thread at S_PAD = 256 and so caps S (as the forward's fused route), and fp32 / tf32 strips
do not fit beside it. An earlier fused kernel in the other orientation (hidden units as M) capped the hidden chunk at
BLOCK_D = 16 rows, below the 64 rows of a warpgroup MMA, and ran on mma.sync (HMMA); split, both kernels are plain
GEMMs with loads + MMA only in their main loops, M >= 64 per warpgroup (wgmma) at every S; the price is one extra
round trip of da ([B, Dt, C] in W, read back by kernel 3).
Determinism: one program per output tile, fixed-order K loops, fixed-layout partials: no atomics, bitwise repeatable.
Per-program partials of the weight gradients inside kernel 2 would cost [B*C/BLOCK_C, S, Dt] fp32 (hundreds of MB at
B/16 shapes), which is why the weight gradients get their own kernel.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmixer.kernels._common import dot_precision, gelu_and_grad, keep_configs, mma, pick_configs, round_to
from fastmixer.kernels._specs import ROUTE_DTYPES, SMALL_TRAIN_SHAPES, TOKEN_SHAPES, TRAIN_SHAPES, Case, Ptr, SpecSet
from fastmixer.kernels.channel_mix_bwd import add_reduce_spec, reduce_partials
from fastmixer.kernels.layernorm import add_row_kernel_specs, ln_backward, ln_prep, row_programs
from fastmixer.kernels.token_mix import _MAX_FUSED_S_PAD, _image_tile, _s_pad
from fastmixer.mix_args import MixArgs, check_launch_args

# Target number of wgrad programs (tiles x splits) that fills a large GPU; fixed so the split is a function of shapes
# (and the fp32 partial sums' order with it). 256 rather than 2 x 132: at L/16 (S = 196, Dt = 512, 32 tiles of 64 x 64)
# 264 gave 9 splits, 288 programs for the 64 x 128 config, 3 on some of the 132 SMs and 2 on the others (the time
# MODEL: issue-bound, 290.0 us per block); 256 gives 8 splits and 256 programs (memory-bound, 265.0 us). B/16: 11
# splits either way.
_WGRAD_TARGET_PROGRAMS = 256


def _route(w_dtype: torch.dtype, precision: str) -> str:
    """Operand route of the two token GEMMs: "fp32" at "ieee" precision (FMA units), "tf32", or "16" (fp16/bf16)."""
    if w_dtype == torch.float32:
        return "tf32" if precision == "tf32" else "fp32"
    return "16"


# (M, N = BLOCK_C, K, warps, stages) per (kernel, operand route), chosen by AOT builds at B/16 shapes (sm_90: all
# HGMMA; sm_80 and sm_90: no spills, shared memory within 163 / 227 KB). The dual GEMM holds two fp32 accumulators, so
# its 4-warp 64x128 tiles take BLOCK_K = 32 (BLOCK_K = 64 spills 32-36 B on sm_80) and its 8-warp tiles are 128x64
# (128x128 spills 40-96 B on sm_90). fp32 at "ieee" runs on the FMA units: small tiles.
_GEMM_TILES = {
    ("dgrad", "16"): [(128, 64, 32, 8, 4), (64, 128, 32, 4, 3), (64, 64, 64, 4, 3)],
    # 64x128x16 on 4 warps dropped: 0 spills with triton 3.8, but 255 registers and spills with 3.6 (the GPU machines');
    # 64x128x32 on 4 warps at 4 stages dropped with the erfc-form GELU: 4 B spilled on sm_80 at S = 256 (the model
    # never picked it over 3 stages)
    ("dgrad", "tf32"): [(128, 64, 32, 8, 3), (64, 64, 32, 4, 3)],
    # fp32 (FMA route) 32x64x32 on 4 warps: 128 registers with triton 3.8 but 255 and 324 B of spills with 3.6 (the GPU
    # machines') once the GELU became the erfc form; 32x64x16: 96 registers, no spill, with 3.6
    ("dgrad", "fp32"): [(32, 64, 16, 4, 3), (64, 64, 32, 8, 3), (64, 64, 16, 8, 3)],
    ("dy", "16"): [(64, 128, 64, 4, 3), (128, 128, 64, 8, 2), (64, 128, 32, 4, 4)],
    ("dy", "tf32"): [(64, 128, 32, 4, 3), (128, 128, 32, 8, 2), (64, 128, 32, 4, 2)],
    # dy on the FMA route: 64x64x32 on 8 warps spills 4 B on sm_80 at S = 49, hence BLOCK_K = 16 there
    ("dy", "fp32"): [(32, 64, 32, 4, 3), (64, 64, 16, 8, 3), (32, 64, 16, 4, 3)],
}


def _gemm_configs(kernel: str, route: str) -> list[triton.Config]:
    """Configs of _token_dgrad_kernel ("dgrad": M = BLOCK_D hidden units) and _token_dy_kernel ("dy": M = BLOCK_S
    tokens); N = BLOCK_C, K = BLOCK_K. First = conservative (the interpreter runs only it). M >= 64 rows per
    warpgroup, so on sm_90 every dot is wgmma."""
    m = "BLOCK_D" if kernel == "dgrad" else "BLOCK_S"
    c = triton.Config
    tiles = _GEMM_TILES[kernel, route]
    return [c({m: bm, "BLOCK_C": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s) for bm, bn, bk, w, s in tiles]


def _dgrad_gpu_configs(route: str, act: str) -> list[tuple[int, triton.Config]]:
    """(index in _gemm_configs("dgrad", route), config) of the configs a GPU launch autotunes over: with the tanh GELU
    the 4-warp 64x128 tiles (two fp32 accumulators of 64 registers per thread each, plus the epilogue) spill on sm_90
    with triton 3.6 (255 registers; 3.8 builds them at 255 without spills), so they are left out there."""
    configs = list(enumerate(_gemm_configs("dgrad", route)))
    if act != "gelu_tanh":
        return configs
    return [(i, c) for i, c in configs if not (c.num_warps == 4 and c.kwargs["BLOCK_C"] == 128)]


def _prune_dgrad(configs, named_args, **kwargs):
    route = _route(named_args["Y"].dtype, kwargs.get("PRECISION", "ieee"))
    return keep_configs(configs, [c for _, c in _dgrad_gpu_configs(route, kwargs.get("ACT", "gelu"))])


@triton.jit
def _token_dgrad_kernel(
    Y,  # [B, S, C] LN(x) in W
    DO,  # [B, S, C] s * dout in W
    W1,  # [D, S] fc1 weight
    B1,  # [D] fc1 bias
    W2,  # [S, D] fc2 weight
    H,  # out [B, D, C] GELU(a) in W
    DA,  # out [B, D, C] dh * GELU'(a) in W
    C,
    D,
    S: tl.constexpr,
    BLOCK_D: tl.constexpr,  # hidden units per program (M)
    BLOCK_C: tl.constexpr,  # channels per program (N)
    BLOCK_K: tl.constexpr,  # tokens per K step
    PRECISION: tl.constexpr,
    ACT: tl.constexpr = "gelu",  # "gelu" (exact erf) | "gelu_tanh" (tanh approximation)
):
    # a = W1 y[b] and dh = W2^T do[b] share one K loop over the S tokens of image b.
    b, offs_d, offs_c = _image_tile(tl.program_id(0), D, C, BLOCK_D, BLOCK_C)  # [BLOCK_D], [BLOCK_C]
    offs_k = tl.arange(0, BLOCK_K)
    d_mask = offs_d < D
    c_mask = offs_c < C
    img = b.to(tl.int64) * S * C
    # W1's contiguous axis is K: out-of-range rows read row 0 (never stored). W2^T's is M (d): masked, not clamped,
    # so its contiguity stays visible. y/do: contiguous along C (N), masked likewise.
    w1_ptrs = W1 + tl.where(d_mask, offs_d, 0)[:, None] * S + offs_k[None, :]  # [BD, BK] = W1[d, k]
    w2_ptrs = W2 + offs_k[None, :] * D + offs_d[:, None]  # [BD, BK] = W2[k, d]^T
    y_ptrs = Y + img + offs_k[:, None] * C + offs_c[None, :]  # [BK, BC]
    do_ptrs = DO + img + offs_k[:, None] * C + offs_c[None, :]  # [BK, BC]
    acc_a = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
    acc_dh = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, S, BLOCK_K):
        k_mask = (k0 + offs_k) < S
        w1 = tl.load(w1_ptrs, mask=k_mask[None, :], other=0.0)
        w2t = tl.load(w2_ptrs, mask=d_mask[:, None] & k_mask[None, :], other=0.0)
        y = tl.load(y_ptrs, mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        do = tl.load(do_ptrs, mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        acc_a = mma(w1, y, acc_a, PRECISION)
        acc_dh = mma(w2t, do, acc_dh, PRECISION)
        w1_ptrs += BLOCK_K
        w2_ptrs += BLOCK_K * D
        y_ptrs += BLOCK_K * C
        do_ptrs += BLOCK_K * C
    a = acc_a + tl.load(B1 + offs_d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    h, dgelu = gelu_and_grad(a, ACT)
    o_mask = d_mask[:, None] & c_mask[None, :]
    off = b.to(tl.int64) * D * C + offs_d[:, None] * C + offs_c[None, :]  # [BD, BC] offsets of h[b] / da[b]
    tl.store(H + off, h.to(H.dtype.element_ty), mask=o_mask)
    tl.store(DA + off, (acc_dh * dgelu).to(DA.dtype.element_ty), mask=o_mask)  # rounded once to W, as torch does


@triton.jit
def _token_dy_kernel(
    DA,  # [B, D, C] dh * GELU'(a) in W
    W1,  # [D, S] fc1 weight
    DY,  # out [B, S, C] gradient of LN(x) in W
    C,
    D,
    S: tl.constexpr,
    BLOCK_S: tl.constexpr,  # tokens per program (M)
    BLOCK_C: tl.constexpr,  # channels per program (N)
    BLOCK_K: tl.constexpr,  # hidden units per K step
    PRECISION: tl.constexpr,
):
    # dy[b] = W1^T da[b]: K loop over the D hidden units; W1^T is an M-major operand (contiguous along s).
    b, offs_s, offs_c = _image_tile(tl.program_id(0), S, C, BLOCK_S, BLOCK_C)  # [BLOCK_S], [BLOCK_C]
    offs_k = tl.arange(0, BLOCK_K)
    s_mask = offs_s < S
    c_mask = offs_c < C
    w1_ptrs = W1 + offs_k[None, :] * S + offs_s[:, None]  # [BS, BK] = W1[k, s]^T
    da_ptrs = DA + b.to(tl.int64) * D * C + offs_k[:, None] * C + offs_c[None, :]  # [BK, BC]
    acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_mask = (k0 + offs_k) < D
        w1t = tl.load(w1_ptrs, mask=s_mask[:, None] & k_mask[None, :], other=0.0)
        da = tl.load(da_ptrs, mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        acc = mma(w1t, da, acc, PRECISION)
        w1_ptrs += BLOCK_K * S
        da_ptrs += BLOCK_K * C
    off = b.to(tl.int64) * S * C + offs_s[:, None] * C + offs_c[None, :]  # [BS, BC] offsets of dy[b]
    tl.store(DY + off, acc.to(DY.dtype.element_ty), mask=s_mask[:, None] & c_mask[None, :])


@triton.jit
def _token_dgrad_dy_kernel(
    Y,  # [B, S, C] LN(x) in W (bf16 / fp16)
    DO,  # [B, S, C] s * dout in W
    W1,  # [D, S] fc1 weight
    B1,  # [D] fc1 bias
    W2,  # [S, D] fc2 weight
    H,  # out [B, D, C] GELU(a) in W
    DA,  # out [B, D, C] dh * GELU'(a) in W
    DY,  # out [B, S, C] gradient of LN(x) in W
    C,
    D,
    S: tl.constexpr,
    S_PAD: tl.constexpr,  # next power of two >= max(S, 16), <= 256: the strips' token extent
    BLOCK_C: tl.constexpr,  # channels per program: the M of all three dots (64 rows per warpgroup)
    BLOCK_D: tl.constexpr,  # hidden units per step (N of dots 1-2, K of dot 3)
    PRECISION: tl.constexpr,
    ACT: tl.constexpr = "gelu",
):
    # Kernels 2 + 3 fused for one image b and one channel tile (Hopper, 16-bit W, S <= 256). Transposed orientation,
    # as the forward's fused kernel: every dot has the channel tile as M, so warpgroups own disjoint 64-row slices,
    # da^T feeds dot 3 from registers, and one W1 chunk in shared memory serves dots 1 and 3 (K-major, then N-major):
    #   a^T[c, d]  = sum_s y^T[c, s] W1^T[s, d]       dot 1: [BLOCK_C, S_PAD] @ [S_PAD, BLOCK_D]
    #   dh^T[c, d] = sum_s do^T[c, s] W2[s, d]        dot 2: [BLOCK_C, S_PAD] @ [S_PAD, BLOCK_D]
    #   dy^T[c, s] += sum_d da^T[c, d] W1[d, s]        dot 3: [BLOCK_C, BLOCK_D] @ [BLOCK_D, S_PAD]
    # The y^T / do^T strips are read once (loop-invariant A operands); h and da are stored per step for the weight
    # gradients (kernel 4); dy^T [BLOCK_C, S_PAD] fp32 (128 registers per thread at S_PAD = 256) is stored once.
    # grid B * cdiv(C, BLOCK_C): one "row tile" of S_PAD tokens per image
    b, offs_s, offs_c = _image_tile(tl.program_id(0), S_PAD, C, S_PAD, BLOCK_C)  # [S_PAD], [BLOCK_C]
    c_mask = offs_c < C
    s_mask = offs_s < S
    w_dtype: tl.constexpr = W1.dtype.element_ty
    strip = b.to(tl.int64) * S * C + offs_s[None, :] * C + offs_c[:, None]  # [BLOCK_C, S_PAD] offsets of [b, s, c]^T
    strip_mask = c_mask[:, None] & s_mask[None, :]
    yt = tl.load(Y + strip, mask=strip_mask, other=0.0)  # padded tokens 0: they add nothing to a or dh
    dot = tl.load(DO + strip, mask=strip_mask, other=0.0)
    hd = b.to(tl.int64) * D * C + offs_c[:, None]  # [BLOCK_C, 1] offsets of h[b, 0, c] / da[b, 0, c]
    acc = tl.zeros([BLOCK_C, S_PAD], dtype=tl.float32)  # dy^T
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        d_mask = offs_d < D
        w_mask = s_mask[:, None] & d_mask[None, :]
        w1t = tl.load(W1 + offs_d[None, :] * S + offs_s[:, None], mask=w_mask, other=0.0)  # [S_PAD, BLOCK_D] W1^T
        w2 = tl.load(W2 + offs_s[:, None] * D + offs_d[None, :], mask=w_mask, other=0.0)  # [S_PAD, BLOCK_D]
        a = mma(yt, w1t, None, PRECISION) + tl.load(B1 + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        dh = mma(dot, w2, None, PRECISION)  # [BLOCK_C, BLOCK_D] fp32
        h, dgelu = gelu_and_grad(a, ACT)
        da = round_to(dh * dgelu, w_dtype)  # rounded once to W, as torch does; padded hidden units: dh = 0
        o_mask = c_mask[:, None] & d_mask[None, :]
        tl.store(H + hd + offs_d[None, :] * C, round_to(h, w_dtype).to(w_dtype), mask=o_mask)
        tl.store(DA + hd + offs_d[None, :] * C, da.to(w_dtype), mask=o_mask)
        acc = mma(da.to(w_dtype), tl.trans(w1t), acc, PRECISION)  # [BLOCK_C, S_PAD]
    tl.store(DY + strip, acc.to(DY.dtype.element_ty), mask=strip_mask)  # torch's rounding point: dy in W


# One autotuner per operand route and kernel: each with its own config list, over the same JIT functions.
_ROUTES = ("16", "tf32", "fp32")
_KEY = ["S", "C", "D"]
_DGRAD = {
    r: triton.autotune(
        pick_configs(_gemm_configs("dgrad", r)), key=_KEY, prune_configs_by={"early_config_prune": _prune_dgrad}
    )(_token_dgrad_kernel)
    for r in _ROUTES
}
_DY = {r: triton.autotune(pick_configs(_gemm_configs("dy", r)), key=_KEY)(_token_dy_kernel) for r in _ROUTES}

# (BLOCK_C, BLOCK_D, warps, stages) of _token_dgrad_dy_kernel, from sm_90 builds (triton 3.6 and 3.8; bf16 and fp16,
# both GELUs, S = 49 / 196 / 256; all dots HGMMA, no spills). bf16 at S = 196 with triton 3.8 (kernel report): 4 warps
# 240 registers, 482 instructions per step for 384 MMA cycles, 2 CTAs/SM; 8 warps 225 registers, 926 for 768, 164 KB
# of shared memory, 1 CTA/SM. Both stage the W1 / W2 chunks through cp.async. Left out: 1 stage (408 instructions,
# but plain loads, their latency exposed every step; the time MODEL, which has no latency term, ties it with 2 stages)
# and BLOCK_D = 32 on 4 warps (255 registers, 130 KB, 1 CTA/SM; spills 12 B at S = 256 with triton 3.6).
_FUSED_TILES = [(64, 16, 4, 2), (128, 16, 8, 2)]


def _fused_configs() -> list[triton.Config]:
    """Configs of _token_dgrad_dy_kernel; the first is the interpreter's."""
    return [triton.Config({"BLOCK_C": c, "BLOCK_D": d}, num_warps=w, num_stages=st) for c, d, w, st in _FUSED_TILES]


_FUSED = triton.autotune(pick_configs(_fused_configs()), key=_KEY)(_token_dgrad_dy_kernel)


# Fewest programs (images x 64-channel tiles) for which token_mix_bwd fuses: each program walks all Dt / 16 hidden
# chunks in sequence, so small grids leave the GPU idle (time MODEL, H100, batch 1: B/16 15.5 us fused against 6.2 for
# the split pair, L/16 19.8 against 6.7); 256 is about one wave at 2 CTAs/SM on 132 SMs. A constant, so the route (and
# the gradients' rounding with it) depends on the shapes only: B/16 fuses from batch 22, L/16 from 16.
_FUSED_MIN_PROGRAMS = 256


def _can_fuse(S: int, w_dtype: torch.dtype) -> bool:
    """Whether _token_dgrad_dy_kernel can run at all: 16-bit W and S_PAD <= 256 (the dy^T strip's registers)."""
    return w_dtype in (torch.float16, torch.bfloat16) and _s_pad(S) <= _MAX_FUSED_S_PAD


def _fuses(B: int, S: int, C: int, w_dtype: torch.dtype, device: torch.device) -> bool:
    """Whether token_mix_bwd runs _token_dgrad_dy_kernel (one launch, no da round trip) rather than the split dgrad +
    dy kernels: where it can run (_can_fuse), on a grid of >= _FUSED_MIN_PROGRAMS, on sm_90, the one target its
    builds are checked for (on sm_80 its mma.sync build spills 1.5 KB: the split kernels run there, and on every other
    GPU). On CPU (interpreted tests, launch counting, the AOT capture) the sm_90 choice."""
    if not _can_fuse(S, w_dtype) or B * triton.cdiv(C, 64) < _FUSED_MIN_PROGRAMS:
        return False
    return device.type != "cuda" or torch.cuda.get_device_capability(device) == (9, 0)


def _wgrad_configs() -> list[triton.Config]:
    # 4-warp tiles larger than 64x64 (or BLOCK_K=64) spill on sm_90; the big tiles take 8 warps.
    return [
        triton.Config({"BLOCK_P": 64, "BLOCK_Q": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_P": 128, "BLOCK_Q": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_P": 64, "BLOCK_Q": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    ]  # (128, 64, 64) dropped: bf16 spills 8 B on sm_80 with triton 3.6


def _wgrad_gpu_configs(a_bytes: int, precision: str) -> list[tuple[int, triton.Config]]:
    """(index in _wgrad_configs(), config) of the configs a GPU launch autotunes over: fp32 operands at "ieee"
    precision run tl.dot on the FMA units, where the BLOCK_K = 64 tile spills on sm_80 (696 B at P = 384: the kernel
    report), so it is left out there."""
    fma = a_bytes == 4 and precision == "ieee"
    return [(i, c) for i, c in enumerate(_wgrad_configs()) if not (fma and c.kwargs["BLOCK_K"] > 32)]


def _prune_wgrad(configs, named_args, **kwargs):
    kept = [c for _, c in _wgrad_gpu_configs(named_args["DO"].element_size(), kwargs.get("PRECISION", "ieee"))]
    return keep_configs(configs, kept)


@triton.jit(do_not_specialize=["S", "D"])
def _wgrad_kernel(
    DO,  # [B, S, C] s * dout in W
    H,  # [B, D, C] GELU(a) in W
    DA,  # [B, D, C] dh * GELU'(a) in W
    Y,  # [B, S, C] LN(x) in W
    DW2_PART,  # out [SPLIT, S, D] fp32 partials of dW2 = sum_{b in split, c} do[b, s, c] h[b, d, c]
    DB2_PART,  # out [SPLIT, S] fp32 partials of db2 = sum_{b in split, c} do[b, s, c]
    DW1_PART,  # out [SPLIT, D, S] fp32 partials of dW1 = sum_{b in split, c} da[b, d, c] y[b, s, c]
    DB1_PART,  # out [SPLIT, D] fp32 partials of db1 = sum_{b in split, c} da[b, d, c]
    NB,
    S,
    D,
    C,
    b_per_split,
    BLOCK_P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Both weight gradients in one launch: out[p, q] = sum_{b, k} A[b, p, k] BM[b, q, k] and rowsum[p] = sum_{b, k}
    # A[b, p, k], with (A, BM, P, Q) = (do, h, S, D) for the first tiles and (da, y, D, S) for the rest. S and D are
    # never specialised, so both roles share one main loop over runtime-selected operands.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    tiles_dw2 = tl.cdiv(S, BLOCK_P) * tl.cdiv(D, BLOCK_Q)
    is_dw1 = pid >= tiles_dw2
    A = DO
    BM = H
    P = S
    Q = D
    tile = pid
    if is_dw1:  # the output pointers are chosen after the main loop (fewer registers live across it)
        A = DA
        BM = Y
        P = D
        Q = S
        tile = pid - tiles_dw2
    num_q = tl.cdiv(Q, BLOCK_Q)
    pid_p = tile // num_q
    pid_q = tile % num_q
    rp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rk = tl.arange(0, BLOCK_K)
    pmask = rp < P
    qmask = rq < Q
    # Out-of-range rows/cols read row 0 instead of being masked (only K needs a mask); they are never stored.
    rpc = tl.where(pmask, rp, 0)
    rqc = tl.where(qmask, rq, 0)
    acc = tl.zeros([BLOCK_P, BLOCK_Q], dtype=tl.float32)
    rsum = tl.zeros([BLOCK_P], dtype=tl.float32)
    b_start = split * b_per_split
    n_b = tl.minimum(b_start + b_per_split, NB) - b_start
    num_k = tl.cdiv(C, BLOCK_K)
    a0 = A + b_start.to(tl.int64) * P * C
    bm0 = BM + b_start.to(tl.int64) * Q * C
    # One flat loop over (sample, K-tile): the software pipeliner handles it far better than two nested loops.
    for it in range(0, n_b * num_k):
        bb = (it // num_k).to(tl.int64)
        k = (it % num_k) * BLOCK_K + rk
        kmask = k < C
        a = tl.load(a0 + bb * P * C + (rpc[:, None] * C + k[None, :]), mask=kmask[None, :], other=0.0)  # [BP, BK]
        bt = tl.load(bm0 + bb * Q * C + (rqc[None, :] * C + k[:, None]), mask=kmask[:, None], other=0.0)  # [BK, BQ]
        acc = mma(a, bt, acc, PRECISION)
        rsum += tl.sum(a.to(tl.float32), axis=1)
    OUT = DW2_PART
    ROWSUM = DB2_PART
    if is_dw1:
        OUT = DW1_PART
        ROWSUM = DB1_PART
    out = OUT + split.to(tl.int64) * P * Q
    tl.store(out + rp[:, None] * Q + rq[None, :], acc, mask=pmask[:, None] & qmask[None, :])
    tl.store(ROWSUM + split.to(tl.int64) * P + rp, rsum, mask=pmask & (pid_q == 0))


_wgrad = triton.autotune(
    configs=pick_configs(_wgrad_configs()),
    key=["NB", "S", "D", "C"],
    prune_configs_by={"early_config_prune": _prune_wgrad},
)(_wgrad_kernel)


def _wgrad_split(nb: int, p: int, q: int) -> int:
    """Splits of the batch loop: enough programs to fill the GPU at 64x64 tiles; a function of the shapes only."""
    tiles = triton.cdiv(p, 64) * triton.cdiv(q, 64)
    return max(1, min(nb, triton.cdiv(_WGRAD_TARGET_PROGRAMS, tiles)))


def _wgrad_launch(
    do: Tensor, h: Tensor, da: Tensor, y: Tensor, *, allow_tf32: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """do, y [B, S, C]; h, da [B, D, C] (same W dtype) -> fp32 partials over batch splits: dW2 [SPLIT, S, D],
    db2 [SPLIT, S], dW1 [SPLIT, D, S], db1 [SPLIT, D] (SPLIT a function of the shapes only)."""
    nb, s, c = do.shape
    d = h.shape[1]
    split = _wgrad_split(nb, s, d)
    b_per_split = triton.cdiv(nb, split)
    split = triton.cdiv(nb, b_per_split)  # no empty splits
    f32 = dict(device=do.device, dtype=torch.float32)
    dw2, db2, dw1, db1 = (torch.empty(shape, **f32) for shape in ((split, s, d), (split, s), (split, d, s), (split, d)))

    def grid(meta):
        tiles = triton.cdiv(s, meta["BLOCK_P"]) * triton.cdiv(d, meta["BLOCK_Q"])
        tiles += triton.cdiv(d, meta["BLOCK_P"]) * triton.cdiv(s, meta["BLOCK_Q"])
        return (tiles, split)

    _wgrad[grid](
        do,
        h,
        da,
        y,
        dw2,
        db2,
        dw1,
        db1,
        nb,
        s,
        d,
        c,
        b_per_split,
        PRECISION=dot_precision(allow_tf32, do.dtype),
    )
    return dw2, db2, dw1, db1


def _token_gemms_split(
    route: str, y: Tensor, do: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, h: Tensor, da: Tensor, dy: Tensor, *,
    precision: str, act: str,
) -> None:  # fmt: skip
    """Kernels 2 and 3: h, da [B, D, C] from y, do [B, S, C], then dy [B, S, C] from da (any S, every route)."""
    B, S, C = y.shape
    D = w1.shape[0]
    _DGRAD[route][lambda meta: (B * triton.cdiv(D, meta["BLOCK_D"]) * triton.cdiv(C, meta["BLOCK_C"]),)](
        y, do, w1, b1, w2, h, da, C, D, S=S, PRECISION=precision, ACT=act,
    )  # fmt: skip
    _DY[route][lambda meta: (B * triton.cdiv(S, meta["BLOCK_S"]) * triton.cdiv(C, meta["BLOCK_C"]),)](
        da, w1, dy, C, D, S=S, PRECISION=precision,
    )  # fmt: skip


def token_mix_bwd(
    dout: Tensor, args: MixArgs, *, eps: float, allow_tf32: bool, act: str = "gelu", split: bool | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of token_mix: dout [B, S, C]; args (fastmixer.mix_args.MixArgs): x [B, S, C], fc1_weight [Dt, S],
    fc2_weight [S, Dt], branch_scale [B] or None; act "gelu" | "gelu_tanh" -> (dx, d ln_weight, d ln_bias,
    d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias), each in its input's dtype. split: None picks the token GEMMs'
    route (_fuses, shapes and GPU); True forces the split dgrad + dy kernels, False the fused one (tests cover both)."""
    dout, args = check_launch_args("token_mix_bwd", "token", args, eps=eps, act=act, dout=dout)
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = args
    B, S, C = x.shape
    D = fc1_weight.shape[0]
    w_dtype = fc1_weight.dtype
    y, do, mean, rstd, _ = ln_prep(x, dout, branch_scale, ln_weight, ln_bias, w_dtype, eps=eps, col_sum=False)
    h = torch.empty((B, D, C), device=x.device, dtype=w_dtype)
    da = torch.empty((B, D, C), device=x.device, dtype=w_dtype)
    dy = torch.empty((B, S, C), device=x.device, dtype=w_dtype)
    precision = dot_precision(allow_tf32, w_dtype)
    route = _route(w_dtype, precision)
    fused = _fuses(B, S, C, w_dtype, x.device) if split is None else not split
    if fused and not _can_fuse(S, w_dtype):
        raise ValueError(f"token_mix_bwd: the fused dgrad + dy kernel takes fp16/bf16 weights and S <= "
                         f"{_MAX_FUSED_S_PAD}, got {w_dtype} and S = {S}")  # fmt: skip
    if fused:
        _FUSED[lambda meta: (B * triton.cdiv(C, meta["BLOCK_C"]),)](
            y, do, fc1_weight, fc1_bias, fc2_weight, h, da, dy, C, D,
            S=S, S_PAD=_s_pad(S), PRECISION=precision, ACT=act,
        )  # fmt: skip
    else:
        _token_gemms_split(route, y, do, fc1_weight, fc1_bias, fc2_weight, h, da, dy, precision=precision, act=act)
    dw2_part, db2_part, dw1_part, db1_part = _wgrad_launch(do, h, da, y, allow_tf32=allow_tf32)
    dx, dg_part, dbeta_part, _ = ln_backward(x, dy, dout, ln_weight, mean, rstd)
    grads = [torch.empty_like(p) for p in (ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)]
    parts = (dg_part, dbeta_part, dw1_part, db1_part, dw2_part, db2_part)
    reduce_partials(list(zip(parts, grads)))  # one launch, each total stored in its parameter's dtype
    return (dx, *grads)


# ------------------------------------------------------------------------------------------------ AOT build specs
def _fuses_on_sm90(case: Case) -> bool:
    """_fuses at the case's dtypes and S on an sm_90 GPU."""
    shape = case.shape
    return _fuses(shape.batch, shape.S, shape.C, ROUTE_DTYPES[case.route][2], torch.device("cpu"))


def spec_cases() -> list[Case]:
    """The backward launches the AOT builds cover: every dtype route at the training shapes (batch 256) without
    drop-path, with it for bf16 and autocast, the tanh-approximate GELU at B/16 bf16, bf16 and autocast at batch 1, and
    bf16 / fp32 / tf32 at every other supported token count (S is a constexpr of the token GEMMs); each case whose
    token GEMMs fuse on sm_90 once more with split=True, the route sm_80 (and any other GPU) takes."""
    cases = [Case(route, shape) for route in ROUTE_DTYPES for shape in TRAIN_SHAPES]
    cases += [Case(route, TRAIN_SHAPES[0], scale=True) for route in ("bf16", "fp32+bf16")]
    cases.append(Case("bf16", TRAIN_SHAPES[0], act="gelu_tanh"))
    cases += [Case(route, shape) for route in ("bf16", "fp32+bf16") for shape in SMALL_TRAIN_SHAPES]
    cases += [Case(route, shape) for route in ("bf16", "fp32", "fp32-tf32") for shape in TOKEN_SHAPES]
    return cases + [dataclasses.replace(c, split=True) for c in cases if _fuses_on_sm90(c)]


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (kernel, autotune config, dtype route, specialisation) at the shapes of spec_cases()
    (kernels/_specs.py derives signature and divisibility as the JIT does). Every token count must fit (sm_90 and
    sm_80 shared memory, no spills)."""
    specs = SpecSet("token_mix_bwd")
    for case in spec_cases():
        route, shape = case.tag, case.shape
        _, ln_dt, w_dt, tf32 = ROUTE_DTYPES[case.route]
        add_row_kernel_specs(specs, case, col_sum=False, dy_dtype=w_dt)
        w, f32 = Ptr(w_dt), Ptr(torch.float32)
        precision = dot_precision(tf32, w_dt)
        groute = _route(w_dt, precision)
        B, S, C, D = shape.batch, shape.S, shape.C, shape.DT
        common = dict(C=C, D=D, S=S, PRECISION=precision)
        if not case.split and _fuses_on_sm90(case):
            fused = dict(Y=w, DO=w, W1=w, B1=w, W2=w, H=w, DA=w, DY=w, S_PAD=_s_pad(S), ACT=case.act, **common)
            for i, cfg in enumerate(_fused_configs()):
                specs.add(_token_dgrad_dy_kernel, route, shape, fused, cfg, config_index=i, archs=(90,))
        else:
            dgrad = dict(Y=w, DO=w, W1=w, B1=w, W2=w, H=w, DA=w, ACT=case.act, **common)
            for i, cfg in _dgrad_gpu_configs(groute, case.act):
                specs.add(_token_dgrad_kernel, route, shape, dgrad, cfg, config_index=i)
            for i, cfg in enumerate(_gemm_configs("dy", groute)):
                specs.add(_token_dy_kernel, route, shape, dict(DA=w, W1=w, DY=w, **common), cfg, config_index=i)
        b_per_split = triton.cdiv(B, _wgrad_split(B, S, D))
        split = triton.cdiv(B, b_per_split)
        wgrad = dict(DO=w, H=w, DA=w, Y=w, DW2_PART=f32, DB2_PART=f32, DW1_PART=f32, DB1_PART=f32, NB=B, S=S, D=D, C=C,
                     b_per_split=b_per_split, PRECISION=precision)  # fmt: skip
        for i, cfg in _wgrad_gpu_configs(w_dt.itemsize, precision):
            specs.add(_wgrad_kernel, route, shape, wgrad, cfg, config_index=i)
        rows = row_programs(shape)
        add_reduce_spec(specs, case, [(rows, C, ln_dt), (rows, C, ln_dt), (split, D * S, w_dt), (split, D, w_dt),
                                      (split, S * D, w_dt), (split, S, w_dt)])  # fmt: skip
    return specs.specs()
