"""Fused tanh-approximate GELU (act="gelu_tanh"), next to the exact erf GELU (act="gelu"), on every path.

What runs: the kernels' GELU helpers against torch in float64 (value and derivative, extreme arguments included); the
fused ops forward and backward (interpreted Triton on CPU, compiled on a GPU) against fastmixer.reference and torch
autograd; a whole model built with act_layer=partial(nn.GELU, approximate="tanh") on the reference and the Triton
backend against timm's MlpMixer built the same way (fp32 <= 1e-5; fp16 by the three-way rule), its blocks staying on
the fused path; opcheck of the ops with act; and model_from_checkpoint(npz, gelu="tanh"). Every comparison also checks
that the two activations give different results at these inputs, so a kernel that ignored ACT would fail.
Shapes are tiny and awkward for the interpreter: S = 36, C = 40, odd hidden widths, batch 1 and 3.
"""

from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl
from conftest import DEVICE
from helpers import assert_three_way, max_err, randomize_
from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

import fastmixer
from fastmixer import MlpMixer, reference
from fastmixer.bench.launches import count_launches
from fastmixer.kernels import _common
from fastmixer.kernels.channel_mix import channel_mix_fwd
from fastmixer.kernels.channel_mix_bwd import channel_mix_bwd
from fastmixer.kernels.token_mix import token_mix_fwd
from fastmixer.kernels.token_mix_bwd import token_mix_bwd
from fastmixer.mix_args import MixArgs

ACTS = ["gelu", "gelu_tanh"]
APPROX = {"gelu": "none", "gelu_tanh": "tanh"}
EPS = 1e-6
TINY = dict(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)  # S = 36, C = 40, Dt 20, Dc 160


# ------------------------------------------------------------------------------------------------ the jit helpers
@triton.jit
def _gelu_probe_kernel(A, OUT, GRAD, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    a = tl.load(A + offs, mask=mask, other=0.0)
    h, d = _common.gelu_and_grad(a, ACT)
    tl.store(OUT + offs, _common.gelu(a, ACT), mask=mask)
    tl.store(GRAD + offs, d, mask=mask)
    tl.store(A + offs, h, mask=mask)  # gelu_and_grad's value, read back below


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy at a = +-1e30
@pytest.mark.parametrize("act", ACTS)
def test_kernel_gelu_and_derivative_match_torch_float64(act):
    """_common.gelu / gelu_and_grad on fp32 vs torch's GELU and its autograd derivative in float64, over |a| <= 30
    plus extremes (+-1e3, +-1e30: the tanh form's exp is clamped, no inf * 0). Bound: 2e-6 * max(1, |a|) for the value,
    2e-6 for the derivative (fp32 rounding of a unit-scale result)."""
    a = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([-1e30, -1e3, -1e-30, 0.0, 1e-30, 1e3, 1e30])])
    a = a.to(DEVICE)
    a64 = a.double().requires_grad_(True)
    want = F.gelu(a64, approximate=APPROX[act])
    (want_grad,) = torch.autograd.grad(want.sum(), a64)
    buf, out, grad = a.clone(), torch.empty_like(a), torch.empty_like(a)
    _gelu_probe_kernel[(triton.cdiv(a.numel(), 1024),)](buf, out, grad, a.numel(), ACT=act, BLOCK=1024)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    bound = 2e-6 * a.double().abs().clamp(min=1)
    assert ((out.double() - want.detach()).abs() <= bound).all(), max_err(out, want)
    assert torch.equal(buf, out), "gelu and gelu_and_grad disagree on the value"
    assert ((grad.double() - want_grad).abs() <= 2e-6).all(), max_err(grad, want_grad)
    other = F.gelu(a64.detach(), approximate=APPROX["gelu" if act == "gelu_tanh" else "gelu_tanh"])
    assert (other - want.detach()).abs().max() > 1e-4  # the two activations differ by more than the bound


# ------------------------------------------------------------------------------------------------ the fused ops
def _op_inputs(kind: str, B: int = 3, S: int = 36, C: int = 40, D: int = 21, scale: bool = True) -> list:
    """(x, ln_w, ln_b, fc1_w, fc1_b, fc2_w, fc2_b, branch_scale) fp32 on DEVICE; pre-activations of unit scale."""
    g = torch.Generator().manual_seed(7)
    n = S if kind == "token" else C
    r = lambda *s: torch.randn(*s, generator=g)
    t = [r(B, S, C), 1 + 0.1 * r(C), 0.1 * r(C), 1.5 * r(D, n) / n**0.5, 0.3 * r(D), r(n, D) / D**0.5, 0.1 * r(n)]
    bs = torch.tensor([1.25, 0.0, 0.8][:B]) if scale else None
    return [v.to(DEVICE) for v in t] + [None if bs is None else bs.to(DEVICE)]


FWD = {"token": token_mix_fwd, "channel": channel_mix_fwd}
BWD = {"token": token_mix_bwd, "channel": channel_mix_bwd}
REF = {"token": reference.token_mix_ref, "channel": reference.channel_mix_ref}


@pytest.mark.parametrize("kind", ["token", "channel"])
@pytest.mark.parametrize("act", ACTS)
def test_fused_forward_fp32(kind, act):
    *args, bs = _op_inputs(kind)
    routes = ("mma", "fma") if kind == "token" else (None,)
    ref = REF[kind](*args, eps=EPS, branch_scale=bs, act=act)
    other = REF[kind](*args, eps=EPS, branch_scale=bs, act="gelu" if act == "gelu_tanh" else "gelu_tanh")
    assert max_err(ref, other) > 1e-4  # the activation shows at these inputs
    for route in routes:
        extra = {} if route is None else {"route": route}
        out = FWD[kind](MixArgs(*args, bs), eps=EPS, allow_tf32=False, act=act, **extra)
        err = max_err(out, ref)
        print(f"{kind} {act} {route}: fused vs reference fp32 max abs err {err:.3g}")
        assert err <= 1e-5, (route, err)


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_fused_forward_fp16_tanh_three_way(kind):
    """fp16 x and weights: err(ours vs fp32 math on the same rounded values) <= 2 * err(torch fp16) + eps_fp16."""
    *args, bs = _op_inputs(kind)
    low = [t.half() for t in args]
    oracle = REF[kind](*(t.float() for t in low), eps=EPS, branch_scale=bs, act="gelu_tanh")
    ours = FWD[kind](MixArgs(*low, bs), eps=EPS, allow_tf32=False, act="gelu_tanh")
    theirs = REF[kind](*low, eps=EPS, branch_scale=bs, act="gelu_tanh")
    assert ours.dtype == torch.float16
    err_ours, err_torch = assert_three_way(ours, oracle, theirs, "op_eps", what=f"{kind} gelu_tanh fp16")
    print(f"{kind} gelu_tanh fp16: ours {err_ours:.3g} vs torch fp16 {err_torch:.3g}")


NAMES = ("dx", "d_ln_weight", "d_ln_bias", "d_fc1_weight", "d_fc1_bias", "d_fc2_weight", "d_fc2_bias")


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_fused_backward_fp32_tanh(kind):
    """The backward kernels with ACT="gelu_tanh" against the closed form (reference.mix_backward_ref) and torch
    autograd through the reference forward: every gradient within 1e-5 * its max magnitude. The erf closed form is
    farther away than that (non-vacuity)."""
    *args, bs = _op_inputs(kind, B=3)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    got = BWD[kind](dout, MixArgs(*args, bs), eps=EPS, allow_tf32=False, act="gelu_tanh")
    cf = reference.mix_backward_ref(kind, dout, *args, eps=EPS, branch_scale=bs, act="gelu_tanh")
    cf_erf = reference.mix_backward_ref(kind, dout, *args, eps=EPS, branch_scale=bs, act="gelu")
    leaves = [t.detach().clone().requires_grad_(True) for t in args]
    REF[kind](*leaves, eps=EPS, branch_scale=bs, act="gelu_tanh").backward(dout)
    worst = 0.0
    for name, g, c, leaf in zip(NAMES, got, cf, leaves):
        scale = c.abs().max().item()
        assert scale > 1e-2, name
        e_cf, e_ag = max_err(g, c) / scale, max_err(g, leaf.grad) / scale
        worst = max(worst, e_cf, e_ag)
        assert e_cf <= 1e-5 and e_ag <= 1e-5, f"{name}: rel err {e_cf:.3g} (closed form), {e_ag:.3g} (autograd)"
    assert max(max_err(c, ce) / c.abs().max().item() for c, ce in zip(cf, cf_erf)) > 1e-4
    print(f"{kind} gelu_tanh backward: worst rel err {worst:.3g}")


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_opcheck_with_act(kind):
    """Schema (act is the op's last argument, default "gelu"), fake impl, autograd registration and AOT dispatch with
    act="gelu_tanh"."""
    *args, bs = _op_inputs(kind, B=2, S=9, C=12, D=5)
    args = [t.detach().requires_grad_(True) for t in args]
    op = getattr(torch.ops.fastmixer, f"{kind}_mix").default
    assert str(op._schema).endswith('str act="gelu") -> Tensor'), op._schema
    torch.library.opcheck(op, (*args, bs, EPS, False, "gelu_tanh"))


# ------------------------------------------------------------------------------------------------ whole model vs timm
def _pair(act_layer, std: float = 0.25):
    # std 0.25: fc1 pre-activations of unit scale, where the two GELUs differ (logits move by ~2e-4 between them)
    ours = randomize_(MlpMixer(**TINY, act_layer=act_layer), std=std).to(DEVICE)
    theirs = TimmMlpMixer(**TINY, act_layer=act_layer).to(DEVICE)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def _fwd_bwd(model, x):
    """(logits, {'input': dx, name: d param}) of sum(logits * fixed weights)."""
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(out.device, out.dtype)
    (out.float() * w.float()).sum().backward()
    return out.detach(), {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize(
    "act_layer",
    [partial(nn.GELU, approximate="tanh"), partial(nn.GELU, approximate="none")],
    ids=["tanh", "erf"],
)
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_model_matches_timm_fp32_forward_backward(act_layer, backend):
    """fastmixer vs timm, both built with the same act_layer: logits within 1e-5; the input gradient and every
    parameter gradient within 1e-5 of its max magnitude (+ a floor of 1e-7 of the largest, for gradients that cancel to
    rounding noise by structure). On the triton backend the blocks run the fused kernels (launches counted)."""
    act = "gelu_tanh" if act_layer.keywords["approximate"] == "tanh" else "gelu"
    ours, theirs = _pair(act_layer)
    assert all(b.fusable and b.acts == (act, act) for b in ours.blocks)
    x = torch.randn(3, 3, 42, 42, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with fastmixer.use_backend(backend):
        (got_out, got), launches = count_launches(_fwd_bwd, ours.train(), x)
    want_out, want = _fwd_bwd(theirs.train(), x)
    assert (len(launches) > 0) == (backend == "triton"), launches
    err = max_err(got_out, want_out)
    print(f"{backend} {act}: logits max abs err vs timm {err:.3g} (scale {want_out.abs().max().item():.3g})")
    assert want_out.abs().max() > 0.1 and err <= 1e-5
    floor = 1e-7 * max(g.abs().max().item() for g in want.values())
    worst = (0.0, "")
    for name in want:
        scale = want[name].abs().max().item()
        e = max_err(got[name], want[name])
        assert e <= 1e-5 * scale + floor, f"{name}: max err {e:.3g} (scale {scale:.3g})"
        worst = max(worst, (e / (scale + floor / 1e-5), name))
    print(f"{backend} {act}: worst gradient err / (scale + floor) {worst[0]:.3g} ({worst[1]})")


def test_tanh_model_differs_from_erf_model():
    """Same weights, the two activations: the logits move by more than the 1e-5 parity bound (non-vacuity of the
    parity tests above; Google's JAX Mixer vs timm's, in miniature)."""
    tanh_model, _ = _pair(partial(nn.GELU, approximate="tanh"))
    erf_model = MlpMixer(**TINY).to(DEVICE)
    erf_model.load_state_dict(tanh_model.state_dict())
    x = torch.randn(2, 3, 42, 42, device=DEVICE)
    with torch.no_grad(), fastmixer.use_backend("reference"):
        diff = max_err(tanh_model.eval()(x), erf_model.eval()(x))
    print(f"tanh vs erf model: logits differ by {diff:.3g}")
    assert diff > 1e-4


def test_model_fp16_three_way_tanh(triton_backend):
    """fp16 model and input on the fused path: err(ours fp16 vs timm fp32) <= 2 * err(timm fp16 vs timm fp32) + atol
    for the logits, the input gradient and every parameter gradient (atol 1e-3 of the fp32 magnitude)."""
    act_layer = partial(nn.GELU, approximate="tanh")
    ours, theirs = _pair(act_layer)
    x = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ref_out, ref = _fwd_bwd(theirs.train(), x)
    got_out, got = _fwd_bwd(ours.half().train(), x.half())
    tim_out, tim = _fwd_bwd(theirs.half().train(), x.half())
    rows = [("logits", got_out, tim_out, ref_out)] + [(k, got[k], tim[k], ref[k]) for k in ref]
    for name, g, t, r in rows:
        assert_three_way(g, r, t, "model_rel", what=name)
    print(f"fp16 logits: ours {max_err(got_out, ref_out):.3g} vs timm fp16 {max_err(tim_out, ref_out):.3g}")


def test_timm_gelu_layers_are_fused():
    """timm's own GELU / GELUTanh activation layers take the fused path too (act_layer=GELUTanh)."""
    from timm.layers.activations import GELU, GELUTanh

    for layer, act in ((GELU, "gelu"), (GELUTanh, "gelu_tanh")):
        m = MlpMixer(**TINY, act_layer=layer)
        assert all(b.fusable and b.acts == (act, act) for b in m.blocks)
    assert not MlpMixer(**TINY, act_layer=nn.SiLU).blocks[0].fusable  # other activations: timm's forward


# ------------------------------------------------------------------------------------------------ JAX checkpoints
def test_model_from_checkpoint_gelu_tanh(tmp_path, reference_backend):
    """A Google .npz loaded with gelu="tanh" builds tanh-GELU blocks (fused) and matches timm's MlpMixer built with
    nn.GELU(approximate="tanh") and the same weights; gelu=None keeps timm's exact GELU."""
    from test_weights import write  # the .npz writer (Google's vit_jax naming)

    src = randomize_(MlpMixer(**TINY))
    path = write("jax", src, tmp_path)
    model = fastmixer.model_from_checkpoint(path, gelu="tanh").eval()
    assert all(b.fusable and b.acts == ("gelu_tanh", "gelu_tanh") for b in model.blocks)
    assert all(b.acts == ("gelu", "gelu") for b in fastmixer.model_from_checkpoint(path).blocks)
    twin = TimmMlpMixer(**TINY, act_layer=partial(nn.GELU, approximate="tanh")).eval()
    twin.load_state_dict(src.state_dict())
    x = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        assert max_err(model(x), twin(x)) <= 1e-5
    with pytest.raises(ValueError, match="gelu must be 'erf'"):
        fastmixer.model_from_checkpoint(path, gelu="exact")
    with pytest.raises(ValueError, match="either gelu or act_layer"):
        fastmixer.model_from_checkpoint(path, gelu="tanh", act_layer=nn.GELU)
