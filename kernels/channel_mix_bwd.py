"""Backward of the fused channel-mixing sub-block, plus the partial-sum reduction shared with token_mix_bwd.

Forward (per row m of M = B*S tokens, s = branch_scale[b] or 1):
    y = LN(x) = xhat * g + beta,  xhat = (x - mean) * rstd      [M, C]   (cast to W before the GEMMs, as torch does)
    a = y W1^T + b1,  h = GELU(a),  out = x + s * (h W2^T + b2)  [M, Dc] / [M, C]
Backward (do = s * dout):
    db2 = sum_m do;  dW2 = do^T h;  dh = do W2;  da = dh * GELU'(a);  db1 = sum_m da;  dW1 = da^T y;  dy = da W1
    dg = sum_m dy * xhat;  dbeta = sum_m dy;  dx = dout + rstd * (dy*g - mean_C(dy*g) - xhat * mean_C(dy*g*xhat))

Launches (channel_mix_bwd): 4 Triton + 3 cuBLAS = 7, nothing else (no host sums, no casts).
  1. layernorm._ln_prep_kernel (Triton, row-wise): recomputes the fp32 row stats from x (ln_tile_stats; nothing
     but x is saved by the forward), writes y = LN(x) in W (read by two consumers below, so it is materialised once,
     transiently), and only when dout is not already do in W (branch scale or autocast): do = s*dout in W with fp32
     per-program column partials of do (db2). Otherwise it reads x alone.
  2. _dual_gemm_kernel (Triton): one K-loop over C feeds two accumulators, a = y W1^T and dh = do W2, for the same
     [BLOCK_M, BLOCK_N] tile of [M, Dc]; the epilogue adds b1, emits h = GELU(a) (for dW2) and da = dh * GELU'(a) in W,
     and per-m-tile fp32 column partials of da (db1). Recomputing a here costs one extra GEMM but saves storing a/h.
  3. dW2 = do^T h, dW1 = da^T y, dy = da W1: plain GEMMs with nothing to fuse into them (their epilogues would only
     store; the LN backward needs whole rows of dy, which no GEMM tile holds), so they go to cuBLAS (torch.mm, which
     follows torch's fp32 matmul precision: the same setting the forward's allow_tf32 came from).
  4. layernorm._ln_bwd_kernel (Triton, row-wise): LayerNorm backward over full rows (ln_row_grad) fused with the
     residual gradient (+ dout) and fp32 per-program column partials of dg and dbeta, and of dout (db2) when
     ln_prep did not take them: it reads dout for the residual anyway.
  5. _reduce_partials_kernel (Triton): the four partial buffers (dg, dbeta, db1, db2) reduced in one launch, each total
     stored in its parameter's dtype (the cast folded into the store). token_mix_bwd uses it too (six buffers).
Determinism: every reduction is either inside one program in a fixed order or a cuBLAS GEMM, and the partial buffers'
layout depends only on the shapes (never on the autotuned config): no atomics, no locks.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastmixer.kernels._common import INTERPRET, dot_precision, gelu_and_grad, mma, pick_configs
from fastmixer.kernels._specs import ROUTE_DTYPES, SMALL_TRAIN_SHAPES, TRAIN_SHAPES, Case, Ptr, SpecSet
from fastmixer.kernels.layernorm import add_row_kernel_specs, ln_backward, ln_prep, row_programs
from fastmixer.mix_args import MixArgs, check_launch_args

# Rows of the dual GEMM tile: fixed (not autotuned) because the db1 partials have one row per m-tile.
DUAL_BLOCK_M = 64
# Every dual GEMM config's BLOCK_K divides this: C % DUAL_K_MULTIPLE == 0 lets the kernel drop its K mask (EVEN_K).
DUAL_K_MULTIPLE = 64


def _even_k(C: int) -> bool:
    """The dual GEMM's EVEN_K constexpr (launcher and AOT spec alike): every config's K steps tile C exactly."""
    return C % DUAL_K_MULTIPLE == 0


# ------------------------------------------------------------------------------------------------ partial sums
# One launch per op reduces all of its fp32 partial buffers (per-program column partials of the row kernels, per-m-tile
# partials of the dual GEMM, split-K partials of the token-mix weight gradients) and stores each total in its
# parameter's dtype: out_i = sum_r part_i[r, :] in a fixed order (row tiles added element-wise in order, then one tree
# over the tile's rows: the same on every run, no atomics), so the gradients are bitwise reproducible.
REDUCE_SEGMENTS = 6  # partial buffers one launch can reduce
# Each program sums a [BLOCK / width, width] tile per step (8 warps, 32 fp32 per thread: 32 KB in flight; a program's
# bandwidth is what it has in flight over the memory latency). Two tile widths: tall partials (thousands of rows, the
# row kernels' [programs, C]) take narrow 128-byte-row tiles, so a segment of C columns still has C / 32 programs;
# short ones (a few split-K rows, [SPLIT, P*Q]) take wide tiles, so few programs cover their many columns and few
# masked-off rows are issued.
_REDUCE_BLOCK, _REDUCE_NARROW, _REDUCE_WIDE, _REDUCE_WARPS = 8192, 32, 512, 8
_REDUCE_WIDE_BELOW = 32  # rows under which a segment takes the wide tile


def _reduce_tile() -> tuple[int, int, int, int]:
    """(BLOCK, NARROW, WIDE, wide below R): the interpreter runs each program in Python, so there few wide programs
    (and segments of 3+ rows still take the narrow tile, so both tile widths run on CPU too)."""
    return (4096, 256, 1024, 3) if INTERPRET else (_REDUCE_BLOCK, _REDUCE_NARROW, _REDUCE_WIDE, _REDUCE_WIDE_BELOW)


@triton.jit(
    do_not_specialize=[f"{a}{i}" for i in range(REDUCE_SEGMENTS) for a in "RNL"],
)
def _reduce_partials_kernel(
    P0, O0, R0, N0, L0,  # segment i: P_i [R_i, N_i] fp32 partials -> O_i [N_i] (any float dtype) = column sums,
    P1, O1, R1, N1, L1,  # in tiles 2**L_i columns wide (NARROW or WIDE)
    P2, O2, R2, N2, L2,
    P3, O3, R3, N3, L3,
    P4, O4, R4, N4, L4,
    P5, O5, R5, N5, L5,
    NSEG: tl.constexpr,  # segments in use (the rest are never reached)
    BLOCK: tl.constexpr,
    NARROW: tl.constexpr,
    WIDE: tl.constexpr,
):  # fmt: skip
    # Programs are laid out segment after segment, cdiv(N_i, 2**L_i) each. R/N/L are never specialised (a split of 1
    # would make R a constexpr), so every segment's source is one runtime-selected pointer and there is one loop.
    pid = tl.program_id(0)
    end = (N0 + (1 << L0) - 1) >> L0
    src = P0
    rows_n = R0
    n = N0
    lw = L0
    local = pid
    if NSEG > 1:
        if pid >= end:
            src = P1
            rows_n = R1
            n = N1
            lw = L1
            local = pid - end
        end += (N1 + (1 << L1) - 1) >> L1
    if NSEG > 2:
        if pid >= end:
            src = P2
            rows_n = R2
            n = N2
            lw = L2
            local = pid - end
        end += (N2 + (1 << L2) - 1) >> L2
    if NSEG > 3:
        if pid >= end:
            src = P3
            rows_n = R3
            n = N3
            lw = L3
            local = pid - end
        end += (N3 + (1 << L3) - 1) >> L3
    if NSEG > 4:
        if pid >= end:
            src = P4
            rows_n = R4
            n = N4
            lw = L4
            local = pid - end
        end += (N4 + (1 << L4) - 1) >> L4
    if NSEG > 5:
        if pid >= end:
            src = P5
            rows_n = R5
            n = N5
            lw = L5
            local = pid - end
    # Element e of the flat tile is (row e >> lw, column e & (width - 1)) of a [BLOCK / width, width] tile.
    width = 1 << lw
    idx = tl.arange(0, BLOCK)
    rin = idx >> lw
    cols = local * width + (idx & (width - 1))
    c_mask = cols < n
    acc = tl.zeros([BLOCK], dtype=tl.float32)  # row tiles added element-wise in order; one tree per column at the end
    for r0 in range(0, rows_n, BLOCK >> lw):
        rows = r0 + rin
        acc += tl.load(src + rows.to(tl.int64) * n + cols, mask=(rows < rows_n) & c_mask, other=0.0)
    # The store's pointer type (the parameter's dtype) differs per segment: one store per segment, the cast folded in.
    first = (N0 + (1 << L0) - 1) >> L0
    _store_segment(O0, acc, local, n, width, pid, 0, first, BLOCK, NARROW, WIDE)
    if NSEG > 1:
        count = (N1 + (1 << L1) - 1) >> L1
        _store_segment(O1, acc, local, n, width, pid, first, count, BLOCK, NARROW, WIDE)
        first += count
    if NSEG > 2:
        count = (N2 + (1 << L2) - 1) >> L2
        _store_segment(O2, acc, local, n, width, pid, first, count, BLOCK, NARROW, WIDE)
        first += count
    if NSEG > 3:
        count = (N3 + (1 << L3) - 1) >> L3
        _store_segment(O3, acc, local, n, width, pid, first, count, BLOCK, NARROW, WIDE)
        first += count
    if NSEG > 4:
        count = (N4 + (1 << L4) - 1) >> L4
        _store_segment(O4, acc, local, n, width, pid, first, count, BLOCK, NARROW, WIDE)
        first += count
    if NSEG > 5:
        count = (N5 + (1 << L5) - 1) >> L5
        _store_segment(O5, acc, local, n, width, pid, first, count, BLOCK, NARROW, WIDE)


@triton.jit
def _store_segment(OUT, acc, local, n, width, pid, first, programs, BLOCK, NARROW, WIDE):
    if (pid >= first) & (pid < first + programs):
        if width == NARROW:
            _store_columns(OUT, acc, local, n, BLOCK, NARROW)
        else:
            _store_columns(OUT, acc, local, n, BLOCK, WIDE)


@triton.jit
def _store_columns(OUT, acc, local, n, BLOCK: tl.constexpr, W: tl.constexpr):
    # acc [BLOCK] is a row-major [BLOCK / W, W] tile: its column sums are this program's W totals.
    total = tl.sum(tl.reshape(acc, [BLOCK // W, W]), axis=0)
    cols = local * W + tl.arange(0, W)
    tl.store(OUT + cols, total.to(OUT.dtype.element_ty), mask=cols < n)


def _reduce_launch(segments: list[tuple[Any, Any, int, int]]) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Arguments and grid of _reduce_partials_kernel for [(partials, out, R, N), ...] (tensors, or Ptr examples for the
    AOT specs); unused segments repeat the first one (never reached)."""
    block, narrow, wide, wide_below = _reduce_tile()
    args: dict[str, Any] = {}
    programs = 0
    for i in range(REDUCE_SEGMENTS):
        part, out, r, n = segments[i] if i < len(segments) else segments[0]
        width = wide if r < wide_below else narrow
        args.update({f"P{i}": part, f"O{i}": out, f"R{i}": r, f"N{i}": n, f"L{i}": width.bit_length() - 1})
        programs += triton.cdiv(n, width) if i < len(segments) else 0
    args.update(NSEG=len(segments), BLOCK=block, NARROW=narrow, WIDE=wide, num_warps=_REDUCE_WARPS)
    return args, (programs,)


def reduce_partials(parts: list[tuple[Tensor, Tensor]]) -> None:
    """One launch: for each (partials [R, ...] fp32 dense, out [...] any float dtype, N = out.numel() columns),
    out = partials.sum(0) in out's dtype, summed in a fixed order (bitwise reproducible)."""
    if not 1 <= len(parts) <= REDUCE_SEGMENTS:
        raise ValueError(f"reduce_partials takes 1..{REDUCE_SEGMENTS} (partials, out) pairs, got {len(parts)}")
    segments = []
    for i, (part, out) in enumerate(parts):
        n = out.numel()
        if part.dtype != torch.float32 or part.numel() != part.shape[0] * n or not part.is_contiguous():
            raise ValueError(f"partials {i} must be dense fp32 [R, {n}], got {part.dtype} {tuple(part.shape)}")
        if not out.is_contiguous():
            raise ValueError(f"out {i} must be contiguous")
        segments.append((part, out, part.shape[0], n))
    args, grid = _reduce_launch(segments)
    _reduce_partials_kernel[grid](**args)


# ------------------------------------------------------------------------------------------------ dual GEMM
def _dual_configs(fp32: bool) -> list[triton.Config]:
    """The first config is the conservative one (the interpreter runs only it); BLOCK_M is fixed (DUAL_BLOCK_M). Two
    fp32 accumulators per tile make this register-bound: fp32 operands need 8 warps (or BLOCK_K=16) to stay
    spill-free on sm_80; every entry builds without spills and within shared memory for both sm_80 and sm_90.
    16-bit operands: BLOCK_K=64 halves the per-step overhead (addresses, pipeline bookkeeping) per HGMMA; on sm_90
    bf16 a step issues 159 instructions against 8 HGMMA.64x64x16 per warpgroup (issue/MMA 0.62 vs 0.96-1.02 at
    BLOCK_K=32). Not listed: 128-row tiles on 8 warps (HGMMA.64x128, issue/MMA 0.40-0.52 on sm_90) spill on sm_80
    in the main loop, and 64 x 128 x 64 on 4 warps (issue/MMA 0.44) needs 248-255 registers."""
    if fp32:
        return [
            triton.Config({"BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=2),
            triton.Config({"BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_N": 64, "BLOCK_K": 16}, num_warps=4, num_stages=3),
        ]
    return [
        triton.Config({"BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    ]


@triton.jit
def _dual_gemm_kernel(
    Y,  # [M, C] LN(x) in W
    DO,  # [M, C] s * dout in W
    W1,  # [D, C] fc1 weight
    B1,  # [D] fc1 bias
    W2,  # [C, D] fc2 weight
    H,  # out [M, D] GELU(a) in W
    DA,  # out [M, D] dh * GELU'(a) in W
    DB1_PART,  # out [cdiv(M, BLOCK_M), D] fp32 column partials of da
    M,
    C,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,  # C % BLOCK_K == 0 (C a multiple of DUAL_K_MULTIPLE): the K loop loads without a K mask
    PRECISION: tl.constexpr,
    ACT: tl.constexpr = "gelu",  # "gelu" (exact erf) | "gelu_tanh" (tanh approximation)
):
    # a = y W1^T and dh = do W2 share the K loop over C; grouped tile order keeps y/do rows and W columns in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(D, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_rows
    pid_n = (pid % group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < D
    # Out-of-range rows of y/do and W1 read row 0 instead of being masked (their contiguous axis is K, which alone needs
    # a mask); they are never stored. W2's contiguous axis is N: clamping offs_n there would hide its contiguity (16-bit
    # scalar loads through registers, and a wgmma wait every step), so its columns are masked instead (a mask constant
    # over 16 columns when D % 16 == 0: vector cp.async).
    y_ptrs = Y + tl.where(m_mask, offs_m, 0).to(tl.int64)[:, None] * C + offs_k[None, :]  # [BM, BK]
    do_ptrs = DO + tl.where(m_mask, offs_m, 0).to(tl.int64)[:, None] * C + offs_k[None, :]  # [BM, BK]
    w1_ptrs = W1 + tl.where(n_mask, offs_n, 0)[None, :] * C + offs_k[:, None]  # [BK, BN] = W1[offs_n, k]^T
    w2_ptrs = W2 + offs_n[None, :] + offs_k[:, None] * D  # [BK, BN] = W2[k, offs_n]
    acc_a = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_dh = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        if EVEN_K:  # no per-step K mask: ~30 fewer instructions per step (sm_90, bf16, BLOCK_K=64)
            y = tl.load(y_ptrs)
            do = tl.load(do_ptrs)
            w1t = tl.load(w1_ptrs)
            w2 = tl.load(w2_ptrs, mask=n_mask[None, :], other=0.0)
        else:
            k_mask = (k0 + offs_k) < C
            y = tl.load(y_ptrs, mask=k_mask[None, :], other=0.0)
            do = tl.load(do_ptrs, mask=k_mask[None, :], other=0.0)
            w1t = tl.load(w1_ptrs, mask=k_mask[:, None], other=0.0)
            w2 = tl.load(w2_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc_a = mma(y, w1t, acc_a, PRECISION)
        acc_dh = mma(do, w2, acc_dh, PRECISION)
        y_ptrs += BLOCK_K
        do_ptrs += BLOCK_K
        w1_ptrs += BLOCK_K
        w2_ptrs += BLOCK_K * D
    a = acc_a + tl.load(B1 + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    h, dgelu = gelu_and_grad(a, ACT)
    da = tl.where(out_mask, acc_dh * dgelu, 0.0)
    off = offs_m.to(tl.int64)[:, None] * D + offs_n[None, :]
    tl.store(H + off, h.to(H.dtype.element_ty), mask=out_mask)
    tl.store(DA + off, da.to(DA.dtype.element_ty), mask=out_mask)
    tl.store(DB1_PART + pid_m.to(tl.int64) * D + offs_n, tl.sum(da, axis=0), mask=n_mask)


# One autotuner per operand width (fp32 vs 16-bit): their config lists differ.
_dual_gemm = {
    fp32: triton.autotune(configs=pick_configs(_dual_configs(fp32)), key=["M", "C", "D"])(_dual_gemm_kernel)
    for fp32 in (False, True)
}


# ------------------------------------------------------------------------------------------------ launcher
def channel_mix_bwd(
    dout: Tensor, args: MixArgs, *, eps: float, allow_tf32: bool, act: str = "gelu"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of channel_mix: dout [B, S, C]; args (fastmixer.mix_args.MixArgs): x [B, S, C], fc1_weight [Dc, C],
    fc2_weight [C, Dc], branch_scale [B] or None; act "gelu" | "gelu_tanh" -> (dx, d ln_weight, d ln_bias,
    d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias), each in its input's dtype."""
    dout, args = check_launch_args("channel_mix_bwd", "channel", args, eps=eps, act=act, dout=dout)
    x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale = args
    B, S, C = x.shape
    M, D = B * S, fc1_weight.shape[0]
    w_dtype = fc1_weight.dtype
    y, do, mean, rstd, db2_part = ln_prep(x, dout, branch_scale, ln_weight, ln_bias, w_dtype, eps=eps, col_sum=True)
    y, do = y.view(M, C), do.view(M, C)
    h = torch.empty((M, D), device=x.device, dtype=w_dtype)
    da = torch.empty((M, D), device=x.device, dtype=w_dtype)
    db1_part = torch.empty((triton.cdiv(M, DUAL_BLOCK_M), D), device=x.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(M, DUAL_BLOCK_M) * triton.cdiv(D, meta["BLOCK_N"]),)
    _dual_gemm[w_dtype == torch.float32][grid](
        y,
        do,
        fc1_weight,
        fc1_bias,
        fc2_weight,
        h,
        da,
        db1_part,
        M,
        C,
        D,
        BLOCK_M=DUAL_BLOCK_M,
        GROUP_M=8,
        EVEN_K=_even_k(C),
        PRECISION=dot_precision(allow_tf32, w_dtype),
        ACT=act,
    )
    dw2 = torch.mm(do.t(), h)  # [C, Dc]
    dw1 = torch.mm(da.t(), y)  # [Dc, C]
    dy = torch.mm(da, fc1_weight)  # [M, C] in W
    # db2's partials: from ln_prep where it writes do, else (do = dout) from the LN backward, which reads dout anyway
    dx, dg_part, dbeta_part, dout_part = ln_backward(
        x, dy.view(B, S, C), dout, ln_weight, mean, rstd, dout_sum=db2_part is None
    )
    db2_part = dout_part if db2_part is None else db2_part
    dg, dbeta, db1, db2 = (torch.empty_like(p) for p in (ln_weight, ln_bias, fc1_bias, fc2_bias))
    # the long segments (thousands of rows of row-kernel partials) first: their programs start first
    reduce_partials([(dg_part, dg), (dbeta_part, dbeta), (db2_part, db2), (db1_part, db1)])
    return dx, dg, dbeta, dw1, db1, dw2, db2  # dw1 / dw2: cuBLAS output, already in W


# ------------------------------------------------------------------------------------------------ AOT build specs
def spec_cases() -> list[Case]:
    """The backward launches the AOT builds cover: every dtype route at the training shapes (batch 256) without
    drop-path, with it for bf16 and autocast, bf16 and autocast at batch 1, and the tanh-approximate GELU at B/16
    bf16."""
    cases = [Case(route, shape) for route in ROUTE_DTYPES for shape in TRAIN_SHAPES]
    cases += [Case(route, TRAIN_SHAPES[0], scale=True) for route in ("bf16", "fp32+bf16")]
    cases += [Case(route, shape) for route in ("bf16", "fp32+bf16") for shape in SMALL_TRAIN_SHAPES]
    return [*cases, Case("bf16", TRAIN_SHAPES[0], act="gelu_tanh")]


def add_reduce_spec(specs: SpecSet, case: Case, segments: list[tuple[int, int, torch.dtype]]) -> None:
    """Spec of the one reduce_partials launch of a backward op: segments (R, N, out dtype) as the op passes them."""
    args, _ = _reduce_launch([(Ptr(torch.float32), Ptr(dt), r, n) for r, n, dt in segments])
    specs.add(_reduce_partials_kernel, case.tag, case.shape, args)


def gpu_build_specs() -> list[dict]:
    """One spec per distinct (kernel, autotune config, dtype route, specialisation) at the shapes of spec_cases()
    (kernels/_specs.py derives signature and divisibility as the JIT does)."""
    specs = SpecSet("channel_mix_bwd")
    for case in spec_cases():
        route, shape = case.tag, case.shape
        _, _, w_dt, tf32 = ROUTE_DTYPES[case.route]
        add_row_kernel_specs(specs, case, col_sum=True, dy_dtype=w_dt)
        _, ln_dt, _, _ = ROUTE_DTYPES[case.route]
        rows, C, D = row_programs(shape), shape.C, shape.DC
        add_reduce_spec(specs, case, [(rows, C, ln_dt), (rows, C, ln_dt), (rows, C, w_dt),
                                      (triton.cdiv(shape.M, DUAL_BLOCK_M), D, w_dt)])  # fmt: skip
        w = Ptr(w_dt)
        dual = dict(Y=w, DO=w, W1=w, B1=w, W2=w, H=w, DA=w, DB1_PART=Ptr(torch.float32), M=shape.M, C=shape.C,
                    D=shape.DC, BLOCK_M=DUAL_BLOCK_M, GROUP_M=8, EVEN_K=_even_k(shape.C),
                    PRECISION=dot_precision(tf32, w_dt), ACT=case.act)  # fmt: skip
        for i, cfg in enumerate(_dual_configs(w_dt == torch.float32)):
            specs.add(_dual_gemm_kernel, route, shape, dual, cfg, config_index=i)
    return specs.specs()
