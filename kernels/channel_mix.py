"""Fused channel-mixing forward: two GEMM launches over the rows of the residual stream.

Rows m = b * S + s of x [B, S, C] viewed as [M, C] (M = B * S; contiguous, so no copy). With W the weights' dtype:

  GEMM1  (M x K=C) @ (K x N=Dc), `_ln_fc1_gelu_kernel`
      prologue:  mu[m], rstd[m] over the C channels of row m, fp32 (per-lane Welford, one pass over K)
                 a[m, k] = ((x[m, k] - mu[m]) * rstd[m] * g[k] + beta[k]) -> W      (torch's LN output, cast to W)
      main loop: acc[m, n] = sum_k a[m, k] * W1[n, k]                                 (fp32 accumulation)
      epilogue:  h[m, n] = GELU(acc + b1[n]) -> W   (exact erf, or tanh under ACT)     h [M, Dc] stored in W
  GEMM2  (M x K=Dc) @ (K x N=C), `_fc2_residual_kernel`
      main loop: acc[m, n] = sum_k h[m, k] * W2[n, k]
      epilogue:  out[m, n] = x[m, n] + s[m // S] * (acc + b2[n])   in fp32, stored in promote(X, W)

Both GEMMs use grouped ("swizzled") program order on a 1-D grid: programs are walked in column-major groups of
GROUP_M row tiles, so the GROUP_M row panels of A and the weight column panel a group touches stay in L2.
Row offsets are int64 (M * Dc exceeds 2^31 at batch 4096 x 196 tokens x 3072).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmixer.mix_args import MixArgs, check_mix_args

from ._common import INTERPRET, dot_precision, gelu, ln_row_stats, pick_configs
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


# ------------------------------------------------------------------------------------------------ autotune configs
# Shared-memory budget for the early prune: A100's 163 KB per block less headroom (configs must also fit sm_80).
_SMEM_BUDGET = 150 * 1024


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# Tensor-core tiles (fp16/bf16 operands, and fp32 operands under tf32). 128 x 256 tiles and 128 x 128 tiles on 4 warps
# spill: the fused prologue/epilogue hold an fp32 tile beside the accumulator. 64 x 64 keeps enough programs busy at
# small M (batch-1 inference: M = 196). The first one is the conservative config the interpreter runs.
_TC_CONFIGS = [_cfg(128, 128, 64, 8, 2), _cfg(128, 128, 64, 8, 3), _cfg(64, 128, 64, 4, 4), _cfg(128, 64, 64, 4, 4),
               _cfg(64, 64, 64, 4, 4)]  # fmt: skip
# fp32 operands with input_precision="ieee" (torch's default fp32 matmul) run tl.dot on the FMA units: the tensor-core
# tiles spill there (sm_80: kilobytes of stack), so smaller ones.
_FMA_CONFIGS = [_cfg(64, 128, 32, 8, 3), _cfg(128, 64, 32, 8, 3), _cfg(32, 64, 32, 4, 3)]


def _configs() -> list[triton.Config]:
    """Every GEMM config, conservative first (the interpreter uses only it); the early prune keeps, per call, the
    tensor-core or the FMA list (at most 5) that fits the shared-memory budget."""
    return _TC_CONFIGS + _FMA_CONFIGS


def _smem_estimate(cfg: triton.Config, a_bytes: int, b_bytes: int) -> int:
    # num_stages pipelined A [BM, BK] and B [BK, BN] tiles (an estimate; the build test measures the real figure).
    k = cfg.kwargs
    return cfg.num_stages * k["BLOCK_K"] * (k["BLOCK_M"] * a_bytes + k["BLOCK_N"] * b_bytes)


def _gpu_configs(a_bytes: int, w_bytes: int, precision: str) -> list[tuple[int, triton.Config]]:
    """(index in _configs(), config) of the configs a GPU call autotunes over for these operand sizes/precision."""
    fma = w_bytes == 4 and precision == "ieee"
    return [
        (i, c)
        for i, c in enumerate(_configs())
        if (c in _FMA_CONFIGS) == fma and _smem_estimate(c, a_bytes, w_bytes) <= _SMEM_BUDGET
    ]


def _prune(configs, named_args, a_arg, w_arg, precision):
    kept = [c for _, c in _gpu_configs(named_args[a_arg].element_size(), named_args[w_arg].element_size(), precision)]
    return [c for c in configs if c in kept] or configs[:1]


def _prune_fc1(configs, named_args, **kwargs):
    return _prune(configs, named_args, "x_ptr", "w1_ptr", kwargs.get("INPUT_PRECISION", "ieee"))


def _prune_fc2(configs, named_args, **kwargs):
    return _prune(configs, named_args, "h_ptr", "w2_ptr", kwargs.get("INPUT_PRECISION", "ieee"))


# ------------------------------------------------------------------------------------------------ kernels
@triton.autotune(
    configs=pick_configs(_configs()), key=["M", "N", "K"], prune_configs_by={"early_config_prune": _prune_fc1}
)
@triton.jit
def _ln_fc1_gelu_kernel(
    x_ptr,  # [M, K] X: residual-stream rows (M = B * S, K = C)
    ln_w_ptr,  # [K] LayerNorm weight g (any float dtype, read as fp32)
    ln_b_ptr,  # [K] LayerNorm bias beta
    w1_ptr,  # [N, K] W: fc1.weight (timm layout, N = Dc)
    b1_ptr,  # [N] fc1.bias
    h_ptr,  # [M, N] W out: GELU(LN(x) @ W1^T + b1)
    M,
    N,
    K,
    eps,
    INPUT_PRECISION: tl.constexpr,  # "ieee" | "tf32" (fp32 operands only)
    DOT_F32: tl.constexpr,  # interpreter + bf16 only: upcast the bf16-rounded operands to fp32 before tl.dot
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ACT: tl.constexpr = "gelu",  # "gelu" (exact erf) | "gelu_tanh" (tanh approximation)
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64) * K  # [BLOCK_M] row starts
    w_dtype = w1_ptr.dtype.element_ty

    # prologue: fp32 mean/rstd of this program's rows over all K channels (re-read from L2 by the main loop)
    mean, rstd = ln_row_stats(x_rows, m_mask, K, eps, BLOCK_M, BLOCK_K)

    mean = mean[:, None]  # [BLOCK_M, 1]
    rstd = rstd[:, None]
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_rows[:, None] + offs_k[None, :]  # A tile [BLOCK_M, BLOCK_K]
    w_ptrs = w1_ptr + offs_n[None, :] * K + offs_k[:, None]  # B tile [BLOCK_K, BLOCK_N] = W1[n, k]^T, in place
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        xk = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        g = tl.load(ln_w_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)  # 0 past K: a[:, k >= K] = 0
        beta = tl.load(ln_b_ptr + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        # LayerNorm fused into the A tile: fp32 -> W (the rounding point of torch's LN output)
        a = ((xk - mean) * rstd * g[None, :] + beta[None, :]).to(w_dtype)
        b = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    # epilogue: + b1, GELU in fp32, one rounding to W
    b1 = tl.load(b1_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    h = gelu(acc + b1[None, :], ACT)
    h_ptrs = h_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.autotune(
    configs=pick_configs(_configs()), key=["M", "N", "K"], prune_configs_by={"early_config_prune": _prune_fc2}
)
@triton.jit
def _fc2_residual_kernel(
    h_ptr,  # [M, K] W: hidden activations (K = Dc)
    w2_ptr,  # [N, K] W: fc2.weight (N = C)
    b2_ptr,  # [N] fc2.bias
    scale_ptr,  # [B] per-sample branch scale (read only when HAS_SCALE)
    x_ptr,  # [M, N] X: residual
    out_ptr,  # [M, N] promote(X, W) out: x + s[m // S] * (h @ W2^T + b2)
    M,
    N,
    K,
    S,  # tokens per sample: sample of row m is m // S
    HAS_SCALE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    rows = offs_m.to(tl.int64)

    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + rows[:, None] * K + offs_k[None, :]  # A tile [BLOCK_M, BLOCK_K]
    b_ptrs = w2_ptr + offs_n[None, :] * K + offs_k[:, None]  # B tile [BLOCK_K, BLOCK_N] = W2[n, k]^T, in place
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    # epilogue (fp32): + b2, * s[sample], + residual, one rounding to the output dtype
    o = acc + tl.load(b2_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        s = tl.load(scale_ptr + rows // S, mask=m_mask, other=0.0).to(tl.float32)
        o = o * s[:, None]
    io_mask = m_mask[:, None] & n_mask[None, :]
    io_offs = rows[:, None] * N + offs_n[None, :]
    res = tl.load(x_ptr + io_offs, mask=io_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + io_offs, (res + o).to(out_ptr.dtype.element_ty), mask=io_mask)


# ------------------------------------------------------------------------------------------------ launcher
def channel_mix_fwd(
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
) -> Tensor:
    """out = x + s[b] * (GELU(LN(x) @ W1^T + b1) @ W2^T + b2) in two launches.

    x [B, S, C] (fp32/fp16/bf16); fc1_weight [Dc, C], fc2_weight [C, Dc] and the biases [Dc] / [C] in one dtype W
    (x's, or another under autocast); ln_* [C] any float dtype; branch_scale [B] or None (fastmixer.mix_args has the
    contract; non-dense tensors are copied dense). act: "gelu" (exact erf) or "gelu_tanh".
    Returns a new contiguous [B, S, C] tensor in promote(x.dtype, W). The hidden h [B*S, Dc] is materialised in W.
    """
    args = MixArgs(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale)
    check_mix_args("channel_mix_fwd", "channel", args, eps=eps, act=act, kernel=True, mixed=True)
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = args.contiguous()
    B, S, C = x.shape
    Dc = fc1_weight.shape[0]
    w_dtype = fc1_weight.dtype
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, w_dtype), device=x.device)
    M = B * S
    if M == 0 or C == 0:
        return out
    h = torch.empty((M, Dc), dtype=w_dtype, device=x.device)  # [M, Dc] W
    precision = dot_precision(allow_tf32, w_dtype)
    dot_f32 = INTERPRET and w_dtype == torch.bfloat16

    def grid1(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Dc, meta["BLOCK_N"]),)

    def grid2(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(C, meta["BLOCK_N"]),)

    _ln_fc1_gelu_kernel[grid1](
        x, ln_weight, ln_bias, fc1_weight, fc1_bias, h, M, Dc, C, float(eps),
        INPUT_PRECISION=precision, DOT_F32=dot_f32, ACT=act,
    )  # fmt: skip
    _fc2_residual_kernel[grid2](
        h, fc2_weight, fc2_bias, branch_scale if branch_scale is not None else x, x, out, M, C, Dc, S,
        HAS_SCALE=branch_scale is not None, INPUT_PRECISION=precision, DOT_F32=dot_f32,
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
    model shapes (kernels/_specs.py). M = B * S, N and K are runtime ints: shapes differ only in their divisibility."""
    specs = SpecSet("channel_mix")
    for case in spec_cases():
        route, shape = case.tag, case.shape
        x_dt, ln_dt, w_dt, tf32 = ROUTE_DTYPES[case.route]
        x, ln, w = Ptr(x_dt), Ptr(ln_dt), Ptr(w_dt)
        out = Ptr(torch.promote_types(x_dt, w_dt))
        prec = dot_precision(tf32, w_dt)
        M, C, Dc = shape.M, shape.C, shape.DC
        fc1 = dict(x_ptr=x, ln_w_ptr=ln, ln_b_ptr=ln, w1_ptr=w, b1_ptr=w, h_ptr=w, M=M, N=Dc, K=C, eps=1e-6,
                   INPUT_PRECISION=prec, DOT_F32=False, ACT=case.act)  # fmt: skip
        fc2 = dict(h_ptr=w, w2_ptr=w, b2_ptr=w, scale_ptr=Ptr(x_dt), x_ptr=x, out_ptr=out, M=M, N=C, K=Dc, S=shape.S,
                   HAS_SCALE=case.scale, INPUT_PRECISION=prec, DOT_F32=False)  # fmt: skip
        for i, cfg in _gpu_configs(x_dt.itemsize, w_dt.itemsize, prec):
            specs.add(_ln_fc1_gelu_kernel, route, shape, fc1, cfg, config_index=i)
        for i, cfg in _gpu_configs(w_dt.itemsize, w_dt.itemsize, prec):
            specs.add(_fc2_residual_kernel, route, shape, fc2, cfg, config_index=i)
    return specs.specs()
