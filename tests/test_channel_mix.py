"""Fused channel-mixing forward (kernels/channel_mix.py) against fastmixer.reference.channel_mix_ref.

Runs the compiled kernels on a GPU, else the Triton interpreter on CPU (tests/conftest.py), at tiny awkward shapes:
S = 36/49, C = 40/72/100 (not powers of two, K tails masked), odd Dc, batch 1 and 3, plus one call at Mixer-B/16 size.
"""

import contextlib
import math

import pytest
import torch
import triton
from conftest import DEVICE
from helpers import assert_three_way

import fastmixer
from fastmixer import ops
from fastmixer.kernels import channel_mix as cm
from fastmixer.kernels import layernorm
from fastmixer.mix_args import MixArgs
from fastmixer.reference import channel_mix_ref

EPS = 1e-6
# fp32 bound: operands are the same fp32 values, so only the summation order differs (K <= 3072, |out| ~ 1-10).
FP32_TOL = dict(rtol=1e-5, atol=1e-5)


def make_inputs(
    B: int, S: int, C: int, Dc: int, *, x_shift: float = 0.0, tiny_tokens: bool = True, seed: int = 0
) -> list[torch.Tensor]:
    """(x, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias) in fp32 on DEVICE. x = x_shift + 2 * noise;
    with tiny_tokens every 7th token has std 2e-3 instead, so its LayerNorm variance is comparable to eps (a lost or
    wrong eps shows)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    noise = randn(B, S, C)
    if tiny_tokens:
        noise[:, ::7] *= 1e-3
    x = x_shift + 2 * noise
    params = [
        1 + 0.1 * randn(C),
        0.1 * randn(C),
        randn(Dc, C) / math.sqrt(C),
        0.1 * randn(Dc),
        randn(C, Dc) / math.sqrt(Dc),
        0.1 * randn(C),
    ]
    return [t.to(DEVICE) for t in (x, *params)]


def branch_scale(B: int) -> torch.Tensor:
    # per-sample drop-path factors: kept samples scaled by 1/keep_prob, dropped ones 0
    return torch.tensor([1.25, 0.0, 0.8] * B, device=DEVICE)[:B]


def run(args, s=None, allow_tf32=False):
    return cm.channel_mix_fwd(MixArgs(*args, s), eps=EPS, allow_tf32=allow_tf32)


@pytest.mark.parametrize(
    "B,S,C,Dc,scaled",
    [
        (1, 36, 40, 75, False),
        (1, 36, 40, 75, True),
        (3, 49, 72, 150, True),
        (3, 49, 100, 203, False),
        (23, 49, 40, 150, True),  # M = 1127: 9 row tiles of 128, a full GROUP_M = 8 group plus a partial one
    ],
)
def test_fp32_matches_reference(B, S, C, Dc, scaled):
    args = make_inputs(B, S, C, Dc)
    s = branch_scale(B) if scaled else None
    out = run(args, s)
    ref = channel_mix_ref(*args, eps=EPS, branch_scale=s)
    assert out.shape == (B, S, C) and out.dtype == torch.float32 and out.is_contiguous()
    assert (ref - args[0]).abs().max() > 0.1  # the MLP branch is not negligible
    torch.testing.assert_close(out, ref, **FP32_TOL)


def test_fp32_layernorm_stats_stable_under_offset():
    """x = 300 + 2 * noise: E[x^2] - E[x]^2 in fp32 would carry an error ~ 9e4 * 2^-24 ~ 5e-3 on a variance of 4
    (1e-3 relative on the output); the LN pass's shifted Welford statistics (kernels/layernorm.py) stay within the fp32
    reference's own error."""
    args = make_inputs(3, 49, 100, 75, x_shift=300.0, tiny_tokens=False)
    out = run(args)
    ref = channel_mix_ref(*args, eps=EPS)
    # the residual (~300) dominates |out|: compare the branch out - x, whose scale is ~1
    torch.testing.assert_close(out - args[0], ref - args[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,S,C,Dc", [(1, 36, 40, 75), (3, 49, 100, 203), (3, 49, 100, 60)])
def test_low_precision_three_way(dtype, B, S, C, Dc):
    """fp16/bf16 model (x and every parameter in `dtype`) by the three-way rule. The fp32 reference runs on the same
    rounded values upcast to fp32; "torch same dtype" is channel_mix_ref on the `dtype` tensors.

    bf16 under the Triton interpreter: tl.dot on bf16 operands is wrong there (triton issue 11584), so the kernels'
    dot helper (_common.mma) upcasts the already bf16-rounded dot operands (the LN output and GELU output after their
    casts to bf16, and the weights) to fp32 right before tl.dot, under the interpreter only. That is numerically what
    the GPU's bf16 MMA does (exact products of bf16 values, fp32 accumulation), so this test still covers the bf16
    loads, the stores, the casts and every rounding point; only the MMA instruction itself is not exercised off-GPU.
    The first two shapes take the LN pass (few rows per hidden unit), the third the LN fold in bf16 (M = 147 >= 2 *
    Dc; fp16 keeps the LN pass).
    """
    assert layernorm.folds(dtype, dtype, C, B * S, Dc) == (Dc == 60 and dtype == torch.bfloat16)
    args = [t.to(dtype) for t in make_inputs(B, S, C, Dc)]
    s = branch_scale(B)
    out = run(args, s)
    assert out.dtype == dtype and out.shape == (B, S, C)
    ref32 = channel_mix_ref(*(t.float() for t in args), eps=EPS, branch_scale=s)
    assert_three_way(out, ref32, channel_mix_ref(*args, eps=EPS, branch_scale=s), "op_abs_1e-4", differs=True)


@pytest.mark.parametrize("w_dtype", [torch.float16, torch.bfloat16])
def test_mixed_fp32_x_low_precision_weights(w_dtype):
    """The autocast case: fp32 residual stream and LN parameters, fc weights/biases in fp16/bf16. Output is fp32;
    torch-same-dtype is channel_mix_ref on those tensors (LN in fp32, cast to W, GEMMs + GELU in W, fp32 residual)."""
    B, S, C, Dc = 3, 49, 72, 150
    x, ln_w, ln_b, *fc = make_inputs(B, S, C, Dc)
    fc = [t.to(w_dtype) for t in fc]
    s = branch_scale(B)
    out = run([x, ln_w, ln_b, *fc], s)
    assert out.dtype == torch.float32
    ref32 = channel_mix_ref(x, ln_w, ln_b, *(t.float() for t in fc), eps=EPS, branch_scale=s)
    same = channel_mix_ref(x, ln_w, ln_b, *fc, eps=EPS, branch_scale=s)
    assert_three_way(out, ref32, same, "op_abs_1e-4", differs=True)


@pytest.mark.parametrize(
    "x_dtype,w_dtype",
    [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
    ids=["fp16-ln-pass", "bf16-fold", "autocast-ln-pass"],
)
def test_low_precision_large_mean_three_way(x_dtype, w_dtype):
    """Rows whose mean (300) is large against their spread (2). bf16 models fold LN into GEMM1 (x itself is the
    MMA operand, already in W; rstd * (x W1g^T - mean * cw) in the fp32 epilogue: the subtraction cancels in fp32,
    not in W). Under autocast (fp32 x, bf16 weights) the LN pass normalises in fp32 before the one rounding to W,
    where feeding x itself to the MMA in W would lose ~|mean| / spread times more. Three-way rule on both routes."""
    B, S, C, Dc = 3, 49, 72, 64  # M = 147 >= 2 * Dc: the bf16 model takes the fold, fp16 the LN pass
    assert layernorm.folds(x_dtype, w_dtype, C, B * S, Dc) == (x_dtype == w_dtype == torch.bfloat16)
    x, ln_w, ln_b, *fc = make_inputs(B, S, C, Dc, x_shift=300.0, tiny_tokens=False)
    x, ln_w, ln_b = x.to(x_dtype), ln_w.to(x_dtype), ln_b.to(x_dtype)
    fc = [t.to(w_dtype) for t in fc]
    out = run([x, ln_w, ln_b, *fc])
    ref32 = channel_mix_ref(x.float(), ln_w.float(), ln_b.float(), *(t.float() for t in fc), eps=EPS)
    same = channel_mix_ref(x, ln_w, ln_b, *fc, eps=EPS)
    # the residual (~300) dominates |out| and its rounding is the same in both: compare the branches out - x
    xf = x.float()
    assert_three_way(out.float() - xf, ref32 - xf, same.float() - xf, "op_abs_1e-4", differs=True)


# ------------------------------------------------------------------------------------------------ through fastmixer.ops
def _public(args, **kwargs):
    x, ln_w, ln_b, w1, b1, w2, b2 = args
    return ops.channel_mix(x, ln_w, ln_b, w1, b1, w2, b2, **kwargs)


def test_public_op_noncontiguous_matches_reference_backend(triton_backend):
    B, S, C, Dc = 3, 36, 72, 75
    args = make_inputs(B, S, C, Dc)
    x = args[0].transpose(0, 1).contiguous().transpose(0, 1)  # [B, S, C] view of an [S, B, C] buffer
    assert not x.is_contiguous()
    args[0] = x
    s = branch_scale(B)
    out = _public(args, eps=1e-5, branch_scale=s)
    with fastmixer.use_backend("reference"):
        ref = _public(args, eps=1e-5, branch_scale=s)
    assert out.is_contiguous() and out.shape == (B, S, C)
    torch.testing.assert_close(out, ref, **FP32_TOL)


def test_public_op_autocast_bf16(triton_backend):
    """Under autocast the op casts the fc weights to bf16 and keeps the fp32 residual: three-way rule against the
    reference backend under the same autocast."""
    args = make_inputs(3, 49, 40, 75)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = _public(args, eps=EPS)
        with fastmixer.use_backend("reference"):
            ref_autocast = _public(args, eps=EPS)
    assert out.dtype == torch.float32
    assert_three_way(out, channel_mix_ref(*args, eps=EPS), ref_autocast, "op_abs_1e-4", differs=True)


def test_public_op_bf16_fold_trains(triton_backend):
    """A bf16 model at a shape that takes the LN fold (M = 147 >= 2 * Dc = 120) through the public op: forward and the
    gradients (whose backward recomputes LN from x, unchanged by the fold) by the three-way rule against fp32 autograd
    of the reference and the reference backend in bf16."""
    B, S, C, Dc = 3, 49, 40, 60
    assert layernorm.folds(torch.bfloat16, torch.bfloat16, C, B * S, Dc)
    base = make_inputs(B, S, C, Dc)
    dout = torch.randn(B, S, C, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    results = []
    for dtype, backend in ((torch.bfloat16, None), (torch.float32, "reference"), (torch.bfloat16, "reference")):
        args = [t.to(dtype).detach().requires_grad_() for t in base]
        with fastmixer.use_backend(backend) if backend else contextlib.nullcontext():
            out = _public(args, eps=EPS)
            out.backward(dout.to(dtype))
        results.append([out.detach(), args[0].grad, args[3].grad])  # out, dx, d fc1_weight
    for ours, ref32, same in zip(*results):
        assert_three_way(ours, ref32, same, "op_abs_1e-4", differs=True)


@pytest.mark.slow
def test_b16_block_shape_fp32():
    """One call at Mixer-B/16's channel MLP (S=196, C=768, Dc=3072): long K loops, full tiles, GELU on a real spread."""
    args = make_inputs(1, 196, 768, 3072)
    out = run(args)
    torch.testing.assert_close(out, channel_mix_ref(*args, eps=EPS), **FP32_TOL)


@pytest.mark.parametrize("scaled", [False, True])
def test_opcheck(scaled):
    args = [t.detach().requires_grad_(True) for t in make_inputs(2, 9, 12, 20)]
    s = branch_scale(2) if scaled else None
    torch.library.opcheck(torch.ops.fastmixer.channel_mix, (*args, s, EPS, False))


# ------------------------------------------------------------------------------------------------ launcher contract
def test_launcher_rejects_what_it_cannot_run():
    # The launcher runs the shared contract (fastmixer.mix_args) with the kernels' dtypes; tests/test_dtype_contract.py
    # covers every refusal at the public ops on both backends.
    x, ln_w, ln_b, w1, b1, w2, b2 = make_inputs(1, 36, 40, 75)
    with pytest.raises(ValueError, match="fc2_weight must have shape"):
        run([x, ln_w, ln_b, w1, b1, w2.t().contiguous(), b2])
    with pytest.raises(TypeError, match="fc2_weight must have fc1_weight's dtype"):
        run([x, ln_w, ln_b, w1, b1, w2.half(), b2])
    with pytest.raises(ValueError, match="fc1_bias must have shape"):
        run([x, ln_w, ln_b, w1, b1[:-1], w2, b2])
    with pytest.raises(ValueError, match="branch_scale must have shape"):
        run([x, ln_w, ln_b, w1, b1, w2, b2], torch.ones(2, device=DEVICE))
    with pytest.raises(TypeError, match=r"x must be float32/float16/bfloat16 .*reference path"):
        run([x.double(), ln_w, ln_b, w1, b1, w2, b2])
    with pytest.raises(ValueError, match="act must be one of"):
        cm.channel_mix_fwd(MixArgs(x, ln_w, ln_b, w1, b1, w2, b2), eps=EPS, allow_tf32=False, act="relu")


def test_launcher_takes_strided_inputs():
    """Non-dense x, weights and LayerNorm parameters are copied dense, not refused."""
    args = make_inputs(1, 36, 40, 75)
    strided = [args[0].transpose(1, 2).contiguous().transpose(1, 2), *args[1:]]
    strided[3] = args[3].t().contiguous().t()  # fc1_weight [Dc, C] with C strided
    strided[1] = torch.stack([args[1], args[1]], 1)[:, 0]
    assert not any(t.is_contiguous() for t in (strided[0], strided[1], strided[3]))
    torch.testing.assert_close(run(strided), channel_mix_ref(*args, eps=EPS), **FP32_TOL)


def test_empty_batch_returns_empty():
    args = make_inputs(1, 36, 40, 75)
    args[0] = args[0][:0]
    assert run(args).shape == (0, 36, 40)


# ------------------------------------------------------------------------------------------------ configs and specs
class _Arg:
    def __init__(self, dtype):
        self.size = torch.empty(0, dtype=dtype).element_size()

    def element_size(self):
        return self.size


@pytest.mark.parametrize(
    "w_dtype,precision,expected",
    [
        (torch.bfloat16, "ieee", cm._TC16_CONFIGS),
        (torch.float16, "ieee", cm._TC16_CONFIGS),
        (torch.float32, "ieee", cm._FMA_CONFIGS),  # FMA dots: the tensor-core tiles spill
        (torch.float32, "tf32", cm._TF32_CONFIGS),  # K steps of 32: 4-byte stages within the budget
    ],
)
def test_early_prune_picks_the_configs_for_the_dot(w_dtype, precision, expected):
    named = {"Y": _Arg(w_dtype), "W1": _Arg(w_dtype), "H": _Arg(w_dtype), "W2": _Arg(w_dtype)}
    for prune in (cm._prune_fc1, cm._prune_fc2):
        kept = prune(cm._configs(), named, PRECISION=precision)
        assert kept == expected
        # every kept config fits the budget, which is below A100's 163 KB per block (the specs build for sm_80 too)
        assert all(cm._smem_estimate(c, w_dtype.itemsize, w_dtype.itemsize) <= cm._SMEM_BUDGET for c in kept)
    assert cm._SMEM_BUDGET < 163 * 1024


def test_early_prune_drops_configs_over_the_budget(monkeypatch):
    # a 256 x 128 fp32 tile with BLOCK_K 64 needs 3 x 64 x (256 + 128) x 4 B = 288 KB: listed, but never kept
    big = cm._cfg(256, 128, 64, 8, 3)
    assert cm._smem_estimate(big, 4, 4) > cm._SMEM_BUDGET
    monkeypatch.setattr(cm, "_TF32_CONFIGS", [*cm._TF32_CONFIGS, big])
    kept = [c for _, c in cm._gpu_configs(4, 4, "tf32")]
    assert len(kept) == len(cm._TF32_CONFIGS) - 1 and all(c is not big for c in kept)


@pytest.mark.parametrize("block_n", [128, 256])
def test_gemm_kernels_every_epilogue_width(block_n):
    """Both GEMM kernels run directly (past the autotuner, which the interpreter limits to its first config) at
    BLOCK_N = 128 and 256: a 256-wide tile finishes its epilogue in two 128-column halves (tl.split), the second
    partly masked here (N = 300, 200), and tiles past M repeat the last row without storing it (M = 147)."""
    M, C, Dc, S = 147, 200, 300, 49
    x, _, _, w1, b1, w2, b2 = make_inputs(3, S, C, Dc)
    y = torch.randn(M, C, device=DEVICE)
    s = branch_scale(3)
    meta = dict(BLOCK_M=64, BLOCK_N=block_n, BLOCK_K=32, GROUP_M=8, PRECISION="ieee")
    h = torch.empty(M, Dc, device=DEVICE)
    grid1 = (triton.cdiv(M, 64) * triton.cdiv(Dc, block_n),)
    cm._fc1_gelu_kernel.fn[grid1](y, w1, b1, h, b1, b1, b1, M, Dc, C, **meta, ACT="gelu")
    torch.testing.assert_close(h, torch.nn.functional.gelu(y @ w1.T + b1), **FP32_TOL)
    # FOLD: the same GEMM on rows with mean 3 and their LN folded in (W1g = W1 * g; mean, rstd, cw, b' in the epilogue)
    g = torch.Generator().manual_seed(5)
    xr, lw, lb = (
        (3 + torch.randn(M, C, generator=g)).to(DEVICE),
        *(torch.randn(C, generator=g).to(DEVICE) for _ in "gb"),
    )
    mean, var = xr.mean(-1), xr.var(-1, unbiased=False)
    rstd = (var + 1e-6).rsqrt()
    w1g = w1 * lw
    cm._fc1_gelu_kernel.fn[grid1](xr, w1g, b1 + w1 @ lb, h, mean, rstd, w1g.sum(1), M, Dc, C, **meta, ACT="gelu",
                                  FOLD=True)  # fmt: skip
    ln = torch.nn.functional.layer_norm(xr, (C,), lw, lb, 1e-6)
    torch.testing.assert_close(h, torch.nn.functional.gelu(ln @ w1.T + b1), rtol=1e-4, atol=1e-4)
    out = torch.empty(M, C, device=DEVICE)
    grid2 = (triton.cdiv(M, 64) * triton.cdiv(C, block_n),)
    cm._fc2_residual_kernel.fn[grid2](h, w2, b2, s, x, out, M, C, Dc, S, HAS_SCALE=True, **meta)
    ref = x.view(M, C) + s.repeat_interleave(S)[:, None] * (h @ w2.T + b2)
    torch.testing.assert_close(out, ref, **FP32_TOL)
