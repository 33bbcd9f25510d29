"""Fused final LayerNorm + token mean (kernels/norm_pool.py) against fastmixer.reference.norm_pool_ref.

Compiled kernel on a GPU, else the Triton interpreter on CPU, at awkward shapes: S = 36/49 (token chunks with a masked
tail), C = 40/72/100/200 (channel tiles with masked tails; C = 200 also spans two chunks of the statistics pass).
"""

import pytest
import torch
from conftest import DEVICE
from helpers import assert_three_way

import fastmixer
from fastmixer import ops
from fastmixer.kernels import norm_pool as npool
from fastmixer.reference import norm_pool_ref

EPS = 1e-6
# fp32 bound: the same fp32 inputs, but the tokens with std 1e-3 have rstd ~ 700, which amplifies the fp32 rounding of
# their mean (half an ulp of 0.5 ~ 3e-8) to ~2e-5 in xhat; averaged over S tokens both our result and torch's fp32 one
# sit ~1e-6 from the fp64 value (measured), in different directions. Hence atol 5e-6 against the fp32 reference, and
# test_fp32_no_worse_than_torch_fp32 checks the error against fp64 directly.
FP32_TOL = dict(rtol=1e-5, atol=5e-6)
SHAPES = [(1, 36, 40), (3, 49, 72), (3, 49, 100), (2, 36, 200)]


def make_inputs(B: int, S: int, C: int, *, x_shift: float = 0.5, seed: int = 0) -> list[torch.Tensor]:
    """x [B, S, C] (per-token offsets and scales, every 5th token with std 1e-3 ~ sqrt(eps) scale), ln_weight,
    ln_bias [C], fp32 on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, C, generator=g) * (0.5 + torch.rand(B, S, 1, generator=g)) + x_shift
    x[:, ::5] = x_shift + 1e-3 * torch.randn(B, (S + 4) // 5, C, generator=g)
    ln_w = 1 + 0.1 * torch.randn(C, generator=g)
    ln_b = 0.1 * torch.randn(C, generator=g)
    return [t.to(DEVICE) for t in (x, ln_w, ln_b)]


@pytest.mark.parametrize("B,S,C", SHAPES)
def test_fp32_matches_reference(B, S, C):
    x, w, b = make_inputs(B, S, C)
    out = npool.norm_pool_fwd(x, w, b, eps=EPS)
    ref = norm_pool_ref(x, w, b, eps=EPS)
    assert out.shape == (B, C) and out.dtype == torch.float32
    # LN output has zero mean per token, so without g/beta the token mean would be small: check it is not trivial
    assert (ref - b).abs().max() > 0.05
    torch.testing.assert_close(out, ref, **FP32_TOL)


def test_fp32_no_worse_than_torch_fp32():
    """Three-way rule one level up: err(ours vs fp64 reference) <= 2 * err(torch fp32 vs fp64) + 1e-7."""
    for B, S, C in SHAPES[1:3]:
        x, w, b = make_inputs(B, S, C)
        ref64 = norm_pool_ref(x.double(), w.double(), b.double(), eps=EPS)
        ours, theirs = npool.norm_pool_fwd(x, w, b, eps=EPS), norm_pool_ref(x, w, b, eps=EPS)
        err, _ = assert_three_way(ours, ref64, theirs, "fp32_vs_fp64", what=f"B{B} S{S} C{C}")
        assert err > 0


def test_fp32_stats_stable_under_offset():
    """x = 300 + noise: one-pass E[x^2] - E[x]^2 in fp32 would err by ~ 9e4 * 2^-24 ~ 5e-3 on variances of ~0.25-2.
    At this offset the fp32 mean itself rounds by ~1.5e-5, so the bound is the three-way rule against fp64."""
    x, w, b = make_inputs(2, 49, 100, x_shift=300.0)
    x[:, ::5] = 300.0 + torch.randn(2, 10, 100, device=DEVICE)  # no tokens below fp32 resolution at this offset
    ref64 = norm_pool_ref(x.double(), w.double(), b.double(), eps=EPS)
    ours, theirs = npool.norm_pool_fwd(x, w, b, eps=EPS), norm_pool_ref(x, w, b, eps=EPS)
    assert_three_way(ours, ref64, theirs, "fp32_vs_fp64", what="x = 300 + noise")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,S,C", [(1, 36, 40), (3, 49, 100)])
def test_low_precision_three_way(dtype, B, S, C):
    """x and LN parameters in fp16/bf16: err(ours vs fp32 reference on the same rounded values) <= 2 * err(torch in
    `dtype` vs that reference) + atol. No tl.dot here, so bf16 needs no interpreter work-around."""
    args = [t.to(dtype) for t in make_inputs(B, S, C)]
    out = npool.norm_pool_fwd(*args, eps=EPS)
    assert out.dtype == dtype and out.shape == (B, C)
    ref32 = norm_pool_ref(*(t.float() for t in args), eps=EPS)
    assert_three_way(out, ref32, norm_pool_ref(*args, eps=EPS), "op_abs_1e-5", differs=True, what=str(dtype))


def test_ln_params_in_another_dtype():
    """ln_weight/ln_bias may be any float dtype (read as fp32): fp32 x with bf16 LN parameters."""
    x, w, b = make_inputs(3, 49, 72)
    w, b = w.bfloat16(), b.bfloat16()
    out = npool.norm_pool_fwd(x, w, b, eps=EPS)
    torch.testing.assert_close(out, norm_pool_ref(x, w.float(), b.float(), eps=EPS), **FP32_TOL)


def test_public_op_noncontiguous_matches_reference_backend(triton_backend):
    x, w, b = make_inputs(3, 49, 72)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)  # [B, S, C] view of an [S, B, C] buffer
    assert not x.is_contiguous()
    out = ops.norm_pool(x, w, b, eps=1e-5)
    with fastmixer.use_backend("reference"):
        ref = ops.norm_pool(x, w, b, eps=1e-5)
    torch.testing.assert_close(out, ref, **FP32_TOL)


def test_opcheck():
    x, w, b = (t.detach().requires_grad_(True) for t in make_inputs(2, 9, 12))
    torch.library.opcheck(torch.ops.fastmixer.norm_pool, (x, w, b, EPS))


def test_launcher_contract():
    # The shared contract (fastmixer.mix_args) with the kernels' dtypes: a non-dense x is copied dense, float64 and
    # bad shapes are refused naming the argument.
    x, w, b = make_inputs(1, 36, 40)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(npool.norm_pool_fwd(strided, w, b, eps=EPS), norm_pool_ref(x, w, b, eps=EPS), **FP32_TOL)
    with pytest.raises(ValueError, match="ln_bias must have shape"):
        npool.norm_pool_fwd(x, w, b[:-1], eps=EPS)
    with pytest.raises(ValueError, match="S = 0"):
        npool.norm_pool_fwd(x[:, :0], w, b, eps=EPS)
    with pytest.raises(TypeError, match=r"x must be float32/float16/bfloat16 .*reference path"):
        npool.norm_pool_fwd(x.double(), w, b, eps=EPS)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        npool.norm_pool_fwd(x, w, b, eps=-1.0)
