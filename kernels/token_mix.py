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

Two launches per call:
  1. `_token_stats_kernel`: per-token fp32 mean/rstd over C (one read of x, _common.ln_row_stats: lane Welford, never
     E[x^2] - E[x]^2) -> stats [2, B*S] fp32 (8 bytes per token).
  2. `_token_mix_fwd_kernel`: grid (B * cdiv(C, BLOCK_C),) on axis 0 (thousands of images stay inside CUDA limits;
     the c-tiles of one image are neighbours, so its x slab and the weights stay in L2). Program (b, c-tile) normalises
     its strip with the stats, loops over Dt in BLOCK_D chunks (A-chunk -> GELU -> acc += W2-chunk H-chunk, acc
     [S_PAD, BLOCK_C] fp32 in registers), then fuses b2, the branch scale and the residual into the store.
Why a stats pass rather than recomputing the stats in every program: each program needs mu/rstd over ALL C, so the
in-kernel route reads the whole [S, C] slab of its image once per c-tile, cdiv(C, BLOCK_C) = 12-40 times per image at
Mixer shapes, serially before its first MMA: for Mixer-B/16 in bf16 with BLOCK_C = 64, ~3.6 MB of L2 reads per image
(~0.5 us at ~7 TB/s) against ~231 MFLOP (~0.5 us at ~450 TFLOP/s), i.e. a prologue as long as the math (estimates,
not measured). The stats pass reads x once more from HBM (0.3 MB per image, ~0.1 us at 3.35 TB/s) and keeps the
Mixer block within its 4-launch budget (token 2 + channel 2).

Two routes, one kernel (constexpr BLOCK_K picks):
  * "mma" (fp16/bf16 operands, fp32 as tf32): BLOCK_K >= S_PAD, dot 1 in one step against the LN strip, normalised
    once and held in shared memory (the loop-invariant B operand);
  * "fma" (fp32 operands at "ieee", torch's default "highest"): tl.dot runs on FMA units with whole operand rows in
    registers, so dot 1 is split over tokens in BLOCK_K steps, each LN tile re-normalised from L1/L2 (cheap next to
    FMA math). Both builds are spill-free at S_PAD = 256 on sm_90 and sm_80 (see gpu_build_specs).
S is a constexpr (one compile per token count): with S = 196, W1's row stride is then known to be 8-byte aligned, so
its loads vectorise and pipeline (cp.async); as a runtime int it would not be (196 is not a multiple of 16).

S (36, 49, 196, 256, ...) is padded to S_PAD = next power of two (>= 16, tl.dot's minimum) with masks; C and Dt are
masked per tile, so any C >= 1 and Dt >= 1 work. Padded tokens get Y = 0 and zero W1/W2 entries, padded hidden units
get zero W1 rows and b1 = 0 so GELU(0) = 0: padding never leaks into real outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmixer.kernels._common import INTERPRET, dot_precision, gelu, ln_row_stats, pick_configs
from fastmixer.kernels._specs import MODEL_SHAPES, ROUTE_DTYPES, TOKEN_SHAPES, Case, Ptr, SpecSet
from fastmixer.mix_args import MixArgs, check_mix_args

_STATS_BLOCK_R = 8  # token rows per stats program
_STATS_MAX_K = 512  # channel chunk of the stats pass: [8, 512] fp32 = 32 registers/thread at 4 warps


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
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    rmask = rows < N_ROWS
    mean, rstd = ln_row_stats(X + rows.to(tl.int64) * C, rmask, C, eps, BLOCK_R, BLOCK_K)  # B*S*C may pass 2^31
    tl.store(STATS + rows, mean, mask=rmask)
    tl.store(STATS + N_ROWS + rows, rstd, mask=rmask)


@triton.jit
def _rtne_bf16(v):
    """fp32 -> fp32 holding the round-to-nearest-even bf16 value of v (the interpreter's own fp32 -> bf16 cast
    truncates, which biases every rounding point; the GPU's cast is already RTNE)."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16 << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _round_w(v, W_DTYPE: tl.constexpr, INTERP_BF16: tl.constexpr):
    """Round fp32 v to the matmul dtype W, as torch stores it. Result dtype: W, or under INTERP_BF16 fp32 carrying
    bf16 values (the dot operands are then upcast; see the kernel's INTERP_BF16)."""
    if INTERP_BF16:
        return _rtne_bf16(v)
    else:
        return v.to(W_DTYPE)


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
    smask,
    cmask,
    g,
    beta,
    W_DTYPE: tl.constexpr,
    INTERP_BF16: tl.constexpr,
):
    """LN(x[b])[offs_s, offs_c] -> [len(offs_s), len(offs_c)] rounded to W (torch's cast before fc1), zero outside
    (smask, cmask). Row stats come from STATS; g, beta: [len(offs_c)] fp32."""
    mask = smask[:, None] & cmask[None, :]
    xt = tl.load(X + img + offs_s[:, None] * C + offs_c[None, :], mask=mask, other=0.0, eviction_policy="evict_last")
    mu = tl.load(STATS + tok, mask=smask, other=0.0)
    rstd = tl.load(STATS + N_ROWS + tok, mask=smask, other=0.0)
    y = (xt.to(tl.float32) - mu[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]
    return _round_w(tl.where(mask, y, 0.0), W_DTYPE, INTERP_BF16)


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
    S_PAD: tl.constexpr,  # next power of two >= max(S, 16)
    BLOCK_C: tl.constexpr,  # channels per program (the N of both dots)
    BLOCK_D: tl.constexpr,  # hidden units per loop step (M of dot 1, K of dot 2)
    BLOCK_K: tl.constexpr,  # K step of dot 1 over tokens; >= S_PAD: one dot against an LN strip kept in shared memory
    HAS_SCALE: tl.constexpr,
    # Interpreter + bf16 W only: its bf16 tl.dot returns garbage (triton issue 11584) and its fp32 -> bf16 cast
    # truncates, so operands are rounded to bf16 by hand (RTNE) and the dots run on fp32 copies of those bf16 values:
    # exact products + fp32 accumulation, what the GPU's bf16 MMA computes. Off on GPU.
    INTERP_BF16: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" | "tf32" for fp32 operands
    ACT: tl.constexpr = "gelu",  # "gelu" (exact erf) | "gelu_tanh" (tanh approximation)
):
    pid = tl.program_id(0)
    n_ct = tl.cdiv(C, BLOCK_C)
    b = pid // n_ct
    offs_c = (pid % n_ct) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    offs_s = tl.arange(0, S_PAD)  # [S_PAD]
    cmask = offs_c < C
    smask = offs_s < S
    img = b.to(tl.int64) * S * C  # x[b] offset (B*S*C may exceed 2^31)
    tok = b.to(tl.int64) * S  # STATS row of token (b, 0)
    g = tl.load(LN_W + offs_c, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(LN_B + offs_c, mask=cmask, other=0.0).to(tl.float32)
    w_dtype: tl.constexpr = W1.dtype.element_ty
    dot_dtype: tl.constexpr = tl.float32 if INTERP_BF16 else w_dtype  # W, or fp32 carrying W-rounded values
    if BLOCK_K >= S_PAD:
        # Whole LN(x[b])[:, c-tile] strip, [S_PAD, BLOCK_C] in W (padded tokens 0): the loop-invariant B operand of
        # dot 1, normalised once (tensor-core path: it sits in shared memory, read by every step).
        y = _ln_tile(
            X, STATS, img, tok + offs_s, N_ROWS, C, offs_s, offs_c, smask, cmask, g, beta, w_dtype, INTERP_BF16
        )

    acc = tl.zeros([S_PAD, BLOCK_C], dtype=tl.float32)  # (W2 H)^T strip, before b2
    for d0 in range(0, DT, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        dmask = offs_d < DT
        if BLOCK_K >= S_PAD:
            w1 = tl.load(W1 + offs_d[:, None] * S + offs_s[None, :], mask=dmask[:, None] & smask[None, :], other=0.0)
            a = tl.dot(w1.to(dot_dtype), y, input_precision=DOT_PRECISION)  # [BLOCK_D, S_PAD] @ [S_PAD, BLOCK_C]
        else:
            # K-split over tokens (FMA path: a whole-S dot would hold S_PAD-long operand rows in registers): each
            # [BLOCK_K, BLOCK_C] LN tile is re-normalised from x (L1/L2-resident), cheap next to the FMA dot.
            a = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
            for k0 in range(0, S, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                kmask = offs_k < S
                yk = _ln_tile(
                    X, STATS, img, tok + offs_k, N_ROWS, C, offs_k, offs_c, kmask, cmask, g, beta, w_dtype, INTERP_BF16
                )
                k1mask = dmask[:, None] & kmask[None, :]
                w1 = tl.load(W1 + offs_d[:, None] * S + offs_k[None, :], mask=k1mask, other=0.0)  # [BLOCK_D, BLOCK_K]
                a = tl.dot(w1.to(dot_dtype), yk, a, input_precision=DOT_PRECISION)
        a += tl.load(B1 + offs_d, mask=dmask, other=0.0).to(tl.float32)[:, None]  # [BLOCK_D, BLOCK_C] fp32
        # GELU in fp32, rounded to W as torch stores the activation; padded hidden units: a = 0 -> h = 0.
        h = _round_w(gelu(a, ACT), w_dtype, INTERP_BF16)
        w2 = tl.load(W2 + offs_s[:, None] * DT + offs_d[None, :], mask=smask[:, None] & dmask[None, :], other=0.0)
        # acc += W2[:, d-chunk] H[d-chunk, c-tile]: [S_PAD, BLOCK_D] @ [BLOCK_D, BLOCK_C]
        acc = tl.dot(w2.to(dot_dtype), h, acc, input_precision=DOT_PRECISION)

    # Epilogue: + b2, * s[b], + residual x (re-read from L2 rather than kept live across the loop), one store.
    o = acc + tl.load(B2 + offs_s, mask=smask, other=0.0).to(tl.float32)[:, None]
    if HAS_SCALE:
        o = o * tl.load(SCALE + b).to(tl.float32)
    mask = smask[:, None] & cmask[None, :]
    strip = img + offs_s[:, None] * C + offs_c[None, :]  # [S_PAD, BLOCK_C] offsets of x[b, :, c-tile]
    xr = tl.load(X + strip, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    u = xr + o
    if INTERP_BF16 and OUT.dtype.element_ty == tl.bfloat16:
        u = _rtne_bf16(u)
    tl.store(OUT + strip, u.to(OUT.dtype.element_ty), mask=mask)


def _mma_configs(w_dtype: torch.dtype = torch.bfloat16) -> list[triton.Config]:
    """Tensor-core configs (fp16/bf16 operands, or fp32 as tf32): dot 1 in one step over the whole strip. The first is
    the conservative one (the interpreter's). fp32 operands double the shared-memory tiles, so they keep BLOCK_D = 32.
    All are built spill-free at S_PAD = 256 for sm_90 and sm_80 (gpu_build_specs)."""
    c = triton.Config
    configs = [
        c({"BLOCK_C": 32, "BLOCK_D": 32, "BLOCK_K": 1024}, num_warps=4, num_stages=2),
        c({"BLOCK_C": 64, "BLOCK_D": 32, "BLOCK_K": 1024}, num_warps=8, num_stages=2),
        c({"BLOCK_C": 64, "BLOCK_D": 32, "BLOCK_K": 1024}, num_warps=8, num_stages=3),
        c({"BLOCK_C": 64, "BLOCK_D": 64, "BLOCK_K": 1024}, num_warps=8, num_stages=2),
    ]
    return configs[:2] if w_dtype == torch.float32 else configs


def _fma_configs() -> list[triton.Config]:
    """fp32 operands at "ieee" precision (torch's default "highest"): tl.dot runs on FMA units and keeps operand rows
    in registers, so dot 1 is split over tokens in BLOCK_K steps."""
    c = triton.Config
    return [
        c({"BLOCK_C": 32, "BLOCK_D": 16, "BLOCK_K": 32}, num_warps=8, num_stages=2),
        c({"BLOCK_C": 64, "BLOCK_D": 16, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    ]


def _route_configs(route: str, w_dtype: torch.dtype) -> list[triton.Config]:
    return _fma_configs() if route == "fma" else _mma_configs(w_dtype)


_KEY = ["S", "C", "DT"]
# One autotuner per (route, fp32 operands?): each with its own config list, all over the same JIT function.
_KERNELS = {
    (route, fp32): triton.autotune(configs=pick_configs(_route_configs(route, w)), key=_KEY)(_token_mix_fwd_kernel)
    for route in ("mma", "fma")
    for fp32, w in ((False, torch.bfloat16), (True, torch.float32))
}
_ROUTES = ("mma", "fma")


def _default_route(w_dtype: torch.dtype, precision: str) -> str:
    """fp32 operands at "ieee" run on FMA units ("fma": dot 1 split over tokens); everything else on tensor cores."""
    return "fma" if w_dtype == torch.float32 and precision == "ieee" else "mma"


# ------------------------------------------------------------------------------------------------ launcher
def _s_pad(S: int) -> int:
    return max(16, triton.next_power_of_2(S))


def _stats_block_k(C: int) -> int:
    return min(_STATS_MAX_K, max(16, triton.next_power_of_2(C)))


def token_mix_fwd(
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    branch_scale: Tensor | None,
    *,
    eps: float,
    allow_tf32: bool,
    act: str = "gelu",
    route: str | None = None,
) -> Tensor:
    """Fused token mixing: x [B, S, C] (fp32/fp16/bf16); ln_* [C]; fc1_weight [Dt, S], fc1_bias [Dt],
    fc2_weight [S, Dt], fc2_bias [S] in the matmul dtype W; branch_scale None or [B] (fastmixer.mix_args has the
    contract; non-dense tensors are copied dense). act: "gelu" (exact erf) or "gelu_tanh".
    Returns u = x + s * (W2 GELU(W1 LN(x)^T + b1) + b2)^T as a new contiguous [B, S, C] in promote(X, W).
    Two launches: per-token LN stats, then LN + fc1 + GELU + fc2 + biases + scale + residual fused.
    route: None picks by dtype ("fma" for fp32 at ieee precision, else "mma"); tests force one to cover both."""
    if route not in (None, *_ROUTES):
        raise ValueError(f"token_mix_fwd: route must be one of {_ROUTES} or None, got {route!r}")
    args = MixArgs(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale)
    check_mix_args("token_mix_fwd", "token", args, eps=eps, act=act, kernel=True, mixed=True)
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = args.contiguous()
    B, S, C = x.shape
    Dt = fc1_weight.shape[0]
    w_dtype = fc1_weight.dtype
    out = torch.empty((B, S, C), dtype=torch.promote_types(x.dtype, w_dtype), device=x.device)
    if out.numel() == 0:
        return out
    n_rows = B * S
    stats = torch.empty((2, n_rows), dtype=torch.float32, device=x.device)  # mean, rstd
    _token_stats_kernel[(triton.cdiv(n_rows, _STATS_BLOCK_R),)](
        x, stats, n_rows, C, float(eps), BLOCK_R=_STATS_BLOCK_R, BLOCK_K=_stats_block_k(C), num_warps=4
    )
    has_scale = branch_scale is not None
    precision = dot_precision(allow_tf32, w_dtype)
    route = route or _default_route(w_dtype, precision)
    _KERNELS[route, w_dtype == torch.float32][lambda meta: (B * triton.cdiv(C, meta["BLOCK_C"]),)](
        x,
        stats,
        ln_weight,
        ln_bias,
        fc1_weight,
        fc1_bias,
        fc2_weight,
        fc2_bias,
        branch_scale if has_scale else x,  # dummy pointer, never read
        out,
        n_rows,
        C,
        Dt,
        S=S,
        S_PAD=_s_pad(S),
        HAS_SCALE=has_scale,
        INTERP_BF16=INTERPRET and w_dtype == torch.bfloat16,
        DOT_PRECISION=precision,
        ACT=act,
    )
    return out


# ------------------------------------------------------------------------------------------------ AOT build specs
def spec_cases() -> list[Case]:
    """The launches the AOT builds cover: every dtype route at every model shape without drop-path, the drop-path
    epilogue and the tanh-approximate GELU at B/16 bf16, and bf16 / fp32 at every other supported token count (S is a
    constexpr here, so each S is its own build)."""
    cases = [Case(route, shape) for route in ROUTE_DTYPES for shape in MODEL_SHAPES]
    cases += [Case("bf16", MODEL_SHAPES[0], scale=True), Case("bf16", MODEL_SHAPES[0], act="gelu_tanh")]
    return cases + [Case(route, shape) for route in ("bf16", "fp32") for shape in TOKEN_SHAPES]


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (kernel, autotune config, dtype route, specialisation) at the shapes of spec_cases()
    (kernels/_specs.py derives signature and divisibility as the JIT does). Token counts outside the 224 px model
    shapes are must_fit=False: reported by the build tests and the kernel report, not yet required to fit."""
    specs = SpecSet("token_mix")
    model = {shape.label for shape in MODEL_SHAPES}
    for case in spec_cases():
        route, shape = case.tag, case.shape
        x_dt, ln_dt, w_dt, tf32 = ROUTE_DTYPES[case.route]
        x, ln, w, f32 = Ptr(x_dt), Ptr(ln_dt), Ptr(w_dt), Ptr(torch.float32)
        must_fit = shape.label in model
        stats = dict(X=x, STATS=f32, N_ROWS=shape.M, C=shape.C, eps=1e-6, BLOCK_R=_STATS_BLOCK_R,
                     BLOCK_K=_stats_block_k(shape.C))  # fmt: skip
        specs.add(_token_stats_kernel, route, shape, {**stats, "num_warps": 4}, must_fit=must_fit)
        precision = dot_precision(tf32, w_dt)
        args = dict(X=x, STATS=f32, LN_W=ln, LN_B=ln, W1=w, B1=w, W2=w, B2=w, SCALE=x,
                    OUT=Ptr(torch.promote_types(x_dt, w_dt)), N_ROWS=shape.M, C=shape.C, DT=shape.DT, S=shape.S,
                    S_PAD=_s_pad(shape.S), HAS_SCALE=case.scale, INTERP_BF16=False, DOT_PRECISION=precision,
                    ACT=case.act)  # fmt: skip
        for i, cfg in enumerate(_route_configs(_default_route(w_dt, precision), w_dt)):
            specs.add(_token_mix_fwd_kernel, route, shape, args, cfg, config_index=i, must_fit=must_fit)
    return specs.specs()
