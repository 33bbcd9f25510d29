"""The LayerNorm forward pass (kernels/layernorm.py) against torch's layer_norm: fp32 statistics, one rounding to the
output dtype (the channel-mix GEMMs' dtype), rows with a large mean against their spread, K tails, many programs.

Runs the compiled kernel on a GPU, else the Triton interpreter (tests/conftest.py)."""

import pytest
import torch
import triton
import triton.language as tl

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


@triton.jit
def _ln_grad_rows_kernel(x_ptr, dy_ptr, g_ptr, dx_ptr, C, eps, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # test harness: the backward helpers on whole rows, with the statistics from ln_row_stats (one chunk)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    mask = (cols < C)[None, :] & (rows >= 0)[:, None]
    offs = rows[:, None] * C + cols[None, :]
    mean, rstd = ln.ln_row_stats(x_ptr + rows * C, rows >= 0, C, eps, BLOCK_R, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + cols, mask=cols < C, other=0.0)
    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    tl.store(dx_ptr + offs, rstd[:, None] * ln.ln_row_grad(xhat, dy, g, mask, C), mask=mask)


def test_row_grad_helper_matches_closed_form():
    """ln_row_grad (kernels/layernorm.py, for the backward kernels): dx = rstd * (dxhat - mean(dxhat) - xhat *
    mean(dxhat * xhat)), dxhat = dy * g, against torch autograd of layer_norm on the same rows (C = 100: masked
    tail)."""
    R, C = 8, 100
    x = (3.0 + torch.randn(R, C)).to(DEVICE)
    dy = torch.randn(R, C).to(DEVICE)
    g = 1 + torch.arange(C, dtype=torch.float32, device=DEVICE) / C
    dx = torch.empty_like(x)
    _ln_grad_rows_kernel[(R // 4,)](x, dy, g, dx, C, 1e-6, BLOCK_R=4, BLOCK_C=128)
    xr = x.clone().requires_grad_(True)
    torch.nn.functional.layer_norm(xr, (C,), g, None, 1e-6).backward(dy)
    torch.testing.assert_close(dx, xr.grad, rtol=1e-4, atol=1e-5)
