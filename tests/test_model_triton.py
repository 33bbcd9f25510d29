"""A whole Mixer through the fused Triton path (interpreted on CPU) against timm: odd sizes, fp32 and half."""

import pytest
import torch
from conftest import DEVICE
from helpers import assert_three_way, randomize_, timm_twin

from fastmixer import MlpMixer

# S = (42 / 7)^2 = 36 tokens, C = 40 channels (not a power of two), Dt = 20, Dc = 160.
TINY = dict(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_mixer_fp32_equals_timm(batch, triton_backend):
    m = randomize_(MlpMixer(**TINY), std=0.05).to(DEVICE).eval()
    ref = timm_twin(m).eval()
    x = torch.randn(batch, 3, 42, 42, device=DEVICE)
    with torch.no_grad():
        ours, theirs = m(x), ref(x)
        feats, ref_feats = m.forward_features(x), ref.forward_features(x)
    err = (ours - theirs).abs().max().item()
    print(f"batch {batch}: max|logits - timm| = {err:.3g}, logit scale {theirs.abs().max().item():.3g}")
    assert theirs.abs().max() > 0.1
    assert err <= 1e-5
    torch.testing.assert_close(feats, ref_feats, rtol=1e-5, atol=1e-5)


def test_tiny_mixer_fp16_three_way(triton_backend):
    """err(ours fp16 vs timm fp32) <= 2 * err(timm fp16 vs timm fp32) + atol."""
    m = randomize_(MlpMixer(**TINY)).to(DEVICE).eval()
    ref32 = timm_twin(m).eval()
    x = torch.randn(2, 3, 42, 42, device=DEVICE)
    with torch.no_grad():
        gold = ref32(x)
        theirs16 = timm_twin(m).half().eval()(x.half()).float()
        ours16 = m.half()(x.half()).float()
    err_ours, err_torch = assert_three_way(ours16, gold, theirs16, "tiny_model_abs", torch.float16, what="logits")
    print(f"fp16: ours {err_ours:.3g} vs timm fp16 {err_torch:.3g}")
