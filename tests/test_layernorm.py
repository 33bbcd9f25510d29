"""The LayerNorm forward pass (kernels/layernorm.py) against torch's layer_norm: fp32 statistics, one rounding to the
output dtype (the channel-mix GEMMs' dtype), rows with a large mean against their spread, K tails, many programs; the
backward row kernels (ln_prep, ln_backward) against torch autograd.

Runs the compiled kernel on a GPU, else the Triton interpreter (tests/conftest.py)."""

import pytest
import torch

from fastmixer.kernels import layernorm as ln

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _inputs(shape, dtype, *, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = shift + 2 * torch.randn(*shape, generator=g)
    x.view(-1, C)[::5] *= 1e-3  # every 5th row: variance comparable to eps (a lost or wrong eps shows)
    w = 1 + 0.1 * torch.randn(C, generator=g)
    b = 0.1 * torch.randn(C, generator=g)
    return x.to(DEVICE, dtype), w.to(DEVICE, dtype), b.to(DEVICE, dtype)


@pytest.mark.parametrize("shape", [(1, 36, 40), (3, 49, 100), (2, 7, 300), (5, 1, 768)])
def test_fp32_matches_torch(shape):
    """C = 40/100 (one masked chunk), 300 (two chunks, the second mostly masked), 768 (three full chunks)."""
    x, w, b = _inputs(shape, torch.float32)
    y = ln.layernorm_fwd(x, w, b, eps=1e-6, out_dtype=torch.float32)
    ref = torch.nn.functional.layer_norm(x, (shape[-1],), w, b, 1e-6)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.is_contiguous()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [300.0, -4.0e3])
def test_large_mean_against_spread(shift):
    """Rows x = shift + 2 * noise (and 1e-3-scaled rows): the shifted statistics keep the error relative to the spread.
    The float64 layer_norm of the same fp32 values is the truth; E[x^2] - E[x]^2 in fp32 would miss by ~1e-3."""
    x, w, b = _inputs((3, 49, 100), torch.float32, shift=shift)
    y = ln.layernorm_fwd(x, w, b, eps=1e-6, out_dtype=torch.float32)
    truth = torch.nn.functional.layer_norm(x.double(), (100,), w.double(), b.double(), 1e-6)
    torch_fp32 = torch.nn.functional.layer_norm(x, (100,), w, b, 1e-6)
    err, err_torch = (y.double() - truth).abs().max().item(), (torch_fp32.double() - truth).abs().max().item()
    assert err <= 2 * err_torch + 1e-5, (err, err_torch)


@pytest.mark.parametrize(
    "x_dtype,out_dtype",
    [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)],
)
def test_low_precision_rounds_once(x_dtype, out_dtype):
    """fp16/bf16 models and autocast (fp32 x, bf16 out): the output is the fp32 LayerNorm of the same inputs rounded
    once to out_dtype, so at most 1 ulp of out_dtype from torch's own result (which rounds at the same point)."""
    x, w, b = _inputs((3, 49, 100), x_dtype)
    y = ln.layernorm_fwd(x, w, b, eps=1e-6, out_dtype=out_dtype)
    assert y.dtype == out_dtype
    exact = ln.layernorm_ref(x, w, b, eps=1e-6, out_dtype=torch.float32)
    ulp = torch.finfo(out_dtype).eps * exact.abs().clamp_min(torch.finfo(out_dtype).tiny)
    assert ((y.float() - exact).abs() <= ulp).all()
    torch_same = torch.nn.functional.layer_norm(x, (100,), w, b, 1e-6).to(out_dtype)
    assert ((y.float() - torch_same.float()).abs() <= 2 * ulp).all()


def test_deterministic_and_empty():
    x, w, b = _inputs((2, 36, 72), torch.float32)
    a = ln.layernorm_fwd(x, w, b, eps=1e-5, out_dtype=torch.float32)
    assert torch.equal(a, ln.layernorm_fwd(x, w, b, eps=1e-5, out_dtype=torch.float32))
    assert ln.layernorm_fwd(x[:0], w, b, eps=1e-5, out_dtype=torch.float32).shape == (0, 36, 72)


def test_rejects_what_it_cannot_run():
    x, w, b = _inputs((1, 4, 8), torch.float32)
    with pytest.raises(ValueError, match=r"ln_weight must have shape \(8,\)"):
        ln.layernorm_fwd(x, w[:-1], b, eps=1e-6, out_dtype=torch.float32)
    with pytest.raises(TypeError, match="x dtype must be float32/float16/bfloat16"):
        ln.layernorm_fwd(x.double(), w, b, eps=1e-6, out_dtype=torch.float32)
    with pytest.raises(TypeError, match="out dtype must be"):
        ln.layernorm_fwd(x, w, b, eps=1e-6, out_dtype=torch.float64)


@pytest.mark.parametrize("scaled", [True, False], ids=["branch-scale", "do-is-dout"])
@pytest.mark.parametrize("shift", [0.0, 300.0])
def test_backward_row_kernels_match_autograd(shift, scaled):
    """layernorm.ln_prep and ln_backward (the backward ops' row kernels: ln_tile_stats on whole rows, ln_row_grad)
    against torch autograd of layer_norm in float64: x [3, 24, 100] (C = 100: masked tail; 72 rows: a partly masked
    last program), rows with mean 300 against a spread of 2 (and every 5th row's variance comparable to eps), column
    partials summed by hand. With a branch scale ln_prep writes do and its column partials; without one (dout already
    in W) do is dout itself, ln_prep reads no dout and the column partials of dout come from ln_backward."""
    B, S, C = 3, 24, 100
    x, w, b = _inputs((B, S, C), torch.float32, shift=shift)
    g = torch.Generator().manual_seed(1)
    dout, dy = (torch.randn(B, S, C, generator=g).to(DEVICE) for _ in range(2))
    scale = torch.rand(B, generator=g).to(DEVICE) + 0.5 if scaled else None
    y, do, mean, rstd, do_part = ln.ln_prep(x, dout, scale, w, b, torch.float32, eps=1e-6, col_sum=True)
    assert (do is dout) == (do_part is None) == (not scaled)
    xr, wr, br = (t.double().requires_grad_(True) for t in (x, w, b))
    ref = torch.nn.functional.layer_norm(xr, (C,), wr, br, 1e-6)
    ref.backward(dy.double())
    torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean.double(), x.double().mean(-1).flatten(), rtol=1e-6, atol=1e-5)
    rstd_ref = 1 / (x.double().var(-1, unbiased=False) + 1e-6).sqrt()
    torch.testing.assert_close(rstd.double(), rstd_ref.flatten(), rtol=1e-4, atol=0)
    do_ref = dout * scale[:, None, None] if scaled else dout
    torch.testing.assert_close(do, do_ref, rtol=1e-6, atol=1e-6)
    dx, dg_part, db_part, dout_part = ln.ln_backward(x, dy, dout, w, mean, rstd, dout_sum=not scaled)
    assert (dout_part is None) == scaled
    torch.testing.assert_close((do_part if scaled else dout_part).sum(0), do_ref.sum((0, 1)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dx.double(), dout.double() + xr.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dg_part.sum(0).double(), wr.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(db_part.sum(0).double(), br.grad, rtol=1e-5, atol=1e-4)
