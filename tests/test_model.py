"""The model is timm's: keys, shapes, parameter counts, methods, and logits (reference backend, CPU, fp32)."""

import pytest
import timm
import torch
from helpers import randomize_, timm_twin

import fastmixer
from fastmixer import MlpMixer

VARIANTS = [
    ("MixerS32", "mixer_s32_224", 19.10),
    ("MixerS16", "mixer_s16_224", 18.53),
    ("MixerB32", "mixer_b32_224", 60.29),
    ("MixerB16", "mixer_b16_224", 59.88),
    ("MixerL32", "mixer_l32_224", 206.94),
    ("MixerL16", "mixer_l16_224", 208.20),
]


@pytest.mark.parametrize("variant,timm_name,mparams", VARIANTS)
def test_variant_matches_timm(variant, timm_name, mparams, reference_backend):
    ours = randomize_(getattr(fastmixer, variant)()).eval()
    ref = timm.create_model(timm_name).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    ref.load_state_dict(ours.state_dict(), strict=True)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert round(n / 1e6, 2) == pytest.approx(mparams, abs=0.01)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    err = (a - b).abs().max().item()
    print(f"{variant}: max|logits - timm| = {err:.3g} (logit scale {b.abs().max().item():.3g})")
    assert b.abs().max() > 0.1  # the comparison is not vacuous
    assert err <= 1e-5


def test_h14_against_timm_mlpmixer(reference_backend):
    ours = fastmixer.MixerH14(num_blocks=2)  # full width and tokens, 2 of 32 blocks to keep CPU time small
    assert ours.embed_dim == 1280 and ours.stem.num_patches == 256
    assert ours.blocks[0].mlp_tokens.fc1.out_features == 640 and ours.blocks[0].mlp_channels.fc1.out_features == 5120
    assert sum(p.numel() for p in fastmixer.MixerH14().parameters()) == 432_350_952
    randomize_(ours).eval()
    ref = timm_twin(ours).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5


def test_timm_init_and_methods():
    torch.manual_seed(0)
    ours = MlpMixer(num_classes=10, img_size=64, patch_size=8, num_blocks=2, embed_dim=48)
    torch.manual_seed(0)
    ref = timm.models.mlp_mixer.MlpMixer(num_classes=10, img_size=64, patch_size=8, num_blocks=2, embed_dim=48)
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k  # same init, same RNG order
    randomize_(ours)
    x = torch.randn(3, 3, 64, 64)
    feats = ours.forward_features(x)
    assert feats.shape == (3, 64, 48)
    assert ours.forward_head(feats, pre_logits=True).shape == (3, 48)
    assert torch.allclose(ours.extract_feat(x), feats.mean(1))
    assert torch.allclose(ours(x), ours.forward_head(feats), atol=1e-6)
    final, inter = ours.forward_intermediates(x, indices=[0, 1])
    assert final.shape == (3, 64, 48) and [t.shape for t in inter] == [(3, 48, 8, 8)] * 2
    assert ours.get_classifier() is ours.head
    ours.reset_classifier(5)
    assert ours(x).shape == (3, 5)
    ours.reset_classifier(0, "")
    assert ours(x).shape == (3, 64, 48)


def test_grad_checkpointing_same_gradients(reference_backend):
    m = randomize_(MlpMixer(num_classes=4, img_size=32, patch_size=8, num_blocks=2, embed_dim=24))
    x = torch.randn(2, 3, 32, 32)
    m(x).sum().backward()
    g = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    for a, p in zip(g, m.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_norm_eps_argument():
    m = MlpMixer(img_size=32, patch_size=8, num_blocks=1, embed_dim=16, norm_eps=1e-5)
    assert m.norm.eps == 1e-5 and m.blocks[0].norm1.eps == 1e-5
    with pytest.raises(ValueError, match="norm_eps or norm_layer"):
        MlpMixer(norm_eps=1e-5, norm_layer=torch.nn.LayerNorm)


def test_unfusable_config_runs_timm_forward(reference_backend):
    m = randomize_(MlpMixer(img_size=32, patch_size=8, num_blocks=1, embed_dim=16, act_layer=torch.nn.SiLU)).eval()
    assert not m.blocks[0].fusable
    ref = timm.models.mlp_mixer.MlpMixer(img_size=32, patch_size=8, num_blocks=1, embed_dim=16, act_layer=torch.nn.SiLU)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), ref.eval()(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_matches_timm(dtype, reference_backend):
    """Under autocast the reference path issues timm's exact op sequence, so outputs are bit-identical."""
    m = randomize_(MlpMixer(num_classes=7, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)).eval()
    ref = timm_twin(m).eval()
    x = torch.randn(2, 3, 42, 42)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        a, b = m(x), ref(x)
    assert a.dtype == b.dtype
    assert torch.equal(a, b)
