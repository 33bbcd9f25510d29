"""timm conformance: the behaviours timm's generic model tests (timm's tests/test_models.py) check, on every registered
`fastmixer_*` model, written here with fastmixer's own code (timm's test file is not shipped in its wheel).

Covered: forward on the meta device (shape inference without memory), default / pretrained cfg fields for every
architecture and tag, forward_features / forward_head(pre_logits) / num_classes=0 / reset_classifier(0[, '']) and
global_pool='' shapes, non-standard input sizes, forward + backward with every parameter reached, grad checkpointing
unchanged, features_only (getter and FX), forward_intermediates, torch.fx symbolic tracing (one opaque node per fused
op, the same outputs and gradients) and FX feature extraction through timm's and torchvision's extractors.
Left out: TorchScript (the fused ops dispatch in Python: backend choice, autocast, Triton launch; torch.compile is the
supported graph route, see test_compile.py) and timm's Hub downloads (no network in CI).

Full architectures run on the meta device (every shape, no memory, no time); values, NaNs and gradients are checked on
fastmixer_s32_224 (the smallest registered one) and on tiny awkward configurations (S = 36, C = 40).
"""

import math

import pytest
import timm
import torch
import torch.fx
from conftest import INTERPRET
from helpers import randomize_
from timm.models import get_notrace_functions, get_notrace_modules

import fastmixer
from fastmixer.registry import ARCHS

ARCH_NAMES = sorted(ARCHS)
TAGGED = sorted(timm.list_pretrained("fastmixer_*")) + [a for a in ARCH_NAMES if not timm.list_pretrained(f"{a}.*")]
SMALL = "fastmixer_s32_224"
_TINY = dict(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)  # S = 36, C = 40
FUSED = ("token_mix", "channel_mix", "norm_pool")


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs).eval()


def _tiny(**kwargs) -> torch.nn.Module:
    return randomize_(fastmixer.MlpMixer(**{**_TINY, **kwargs}))


def test_every_architecture_is_registered():
    assert timm.list_models("fastmixer_*") == ARCH_NAMES
    assert len(ARCH_NAMES) == 7


# ---------------------------------------------------------------------------------------------------- meta device
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_meta_device_forward(name):
    model = _meta_model(name)
    assert all(p.is_meta for p in model.parameters())
    S, C = model.stem.num_patches, model.num_features
    x = torch.empty(2, *model.default_cfg["input_size"], device="meta")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast on another device type does not concern meta
        out = model(x)
    assert out.shape == (2, 1000) and out.is_meta
    feats = model.forward_features(x)
    assert feats.shape == (2, S, C)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    _, inter = model.forward_intermediates(x, indices=[0], intermediates_only=False, stop_early=True)
    assert [t.shape for t in inter] == [(2, C, *model.stem.grid_size)]  # NCHW by default


def test_meta_forward_on_the_triton_backend(triton_backend):
    # meta tensors take the reference math (shapes only) even where the Triton backend is forced
    with torch.device("meta"):
        model = fastmixer.MlpMixer(**_TINY).eval()
    out = model(torch.empty(3, 3, 42, 42, device="meta"))
    assert out.shape == (3, 5) and out.is_meta


# ---------------------------------------------------------------------------------------------------- default cfgs
@pytest.mark.parametrize("name", TAGGED)
def test_default_cfg(name):
    arch, _, tag = name.partition(".")
    model = _meta_model(name)
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg or cfg == model.pretrained_cfg
    assert cfg["architecture"] == arch and cfg["tag"] == (tag or "untrained")
    timm_arch = ARCHS[arch][0]
    if timm_arch is not None and tag:  # every field but the architecture is timm's own (same Hub id, preprocessing)
        theirs = timm.get_pretrained_cfg(f"{timm_arch}.{tag}").to_dict()
        assert {k: v for k, v in cfg.items() if k != "architecture"} == {
            k: v for k, v in theirs.items() if k != "architecture"
        }
    for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "num_classes", "first_conv", "classifier"):
        assert cfg.get(key) is not None, key
    assert cfg["fixed_input_size"] is True and cfg["input_size"] == (3, *model.stem.img_size)
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert model.num_classes == cfg["num_classes"] == state[cfg["classifier"] + ".weight"].shape[0]
    assert model.num_features == model.head_hidden_size == model.embed_dim > 0


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_head_reset_and_pooling_shapes(name):
    # 2 blocks of each architecture: the head and pooling paths do not depend on the depth (keeps this test fast)
    model = _meta_model(name, num_blocks=2)
    S, C = model.stem.num_patches, model.num_features
    x = torch.empty(1, *model.default_cfg["input_size"], device="meta")
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    with torch.device("meta"):
        model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape == (1, C)
    with torch.device("meta"):
        model.reset_classifier(0, "")
    assert model(x).shape == (1, S, C)  # no pooling: tokens
    assert _meta_model(name, num_blocks=2, num_classes=0)(x).shape == (1, C)
    assert _meta_model(name, num_blocks=2, num_classes=0, global_pool="")(x).shape == (1, S, C)
    with torch.device("meta"):
        model.reset_classifier(7, "avg")
    assert model(x).shape == (1, 7)


@pytest.mark.parametrize("img_size", [160, (96, 128)])
def test_non_standard_input_size(img_size):
    # timm's Mixer is fixed-size: another resolution is another model (img_size=...); the cfg follows it
    model = _meta_model(SMALL, img_size=img_size)
    H, W = (img_size, img_size) if isinstance(img_size, int) else img_size
    assert model.stem.num_patches == (H // 32) * (W // 32)
    x = torch.empty(1, 3, H, W, device="meta")
    assert model(x).shape == (1, 1000)
    assert model.forward_features(x).shape == (1, model.stem.num_patches, 512)
    with pytest.raises(ValueError, match=f"expected images of size {H}x{W}"):
        model(torch.empty(1, 3, 224, 224, device="meta"))


# ---------------------------------------------------------------------------------------------------- values
def test_forward_backward_and_grad_checkpointing(reference_backend):
    model = timm.create_model(SMALL, pretrained=False, num_classes=42).train()
    x = torch.randn(2, 3, 224, 224)
    out = model(x)
    assert out.shape == (2, 42) and not out.isnan().any()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        a = model(x)
        model.set_grad_checkpointing()
        b = model(x)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_features_only_getter_and_fx(reference_backend):
    x = torch.randn(1, 3, 224, 224)
    torch.manual_seed(3)
    getter = timm.create_model(SMALL, pretrained=False, features_only=True, out_indices=(1, 4, 7)).eval()
    torch.manual_seed(3)  # the same init: the two wrappers name their parameters differently (model. / graph_module.)
    fx = timm.create_model(SMALL, pretrained=False, features_only=True, feature_cls="fx", out_indices=(1, 4, 7)).eval()
    assert all(torch.equal(a, b) for a, b in zip(getter.parameters(), fx.parameters()))
    assert getter.feature_info.channels() == [512, 512, 512] and getter.feature_info.reduction() == [32, 32, 32]
    with torch.no_grad():
        a, b = getter(x), fx(x)
    assert len(a) == len(b) == 3
    for r, fa, fb in zip(getter.feature_info.reduction(), a, b):
        assert fa.shape == (1, 512, math.ceil(224 / r), math.ceil(224 / r))  # getter: NCHW
        assert fb.shape == (1, 49, 512)  # FX returns the blocks' own [B, S, C] outputs
        torch.testing.assert_close(fa.flatten(2).transpose(1, 2), fb, rtol=0, atol=0)
        assert not fa.isnan().any()


def test_forward_intermediates_match_forward_features(reference_backend):
    model = _tiny().eval()
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        model.set_grad_checkpointing()
        final2, _ = model.forward_intermediates(x)
    assert len(inter) == len(model.feature_info) == 2
    assert all(t.shape == (1, 40, 6, 6) for t in inter)
    torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- torch.fx
def _fused_nodes(gm: torch.fx.GraphModule) -> list[str]:
    return [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ in FUSED]


BACKENDS = ["reference", "triton"] if INTERPRET or torch.cuda.is_available() else ["reference"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fx_symbolic_trace_keeps_fused_ops_opaque(backend):
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    model = _tiny().to(device).eval()
    gm = torch.fx.symbolic_trace(model)
    # one node per fused op: token_mix + channel_mix per block, norm_pool once; nothing traced inside them
    assert _fused_nodes(gm) == ["token_mix", "channel_mix"] * 2 + ["norm_pool"]
    assert not any(n.op == "call_module" and "mlp" in str(n.target) for n in gm.graph.nodes)
    assert all(
        n.target.__module__ == "fastmixer.ops" for n in gm.graph.nodes if getattr(n.target, "__name__", 0) in FUSED
    )
    x = torch.randn(3, 3, 42, 42, device=device)
    with fastmixer.use_backend(backend), torch.no_grad():
        assert torch.equal(gm(x), model(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fx_traced_backward_matches_eager(backend):
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    model = _tiny(num_classes=7).to(device).train()
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 42, 42, device=device)
    with fastmixer.use_backend(backend):
        model(x).square().mean().backward()
        eager = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        out = gm(x)
        out.square().mean().backward()
    traced = {n: p.grad for n, p in gm.named_parameters()}
    assert out.shape == (2, 7) and traced.keys() == eager.keys()
    for n, g in eager.items():
        assert traced[n] is not None, n
        torch.testing.assert_close(traced[n], g, rtol=0, atol=0, msg=n)


def test_fx_feature_extraction_torchvision_and_timm(reference_backend):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = _tiny().eval()
    x = torch.randn(1, 3, 42, 42)
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    assert {"blocks.0.token_mix", "blocks.1.channel_mix", "norm_pool", "head"} <= set(eval_nodes)
    tv = create_feature_extractor(model, return_nodes=["blocks.0", eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    tm = timm.models.create_feature_extractor(model, return_nodes={"blocks.1": "last_block", "head": "logits"})
    with torch.no_grad():
        out_tv, out_tm = tv(x), tm(x)
        expected_block0 = model.blocks[0](model.stem(x).contiguous())
        logits = model(x)
    assert torch.equal(out_tv["blocks.0"], expected_block0)
    assert torch.equal(out_tv[eval_nodes[-1]], logits) and torch.equal(out_tm["logits"], logits)
    assert out_tm["last_block"].shape == (1, 36, 40)
    assert train_nodes[-1] == eval_nodes[-1]


def test_fx_tracing_skips_the_input_check_but_the_graph_still_validates(reference_backend):
    gm = torch.fx.symbolic_trace(_tiny().eval())
    with pytest.raises((ValueError, RuntimeError, AssertionError)):  # timm PatchEmbed asserts the size
        gm(torch.randn(1, 3, 49, 49))  # a wrong size still fails when the traced graph runs
    with pytest.raises(TypeError, match="expected an image tensor"):
        _tiny()("not a tensor")  # eager check unchanged
