"""Bad input raises a ValueError/TypeError naming what was expected, before any kernel runs."""

import pytest
import torch

import fastmixer
from fastmixer import MlpMixer


@pytest.fixture(scope="module")
def model():
    return MlpMixer(num_classes=3, img_size=32, patch_size=8, num_blocks=1, embed_dim=16).eval()


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.randn(2, 3, 48, 48), ValueError, r"size 32x32"),
        (torch.randn(2, 1, 32, 32), ValueError, r"expected 3 input channels, got 1"),
        (torch.randn(3, 32, 32), ValueError, r"rank 4"),
        (torch.randn(1, 2, 3, 32, 32), ValueError, r"rank 4"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, r"floating-point.*uint8"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int64), TypeError, r"floating-point.*int64"),
        (torch.randn(2, 3, 32, 32, dtype=torch.float64), TypeError, r"float64 but the model is torch.float32"),
        ([[1.0]], TypeError, r"image tensor"),
    ],
)
def test_model_rejects_bad_images(model, x, exc, match):
    for fn in (model, model.forward_features, model.extract_feat):
        with pytest.raises(exc, match=match):
            fn(x)


def test_model_rejects_mismatched_device(model):
    x = torch.randn(1, 3, 32, 32, device="meta")
    with pytest.raises(ValueError, match=r"input is on meta but the model is on cpu"):
        model(x)


def test_autocast_allows_lower_precision_input(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 3)


def _args(B=2, S=6, C=8, D=5, kind="token"):
    n = S if kind == "token" else C
    return dict(
        x=torch.randn(B, S, C),
        ln_weight=torch.ones(C),
        ln_bias=torch.zeros(C),
        fc1_weight=torch.randn(D, n),
        fc1_bias=torch.randn(D),
        fc2_weight=torch.randn(n, D),
        fc2_bias=torch.randn(n),
    )


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_ops_reject_bad_arguments(kind):
    op = fastmixer.token_mix if kind == "token" else fastmixer.channel_mix
    name = f"{kind}_mix"
    good = _args(kind=kind)
    op(**good)  # sanity: the good arguments work

    def call(**change):
        return op(**{**good, **change})

    with pytest.raises(ValueError, match=rf"{name}: x must be \[B, S, C\] \(rank 3\)"):
        call(x=torch.randn(2, 6))
    with pytest.raises(TypeError, match=rf"{name}: x must be floating point"):
        call(x=torch.ones(2, 6, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=rf"{name}: ln_weight must have shape \(8,\)"):
        call(ln_weight=torch.ones(7))
    with pytest.raises(ValueError, match=rf"{name}: fc2_weight must have shape"):
        call(fc2_weight=torch.randn(3, 3))
    with pytest.raises(ValueError, match=rf"{name}: fc1_bias must have shape \(5,\)"):
        call(fc1_bias=torch.randn(4))
    with pytest.raises(ValueError, match=rf"{name}: fc1_bias is required"):
        call(fc1_bias=None)
    with pytest.raises(ValueError, match=rf"{name}: branch_scale must have shape \(2,\)"):
        op(**good, branch_scale=torch.ones(3))
    with pytest.raises(ValueError, match=rf"{name}: fc1_weight is on meta but x is on cpu"):
        call(fc1_weight=good["fc1_weight"].to("meta"))
    with pytest.raises(TypeError, match=rf"{name}: x is torch.float32 but the weights are torch.float16"):
        call(fc1_weight=good["fc1_weight"].half())


def test_backend_switch_validation(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        fastmixer.set_backend("cuda")
    assert fastmixer.get_backend() in ("auto", "triton", "reference")
    with fastmixer.use_backend("reference"):
        assert fastmixer.ops.resolve_backend(torch.zeros(1)) == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastmixer.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fastmixer.ops.resolve_backend(torch.zeros(1))
    with fastmixer.use_backend("auto"):
        assert fastmixer.ops.resolve_backend(torch.zeros(1)) == "reference"


def test_backend_environment_variable():
    import subprocess
    import sys

    code = "import fastmixer; print(fastmixer.get_backend())"
    env = {**__import__("os").environ, "FASTMIXER_BACKEND": "Reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "reference", out.stderr
    env["FASTMIXER_BACKEND"] = "gpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "FASTMIXER_BACKEND must be one of" in out.stderr
