"""Fused channel-mixing forward: a LayerNorm pass (or LN folded into GEMM1) and two pure GEMMs with fused epilogues.

Rows m = b * S + s of x [B, S, C] viewed as [M, C] (M = B * S; contiguous, so no copy). With W the weights' dtype:

  LN pass  `layernorm._layernorm_fwd_kernel` (kernels/layernorm.py)
      y[m, k] = ((x[m, k] - mu[m]) * rstd[m] * g[k] + beta[k]) -> W      fp32 statistics (shifted Welford) and math,
                                                                           one rounding to W: torch's LN output cast
  GEMM1  (M x K=C) @ (K x N=Dc), `_fc1_gelu_kernel`
      main loop: acc[m, n] = sum_k y[m, k] * W1[n, k]                      (operand loads + MMA only, fp32 accumulator)
      epilogue:  h[m, n] = GELU(acc + b1[n]) -> W   (exact erf, or tanh under ACT)     h [M, Dc] stored in W
  or, where layernorm.folds() holds (x and W bf16, C <= 2048, M >= 2 Dc), LN folded into GEMM1 (FOLD):
  LN fold  `layernorm._ln_fold_kernel`: mean/rstd [M] fp32 of x's rows; W1g = round_W(W1 * g) [Dc, C], cw = sum_k W1g
      [Dc] fp32, b' = b1 + W1 beta [Dc] fp32 (one launch)
  GEMM1  main loop: acc[m, n] = sum_k x[m, k] * W1g[n, k]   (x itself: y is never written)
      epilogue:  h[m, n] = GELU(rstd[m] * (acc - mean[m] * cw[n]) + b'[n]) -> W
      The subtraction cancels the row mean in fp32 (x and W1g are exact 16-bit values, their products exact in the
      fp32 accumulator), so rows whose mean is large against their spread keep the three-way rule
      (tests/test_channel_mix.py); the rounding points differ from torch's (W1 * g rounded instead of y). It saves the
      write and the read of y ([M, C] in W) for a read and a write of W1 ([Dc, C]): hence M >= 2 Dc. fp16 keeps the
      LN pass (W1 * g can leave fp16's range: layernorm.folds).
  GEMM2  (M x K=Dc) @ (K x N=C), `_fc2_residual_kernel`
      main loop: acc[m, n] = sum_k h[m, k] * W2[n, k]
      epilogue:  out[m, n] = x[m, n] + s[m // S] * (acc + b2[n])   in fp32, stored in promote(X, W)

Why a separate LN pass rather than LayerNorm inside GEMM1: recomputing each row's statistics in every column tile and
normalising the A tile in registers made GEMM1's main loop issue-bound (bf16 on sm_90: 1.37-2.76 issue cycles per MMA
cycle, 170-172 registers, 1 CTA/SM at 128 x 128; the kernel report of git d833c6e). The pass adds one read of
x and one write + read of y [M, C] in W (M x C x 2 B = 77 MB each at B/16 bf16 batch 256) and a launch, and leaves both
GEMMs pure, at the same rounding points as torch.
The fold is not used with an fp32 residual stream and 16-bit weights (autocast): x itself would have to be rounded to W
before the MMA, and for rows whose mean is large against their spread that rounding is ~|mean|/spread times torch's
error, outside the three-way rule.

Both GEMMs use grouped ("swizzled") program order on a 1-D grid: programs are walked in column-major groups of GROUP_M
row tiles, so the GROUP_M row panels of A and the weight column panel a group touches stay in L2.
Operand tiles repeat the last row/column past M/N (always in bounds: the loads need only the K mask; stores are
masked), both operands K-contiguous (W1 and W2 in their timm layout [N, K]), cp.async-pipelined by Triton over
num_stages. Each tile's base offset is one int64 scalar (M * Dc exceeds 2^31 at batch 4096 x 196 tokens x 3072);
offsets inside a tile are int32, which keeps the per-element pointer math out of the registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmixer.mix_args import MixArgs, check_launch_args

from . import layernorm
from ._common import dot_precision, gelu, keep_configs, mma, pick_configs
from ._specs import MODEL_SHAPES, ROUTE_DTYPES, Case, Ptr, SpecSet


# ------------------------------------------------------------------------------------------------ shared jit helpers
@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a 1-D program id to its (row tile, column tile) in GROUP_M-tall column-major groups (L2 reuse)."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)  # the last group may be shorter
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _matmul_nt(
    A,  # [M, K] row-major
    B,  # [N, K] row-major (a weight in its nn.Linear layout)
    row0,  # first row of this tile (pid_m * BLOCK_M)
    col0,  # first column of this tile (pid_n * BLOCK_N)
    M,
    N,
    K,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc [BLOCK_M, BLOCK_N] fp32 = A[row0 : row0 + BLOCK_M, :] @ B[col0 : col0 + BLOCK_N, :]^T. The main loop holds
    operand loads and tl.dot only: rows/columns past M/N repeat the last one (always in bounds, never stored), K past
    the end is zero-filled. The tile's base offset is one int64 scalar; per-element offsets are int32 within the
    tile's row panel (BLOCK_M x K elements), which keeps the pointer math and its registers small."""
    rows = tl.minimum(row0 + tl.arange(0, BLOCK_M), M - 1) - row0  # [BLOCK_M] local rows
    cols = tl.minimum(col0 + tl.arange(0, BLOCK_N), N - 1) - col0  # [BLOCK_N] local columns
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = (A + row0.to(tl.int64) * K) + (rows[:, None] * K + offs_k[None, :])  # A tile [BLOCK_M, BLOCK_K]
    b_ptrs = (B + col0.to(tl.int64) * K) + (cols[None, :] * K + offs_k[:, None])  # B tile [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
        acc = mma(a, b, acc, PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    return acc


@triton.jit
def _bias_gelu_store(acc, BIAS, OUT, MEAN, RSTD, CW, rows_left, cols_left, ld, ACT: tl.constexpr,
                     FOLD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):  # fmt: skip
    """out[i, j] = GELU(a[i, j] + b[j]) in fp32, rounded to out's dtype, for i < rows_left, j < cols_left, where
    a = acc, or with FOLD (acc = x W1g^T) a = rstd[i] * (acc[i, j] - mean[i] * cw[j]). acc [BM, BN] fp32; BIAS,
    OUT, MEAN, RSTD, CW: the tile's first bias / output / row-statistic / column-sum element; ld: output row stride."""
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    m_mask = offs_m < rows_left
    n_mask = offs_n < cols_left
    if FOLD:
        mean = tl.load(MEAN + offs_m, mask=m_mask, other=0.0)
        rstd = tl.load(RSTD + offs_m, mask=m_mask, other=0.0)
        cw = tl.load(CW + offs_n, mask=n_mask, other=0.0)
        acc = rstd[:, None] * (acc - mean[:, None] * cw[None, :])
    bias = tl.load(BIAS + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    h = gelu(acc + bias[None, :], ACT)
    mask = m_mask[:, None] & n_mask[None, :]
    tl.store(OUT + (offs_m[:, None] * ld + offs_n[None, :]), h.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _bias_residual_store(acc, BIAS, SCALE, X, OUT, row0, M, cols_left, ld, S, HAS_SCALE: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr):  # fmt: skip
    """out[i, j] = x[i, j] + s[(row0 + i) // S] * (acc[i, j] + b[j]) in fp32, rounded to out's dtype, for rows
    row0 + i < M and j < cols_left. acc [BM, BN] fp32; BIAS, X, OUT: the tile's first bias / residual /
    output element; ld: row stride of x and out; s read from SCALE only when HAS_SCALE."""
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    m_mask = offs_m < M - row0
    n_mask = offs_n < cols_left
    o = acc + tl.load(BIAS + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        s = tl.load(SCALE + (row0 + offs_m) // S, mask=m_mask, other=0.0).to(tl.float32)
        o = o * s[:, None]
    mask = m_mask[:, None] & n_mask[None, :]
    offs = offs_m[:, None] * ld + offs_n[None, :]
    res = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (res + o).to(OUT.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------ autotune configs
# Shared-memory budget of the early prune: A100's 163 KB per block less headroom. One budget for every GPU: the AOT
# specs do not depend on the device, and each is built and checked for sm_90 and sm_80 alike.
_SMEM_BUDGET = 150 * 1024


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# 2-byte operands (fp16/bf16) on the tensor cores. 8 warps = two warpgroups, each owning 64 rows of the tile (a
# 64 x BLOCK_N wgmma): 128 x 256 holds a 128-register accumulator per thread, so its epilogue runs in two halves.
# 64-row tiles on one warpgroup keep enough programs busy at small M (batch-1 inference: M = 196). Not listed: 256 x 128
# on 8 warps and 128 x 128 on 4 (the same 128-register accumulator, their GELU epilogue spilled on sm_90).
# The first is the config the interpreter runs.
_TC16_CONFIGS = [_cfg(128, 128, 64, 8, 3), _cfg(128, 256, 64, 8, 3), _cfg(64, 128, 64, 4, 4), _cfg(64, 64, 64, 4, 4)]
# fp32 operands under tf32: K steps of 32 keep 4-byte stages within the budget.
_TF32_CONFIGS = [_cfg(128, 128, 32, 8, 3), _cfg(128, 256, 32, 8, 3), _cfg(64, 128, 32, 4, 4), _cfg(64, 64, 32, 4, 4)]
# fp32 operands with input_precision="ieee" (torch's default fp32 matmul) run tl.dot on the FMA units: the tensor-core
# tiles spill there, so smaller ones.
_FMA_CONFIGS = [_cfg(64, 128, 32, 8, 3), _cfg(128, 64, 32, 8, 3), _cfg(32, 64, 32, 4, 3)]


def _configs() -> list[triton.Config]:
    """Every GEMM config, conservative first (the interpreter uses only it); the early prune keeps, per call, the list
    for the operand dtype and dot precision, less any config over the shared-memory budget."""
    return _TC16_CONFIGS + _TF32_CONFIGS + _FMA_CONFIGS


def _smem_estimate(cfg: triton.Config, a_bytes: int, b_bytes: int) -> int:
    # num_stages pipelined A [BM, BK] and B [BK, BN] tiles (an estimate; the build test measures the real figure).
    k = cfg.kwargs
    return cfg.num_stages * k["BLOCK_K"] * (k["BLOCK_M"] * a_bytes + k["BLOCK_N"] * b_bytes)


def _route_configs(w_bytes: int, precision: str) -> list[triton.Config]:
    if w_bytes == 2:
        return _TC16_CONFIGS
    return _TF32_CONFIGS if precision == "tf32" else _FMA_CONFIGS


def _gpu_configs(a_bytes: int, w_bytes: int, precision: str) -> list[tuple[int, triton.Config]]:
    """(index in _configs(), config) of the configs a GPU call autotunes over for these operand sizes/precision."""
    mine = _route_configs(w_bytes, precision)
    return [
        (i, c)
        for i, c in enumerate(_configs())
        if any(c is m for m in mine) and _smem_estimate(c, a_bytes, w_bytes) <= _SMEM_BUDGET
    ]


def _prune(configs, named_args, a_arg, w_arg, precision):
    kept = [c for _, c in _gpu_configs(named_args[a_arg].element_size(), named_args[w_arg].element_size(), precision)]
    return keep_configs(configs, kept)


def _prune_fc1(configs, named_args, **kwargs):
    return _prune(configs, named_args, "Y", "W1", kwargs.get("PRECISION", "ieee"))


def _prune_fc2(configs, named_args, **kwargs):
    return _prune(configs, named_args, "H", "W2", kwargs.get("PRECISION", "ieee"))


# ------------------------------------------------------------------------------------------------ kernels
@triton.autotune(
    configs=pick_configs(_configs()), key=["M", "N", "K"], prune_configs_by={"early_config_prune": _prune_fc1}
)
@triton.jit
def _fc1_gelu_kernel(
    Y,  # [M, K] W: LN(x) rows (M = B * S, K = C) from the LN pass; with FOLD x itself
    W1,  # [N, K] W: fc1.weight (timm layout, N = Dc); with FOLD W1g = round_W(fc1.weight * g)
    B1,  # [N] fc1.bias; with FOLD b' = b1 + W1 beta (fp32)
    H,  # [M, N] W out: GELU(y @ W1^T + b1)
    MEAN,  # [M] fp32 row means of x (FOLD only)
    RSTD,  # [M] fp32 row rstd of x (FOLD only)
    CW,  # [N] fp32 sum_k W1g[n, k] (FOLD only)
    M,
    N,
    K,
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" | "tf32" (fp32 operands only)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ACT: tl.constexpr = "gelu",  # "gelu" (exact erf) | "gelu_tanh" (tanh approximation)
    FOLD: tl.constexpr = False,  # LN folded in (layernorm.ln_fold): the epilogue applies mean, rstd and cw
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    row0 = pid_m * BLOCK_M
    col0 = pid_n * BLOCK_N
    acc = _matmul_nt(Y, W1, row0, col0, M, N, K, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)

    # epilogue: + b1, GELU in fp32, one rounding to W; int64 tile base, int32 offsets inside the tile. Tiles 256
    # wide are finished in two 128-column halves: GELU's temporaries beside the whole 128-register accumulator spill.
    h_tile = H + row0.to(tl.int64) * N + col0
    rows_left = M - row0
    mean, rstd = MEAN + row0, RSTD + row0
    if BLOCK_N >= 256:
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        acc0, acc1 = tl.split(halves)
        HALF: tl.constexpr = BLOCK_N // 2
        _bias_gelu_store(acc0, B1 + col0, h_tile, mean, rstd, CW + col0, rows_left, N - col0, N, ACT, FOLD,
                         BLOCK_M, HALF)  # fmt: skip
        _bias_gelu_store(acc1, B1 + col0 + HALF, h_tile + HALF, mean, rstd, CW + col0 + HALF, rows_left,
                         N - col0 - HALF, N, ACT, FOLD, BLOCK_M, HALF)  # fmt: skip
    else:
        _bias_gelu_store(acc, B1 + col0, h_tile, mean, rstd, CW + col0, rows_left, N - col0, N, ACT, FOLD,
                         BLOCK_M, BLOCK_N)  # fmt: skip


@triton.autotune(
    configs=pick_configs(_configs()), key=["M", "N", "K"], prune_configs_by={"early_config_prune": _prune_fc2}
)
@triton.jit
def _fc2_residual_kernel(
    H,  # [M, K] W: hidden activations (K = Dc)
    W2,  # [N, K] W: fc2.weight (N = C)
    B2,  # [N] fc2.bias
    SCALE,  # [B] per-sample branch scale (read only when HAS_SCALE)
    X,  # [M, N] X: residual
    OUT,  # [M, N] promote(X, W) out: x + s[m // S] * (h @ W2^T + b2)
    M,
    N,
    K,
    S,  # tokens per sample: sample of row m is m // S
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    row0 = pid_m * BLOCK_M
    col0 = pid_n * BLOCK_N
    acc = _matmul_nt(H, W2, row0, col0, M, N, K, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)

    # epilogue (fp32): + b2, * s[sample], + residual, one rounding to the output dtype; 256-wide tiles in two halves
    tile = row0.to(tl.int64) * N + col0  # int64 tile base; int32 offsets inside the tile
    if BLOCK_N >= 256:
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        acc0, acc1 = tl.split(halves)
        _bias_residual_store(acc0, B2 + col0, SCALE, X + tile, OUT + tile, row0, M, N - col0, N, S,
                             HAS_SCALE, BLOCK_M, BLOCK_N // 2)  # fmt: skip
        _bias_residual_store(acc1, B2 + col0 + BLOCK_N // 2, SCALE, X + tile + BLOCK_N // 2,
                             OUT + tile + BLOCK_N // 2, row0, M, N - col0 - BLOCK_N // 2, N, S, HAS_SCALE,
                             BLOCK_M, BLOCK_N // 2)  # fmt: skip
    else:
        _bias_residual_store(acc, B2 + col0, SCALE, X + tile, OUT + tile, row0, M, N - col0, N, S,
                             HAS_SCALE, BLOCK_M, BLOCK_N)  # fmt: skip


# ------------------------------------------------------------------------------------------------ launcher
def channel_mix_fwd(args: MixArgs, *, eps: float, allow_tf32: bool, act: str = "gelu") -> Tensor:
    """out = x + s[b] * (GELU(LN(x) @ W1^T + b1) @ W2^T + b2) in three launches (LN pass or LN fold, GEMM1, GEMM2).

    args (fastmixer.mix_args.MixArgs, which has the contract; non-dense tensors are copied dense): x [B, S, C]
    (fp32/fp16/bf16); fc1_weight [Dc, C], fc2_weight [C, Dc] and the biases [Dc] / [C] in one dtype W (x's, or
    another under autocast); ln_* [C] any float dtype; branch_scale [B] or None. act: "gelu" (exact erf) or
    "gelu_tanh". Returns a new contiguous [B, S, C] tensor in promote(x.dtype, W). Transient: y = LN(x) [B*S, C] (or,
    folded, W1g [Dc, C] and fp32 row stats) and the hidden h [B*S, Dc], in W; nothing is kept for backward (it
    recomputes from x).
    """
    _, args = check_launch_args("channel_mix_fwd", "channel", args, eps=eps, act=act)
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = args
    B, S, C = x.shape
    Dc = fc1_weight.shape[0]
    w_dtype = fc1_weight.dtype
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, w_dtype), device=x.device)
    M = B * S
    if M == 0 or C == 0:
        return out
    fold = layernorm.folds(x.dtype, w_dtype, C, M, Dc)
    if fold:  # GEMM1 on x itself: W1g = W1 * g, and mean, rstd, cw, b' = b1 + W1 beta for its epilogue
        mean, rstd, w1, cw, b1 = layernorm.ln_fold(x, ln_weight, ln_bias, fc1_weight, fc1_bias, eps=eps)
        y = x
    else:  # LN pass: y = LN(x) [B, S, C] in W, torch's rounding point
        y = layernorm.layernorm_fwd(x, ln_weight, ln_bias, eps=eps, out_dtype=w_dtype)
        w1, b1 = fc1_weight, fc1_bias
        mean = rstd = cw = fc1_bias  # not read (FOLD False)
    h = torch.empty((M, Dc), dtype=w_dtype, device=x.device)  # [M, Dc] W
    precision = dot_precision(allow_tf32, w_dtype)

    def grid1(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Dc, meta["BLOCK_N"]),)

    def grid2(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(C, meta["BLOCK_N"]),)

    _fc1_gelu_kernel[grid1](
        y, w1, b1, h, mean, rstd, cw, M, Dc, C, PRECISION=precision, ACT=act, FOLD=fold
    )  # fmt: skip
    del y, w1
    _fc2_residual_kernel[grid2](
        h, fc2_weight, fc2_bias, branch_scale if branch_scale is not None else x, x, out, M, C, Dc, S,
        HAS_SCALE=branch_scale is not None, PRECISION=precision,
    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ AOT build specs
def spec_cases() -> list[Case]:
    """The launches the AOT builds cover: every dtype route at every model shape without drop-path (inference, and
    training at drop_path_rate 0), the drop-path epilogue and the tanh-approximate GELU at B/16 bf16."""
    cases = [Case(route, shape) for route in ROUTE_DTYPES for shape in MODEL_SHAPES]
    return [*cases, Case("bf16", MODEL_SHAPES[0], scale=True), Case("bf16", MODEL_SHAPES[0], act="gelu_tanh")]


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (kernel, autotune config the early prune keeps, dtype route, specialisation) at the
    model shapes (kernels/_specs.py): the LN pass (layernorm.py) and both GEMMs. M = B * S, N and K are runtime ints:
    shapes differ only in their divisibility."""
    specs = SpecSet("channel_mix")
    for case in spec_cases():
        route, shape = case.tag, case.shape
        x_dt, _, w_dt, tf32 = ROUTE_DTYPES[case.route]
        x, w, f32 = Ptr(x_dt), Ptr(w_dt), Ptr(torch.float32)
        out = Ptr(torch.promote_types(x_dt, w_dt))
        prec = dot_precision(tf32, w_dt)
        M, C, Dc = shape.M, shape.C, shape.DC
        fold = layernorm.folds(x_dt, w_dt, C, M, Dc)
        if fold:
            layernorm.add_fold_spec(specs, case)
            fc1 = dict(Y=x, W1=w, B1=f32, H=w, MEAN=f32, RSTD=f32, CW=f32, FOLD=True)
        else:
            layernorm.build_specs(specs, [case])
            fc1 = dict(Y=w, W1=w, B1=w, H=w, MEAN=w, RSTD=w, CW=w, FOLD=False)
        fc1.update(M=M, N=Dc, K=C, PRECISION=prec, ACT=case.act)
        fc2 = dict(H=w, W2=w, B2=w, SCALE=Ptr(x_dt), X=x, OUT=out, M=M, N=C, K=Dc, S=shape.S,
                   HAS_SCALE=case.scale, PRECISION=prec)  # fmt: skip
        for i, cfg in _gpu_configs(w_dt.itemsize, w_dt.itemsize, prec):
            specs.add(_fc1_gelu_kernel, route, shape, fc1, cfg, config_index=i)
            specs.add(_fc2_residual_kernel, route, shape, fc2, cfg, config_index=i)
    return specs.specs()
