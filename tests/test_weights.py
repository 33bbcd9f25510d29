"""Every weight format, written here from a randomised small model in its documented layout, then loaded back.

The writers below spell out each foreign layout key by key (they do not reuse fastmixer's conversion tables), and the
JAX checkpoint is additionally checked against a float64 forward pass computed straight from the .npz arrays in JAX's
own conventions (NHWC images, HWIO stem kernel, [in, out] Dense kernels), so a permutation that is wrong the same way
in the writer and the loader cannot pass. Models: 24x24 images, patch 4 (S = 36 tokens), C = 24, 2 blocks, 10 classes.
"""

import argparse
import math
import warnings
from functools import partial

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from helpers import randomize_
from safetensors.torch import save_file
from timm.models.mlp_mixer import MixerBlock as TimmMixerBlock
from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer
from timm.models.mlp_mixer import ResBlock

import fastmixer
from fastmixer import MixerBlock, MlpMixer
from fastmixer.timm_convert import from_timm, to_timm
from fastmixer.weights import (
    CheckpointError,
    LoadResult,
    infer_config,
    load_checkpoint,
    model_from_checkpoint,
)

CFG = dict(num_classes=10, img_size=24, patch_size=4, num_blocks=2, embed_dim=24)
# A second, non-default configuration: non-square image, other MLP ratios, eps 1e-5, stem norm, no pooling/head.
CFG_ODD = dict(
    num_classes=0,
    img_size=(24, 32),
    patch_size=8,
    num_blocks=1,
    embed_dim=20,
    mlp_ratio=(0.75, 2.5),
    norm_layer=partial(nn.LayerNorm, eps=1e-5),
    stem_norm=True,
    global_pool="",
)


def source(eps: float = 1e-6, **kw) -> MlpMixer:
    """A randomised fastmixer model (the checkpoint's origin)."""
    return randomize_(MlpMixer(**{**CFG, **kw}, norm_eps=eps)).eval()


def target(**kw) -> MlpMixer:
    """A fresh model to load into: timm's init, so every weight differs from source()'s."""
    return MlpMixer(**{**CFG, **kw}).eval()


def images(n: int = 2, size=(24, 24)) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(7))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def layer_norm_eps(model: nn.Module) -> set[float]:
    return {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}


# ------------------------------------------------------------------------------------------- writers, key by key
def timm_state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def mmpretrain_state(m: MlpMixer) -> dict[str, torch.Tensor]:
    """mmpretrain's ImageClassifier(MlpMixer backbone, LinearClsHead) naming: FFN Linears at layers.0.0 and layers.1."""
    sd = {
        "backbone.patch_embed.projection.weight": m.stem.proj.weight,
        "backbone.patch_embed.projection.bias": m.stem.proj.bias,
    }
    for i, b in enumerate(m.blocks):
        parts = {
            "ln1": b.norm1,
            "token_mix.layers.0.0": b.mlp_tokens.fc1,
            "token_mix.layers.1": b.mlp_tokens.fc2,
            "ln2": b.norm2,
            "channel_mix.layers.0.0": b.mlp_channels.fc1,
            "channel_mix.layers.1": b.mlp_channels.fc2,
        }
        for name, mod in parts.items():
            sd[f"backbone.layers.{i}.{name}.weight"] = mod.weight
            sd[f"backbone.layers.{i}.{name}.bias"] = mod.bias
    sd.update({"backbone.ln1.weight": m.norm.weight, "backbone.ln1.bias": m.norm.bias})
    sd.update({"head.fc.weight": m.head.weight, "head.fc.bias": m.head.bias})
    return {k: v.detach().clone() for k, v in sd.items()}


def jax_params(m: MlpMixer) -> dict[str, np.ndarray]:
    """Google's vit_jax Mixer .npz naming: Conv kernel HWIO, Dense kernels [in, out], LayerNorm scale/bias."""

    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().copy()

    p = {"stem/kernel": a(m.stem.proj.weight.permute(2, 3, 1, 0)), "stem/bias": a(m.stem.proj.bias)}
    for i, b in enumerate(m.blocks):
        pre = f"MixerBlock_{i}/"
        for ln, mod in (("LayerNorm_0", b.norm1), ("LayerNorm_1", b.norm2)):
            p[pre + ln + "/scale"], p[pre + ln + "/bias"] = a(mod.weight), a(mod.bias)
        for mlp, mod in (("token_mixing", b.mlp_tokens), ("channel_mixing", b.mlp_channels)):
            for dense, fc in (("Dense_0", mod.fc1), ("Dense_1", mod.fc2)):
                p[f"{pre}{mlp}/{dense}/kernel"], p[f"{pre}{mlp}/{dense}/bias"] = a(fc.weight.t()), a(fc.bias)
    p["pre_head_layer_norm/scale"], p["pre_head_layer_norm/bias"] = a(m.norm.weight), a(m.norm.bias)
    p["head/kernel"], p["head/bias"] = a(m.head.weight.t()), a(m.head.bias)
    return p


def jax_forward(p: dict[str, np.ndarray], x_nchw: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """vit_jax's MlpMixer.__call__ in float64 from the raw .npz arrays. GELU is the exact erf form (timm's; Flax's
    nn.gelu defaults to the tanh approximation, a property of the model, not of the weight layout tested here)."""
    t = {k: torch.from_numpy(v).double() for k, v in p.items()}

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * t[name + "/scale"] + t[name + "/bias"]

    def mlp(x, name):
        h = x @ t[name + "/Dense_0/kernel"] + t[name + "/Dense_0/bias"]
        h = 0.5 * h * (1 + torch.special.erf(h / math.sqrt(2)))
        return h @ t[name + "/Dense_1/kernel"] + t[name + "/Dense_1/bias"]

    x = x_nchw.double().permute(0, 2, 3, 1)  # NHWC
    ph, pw, cin, _ = t["stem/kernel"].shape
    B, H, W, _ = x.shape
    patches = x.reshape(B, H // ph, ph, W // pw, pw, cin).permute(0, 1, 3, 2, 4, 5)  # [B, gh, gw, ph, pw, in]
    x = torch.einsum("bijhwc,hwco->bijo", patches, t["stem/kernel"]) + t["stem/bias"]
    x = x.reshape(B, -1, x.shape[-1])  # 'n h w c -> n (h w) c'
    i = 0
    while f"MixerBlock_{i}/LayerNorm_0/scale" in t:
        y = ln(x, f"MixerBlock_{i}/LayerNorm_0").transpose(1, 2)
        x = x + mlp(y, f"MixerBlock_{i}/token_mixing").transpose(1, 2)
        x = x + mlp(ln(x, f"MixerBlock_{i}/LayerNorm_1"), f"MixerBlock_{i}/channel_mixing")
        i += 1
    x = ln(x, "pre_head_layer_norm").mean(1)
    return x @ t["head/kernel"] + t["head/bias"]


def write(fmt: str, m: MlpMixer, folder) -> str:
    """Write `m` in format `fmt`; returns the path."""
    if fmt == "timm_bare":
        path = folder / "w.pth"
        torch.save(timm_state(m), path)
    elif fmt == "timm_state_dict":
        path = folder / "w.pth"
        torch.save({"state_dict": timm_state(m), "epoch": 3, "arch": "mixer"}, path)
    elif fmt == "timm_model":
        path = folder / "w.pt"
        torch.save({"model": timm_state(m), "step": 10}, path)
    elif fmt == "timm_train_checkpoint":  # timm train.py: argparse Namespace under 'args', DDP 'module.' prefix
        path = folder / "checkpoint-3.pth.tar"
        sd = {"module." + k: v for k, v in timm_state(m).items()}
        torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1), "epoch": 3, "version": 2}, path)
    elif fmt == "timm_legacy_pickle":
        path = folder / "w.pth"
        torch.save(timm_state(m), path, _use_new_zipfile_serialization=False)
    elif fmt == "timm_safetensors":
        path = folder / "model.safetensors"
        save_file(timm_state(m), str(path))
    elif fmt == "mmpretrain":
        path = folder / "mlp-mixer-base-p16_64xb64_in1k.pth"
        torch.save({"meta": {"mmpretrain_version": "1.2.0", "epoch": 300}, "state_dict": mmpretrain_state(m)}, path)
    elif fmt == "jax":
        path = folder / "imagenet21k_Mixer-B_16.npz"
        np.savez(path, **jax_params(m))
    elif fmt == "jax_misnamed":  # the format comes from the bytes, not the extension
        path = folder / "weights.pth"
        with open(path, "wb") as f:
            np.savez(f, **jax_params(m))
    elif fmt == "jax_params_tree":  # a whole Flax variables tree: {'params': {...}}
        path = folder / "variables.npz"
        np.savez(path, **{"params/" + k: v for k, v in jax_params(m).items()})
    else:
        raise AssertionError(fmt)
    return str(path)


FORMATS = [
    "timm_bare",
    "timm_state_dict",
    "timm_model",
    "timm_train_checkpoint",
    "timm_legacy_pickle",
    "timm_safetensors",
    "mmpretrain",
    "jax",
    "jax_misnamed",
    "jax_params_tree",
]


def file_eps(fmt: str) -> float:
    return 1e-5 if fmt == "mmpretrain" else 1e-6


# ---------------------------------------------------------------------------------------------------- every format
@pytest.mark.parametrize("fmt", FORMATS)
def test_load_every_format(fmt, tmp_path, reference_backend):
    src = source(eps=file_eps(fmt))
    path = write(fmt, src, tmp_path)
    dst = target()
    assert layer_norm_eps(dst) == {1e-6}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = load_checkpoint(dst, path)
    eps_warnings = [w for w in caught if "LayerNorm eps" in str(w.message)]
    assert result == LoadResult([], [])
    assert_same_state(dst.state_dict(), src.state_dict())
    assert layer_norm_eps(dst) == {file_eps(fmt)}
    # mmpretrain's eps differs from the model's 1e-6: set, and said so; the others match and stay silent.
    assert len(eps_warnings) == (1 if fmt == "mmpretrain" else 0)
    x = images()
    with torch.no_grad():
        want, got = src(x), dst(x)
    assert want.abs().max() > 0.1  # not a vacuous comparison
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if fmt.startswith("jax"):
        ref = jax_forward({k.removeprefix("params/"): v for k, v in np.load(path).items()}, x).float()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_jax_reference_forward_is_sensitive_to_layout():
    """The float64 JAX forward above tells a correct stem layout from a H<->W swapped one (so the check has teeth)."""
    src = source()
    p = jax_params(src)
    x = images()
    good = jax_forward(p, x)
    with torch.no_grad():
        torch.testing.assert_close(src(x).double(), good, rtol=1e-4, atol=1e-5)
    p["stem/kernel"] = p["stem/kernel"].transpose(1, 0, 2, 3).copy()
    assert (jax_forward(p, x) - good).abs().max() > 1e-3


def test_jax_checkpoint_sets_eps_back_to_1e_6(tmp_path):
    src = source()
    path = write("jax", src, tmp_path)
    dst = MlpMixer(**CFG, norm_eps=1e-5)
    with pytest.warns(UserWarning, match="LayerNorm eps"):
        load_checkpoint(dst, path)
    assert layer_norm_eps(dst) == {1e-6}


@pytest.mark.parametrize("fmt", ["timm_safetensors", "mmpretrain", "jax"])
def test_model_from_checkpoint_builds_the_architecture(fmt, tmp_path, reference_backend):
    cfg = dict(num_classes=7, img_size=40, patch_size=8, num_blocks=3, embed_dim=20, mlp_ratio=(0.75, 2.5))
    src = source(eps=file_eps(fmt), **cfg)
    path = write(fmt, src, tmp_path)
    model = model_from_checkpoint(path).eval()
    assert isinstance(model, MlpMixer)
    assert model.stem.patch_size == (8, 8) and tuple(model.stem.img_size) == (40, 40) and len(model.blocks) == 3
    assert model.num_classes == 7 and model.embed_dim == 20
    assert layer_norm_eps(model) == {file_eps(fmt)}
    assert_same_state(model.state_dict(), src.state_dict())
    x = images(size=(40, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


def test_infer_config_any_layout():
    src = source(num_classes=7, img_size=40, patch_size=8, num_blocks=3, embed_dim=20, mlp_ratio=(0.75, 2.5))
    want = dict(img_size=40, patch_size=8, in_chans=3, num_blocks=3, embed_dim=20, mlp_ratio=(0.75, 2.5), num_classes=7,
                stem_norm=False, norm_eps=1e-6)  # fmt: skip
    assert infer_config(timm_state(src)) == want
    assert infer_config(mmpretrain_state(src)) == {**want, "norm_eps": 1e-5}
    assert infer_config(jax_params(src)) == want
    # A ratio whose float product rounds below the hidden size still rebuilds the exact width (timm: int(r * C)).
    odd = MlpMixer(num_classes=0, img_size=28, patch_size=4, num_blocks=1, embed_dim=49, mlp_ratio=(29 / 49, 1.0))
    assert odd.blocks[0].mlp_tokens.fc1.out_features == 29
    rebuilt = MlpMixer(**infer_config(odd.state_dict()))
    assert [v.shape for v in rebuilt.state_dict().values()] == [v.shape for v in odd.state_dict().values()]


def test_model_from_checkpoint_non_square_grid(tmp_path):
    src = source(img_size=(24, 32))
    path = write("timm_bare", src, tmp_path)
    with pytest.raises(ValueError, match="not a square grid"):
        model_from_checkpoint(path)
    model = model_from_checkpoint(path, img_size=(24, 32))
    assert_same_state(model.state_dict(), src.state_dict())


def test_create_model_with_mmpretrain_checkpoint_sets_eps(tmp_path, reference_backend):
    src = randomize_(MlpMixer(patch_size=32, num_blocks=1, embed_dim=512, norm_eps=1e-5)).eval()  # S/32, 1 block
    path = write("mmpretrain", src, tmp_path)
    with pytest.warns(UserWarning, match="mmpretrain"):
        model = fastmixer.create_model("fastmixer_s32_224", num_blocks=1, checkpoint_path=path).eval()
    assert layer_norm_eps(model) == {1e-5}
    assert_same_state(model.state_dict(), src.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------- failure modes
# Per format: its state dict, then (key deleted, key added, key given another shape [as the file names it], the
# names the error gives for the three: missing in timm naming, unexpected in the file's, mis-shaped in timm naming).
_BROKEN = {
    "timm": (
        timm_state,
        ("blocks.1.norm2.bias", "blocks.0.extra.weight", "head.weight", (11, 24)),
        ("blocks.1.norm2.bias", "blocks.0.extra.weight", "head.weight"),
    ),
    "mmpretrain": (
        mmpretrain_state,
        ("backbone.layers.1.ln2.bias", "backbone.layers.0.gamma", "head.fc.weight", (11, 24)),
        ("blocks.1.norm2.bias", "backbone.layers.0.gamma", "head.weight (from head.fc.weight)"),
    ),
    "jax": (
        jax_params,
        ("MixerBlock_1/LayerNorm_1/bias", "MixerBlock_0/extra/kernel", "head/kernel", (24, 11)),
        ("blocks.1.norm2.bias", "MixerBlock_0/extra/kernel", "head.weight (from head/kernel)"),
    ),
}


def _broken(fmt: str, src: MlpMixer) -> tuple[dict, str, str, str]:
    """src's weights in `fmt` with one key missing, one unexpected and one mis-shaped; returns the names expected in
    the error (missing in timm naming, unexpected in the file's naming, mis-shaped in timm naming)."""
    state, (gone, extra, reshaped, shape), expected = _BROKEN[fmt]
    ones = (lambda *shape: np.ones(shape, np.float32)) if fmt == "jax" else torch.ones
    sd = state(src)
    del sd[gone]
    sd[extra] = ones(3)
    sd[reshaped] = ones(*shape)
    return (sd, *expected)


@pytest.mark.parametrize("fmt", ["timm", "mmpretrain", "jax"])
def test_mismatch_is_one_error_and_model_unchanged(fmt, tmp_path):
    src = source()
    sd, missing, unexpected, wrong = _broken(fmt, src)
    path = tmp_path / ("w.npz" if fmt == "jax" else "w.pth")
    np.savez(path, **sd) if fmt == "jax" else torch.save({"state_dict": sd}, path)
    dst = MlpMixer(**CFG, norm_eps=1e-6)
    before = snapshot(dst)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(dst, path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert missing in msg and unexpected in msg and wrong in msg and str(path) in msg
    assert "[11, 24] vs model [10, 24]" in msg
    assert info.value.missing == [missing] and info.value.unexpected == [unexpected]
    assert len(info.value.mismatched) == 1
    assert_same_state(dst.state_dict(), before)  # nothing copied, not even the keys that did fit
    assert layer_norm_eps(dst) == {1e-6}  # nor the eps
    # strict=False still refuses a shape mismatch, and still changes nothing.
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(dst, path, strict=False)
    assert_same_state(dst.state_dict(), before)


def test_non_strict_loads_the_rest(tmp_path):
    src = source()
    sd = timm_state(src)
    del sd["blocks.1.norm2.bias"]
    sd["extra.bias"] = torch.ones(2)
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    dst = target()
    kept = dst.blocks[1].norm2.bias.detach().clone()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(dst, path)
    missing, unexpected = load_checkpoint(dst, path, strict=False)
    assert (missing, unexpected) == (["blocks.1.norm2.bias"], ["extra.bias"])
    assert torch.equal(dst.blocks[1].norm2.bias, kept)
    for k, v in dst.state_dict().items():
        if k != "blocks.1.norm2.bias":
            assert torch.equal(v, src.state_dict()[k]), k


@pytest.mark.parametrize("fmt", ["timm_bare", "timm_legacy_pickle", "timm_safetensors", "jax"])
@pytest.mark.parametrize("keep", [0.6, 0.02])
def test_truncated_file(fmt, keep, tmp_path):
    path = write(fmt, source(), tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    dst = target()
    before = snapshot(dst)
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        load_checkpoint(dst, path)
    assert str(path) in str(info.value)
    assert_same_state(dst.state_dict(), before)


@pytest.mark.parametrize("offset", [40, 200])
def test_corrupt_pickle_in_valid_zip(offset, tmp_path):
    """A torch checkpoint whose zip directory is intact but whose pickle stream is damaged (at two depths: the
    unpickler fails differently, and neither must read as 'holds Python objects')."""
    path = write("timm_bare", source(), tmp_path)
    data = bytearray(open(path, "rb").read())
    start = data.find(b"data.pkl")
    data[start + offset : start + offset + 360] = b"\xff" * 360
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        load_checkpoint(target(), path)
    assert str(path) in str(info.value)


def test_half_precision_checkpoint_into_fp32_model(tmp_path):
    src = source()
    path = tmp_path / "w.safetensors"
    save_file({k: v.half() for k, v in timm_state(src).items()}, str(path))
    dst = target()
    load_checkpoint(dst, path)
    for k, v in src.state_dict().items():
        assert dst.state_dict()[k].dtype == torch.float32
        assert torch.equal(dst.state_dict()[k], v.half().float()), k


def test_garbage_empty_and_foreign_files(tmp_path):
    garbage = tmp_path / "w.pth"
    garbage.write_bytes(b"this is not a checkpoint\n" * 40)
    with pytest.raises(ValueError, match="not a recognised file format"):
        load_checkpoint(target(), garbage)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_checkpoint(target(), empty)
    other_zip = tmp_path / "other.npz"
    import zipfile

    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="neither a torch checkpoint nor a numpy"):
        load_checkpoint(target(), other_zip)


def test_unknown_layout(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(4, 3, 7, 7), "fc.weight": torch.ones(10, 4)}, path)
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        load_checkpoint(target(), path)
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        model_from_checkpoint(path)


class _Opaque:  # an arbitrary Python object: weights_only loading must refuse to unpickle it
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": timm_state(source()), "hook": _Opaque()}, path)
    dst = target()
    before = snapshot(dst)
    with pytest.raises(ValueError, match="weights_only") as info:
        load_checkpoint(dst, path)
    assert "_Opaque" in str(info.value)
    assert_same_state(dst.state_dict(), before)


# ------------------------------------------------------------------------------- mmengine training checkpoints
# Stand-ins for mmengine's classes, defined under mmengine.* module paths only while pickling (mmengine itself is not
# needed, and it is never imported by the load). Their pickles look like mmengine's: NEWOBJ + BUILD of the instance
# dict, numpy arrays inside.
class _FakeHistoryBuffer:
    def __init__(self, values: list[float]) -> None:
        self.max_length = 1000000
        self._log_history = np.array(values)
        self._count_history = np.ones(len(values), dtype=np.int64)


class _FakeConfigDict(dict):
    pass


class _Payload:
    """Pickles as a call of os.system: what a malicious checkpoint does."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _as_mmengine(cls: type, module: str, name: str) -> None:
    cls.__module__, cls.__qualname__, cls.__name__ = module, name, name


_as_mmengine(_FakeHistoryBuffer, "mmengine.logging.history_buffer", "HistoryBuffer")
_as_mmengine(_FakeConfigDict, "mmengine.config.config", "ConfigDict")
_as_mmengine(_Payload, "mmengine.hooks.evil", "Payload")


def _save_as_mmengine(obj, path) -> None:
    """torch.save with fake mmengine.* modules in sys.modules (pickle finds classes by module path); removed after."""
    import sys
    import types

    names = {"mmengine", "mmengine.logging", "mmengine.logging.history_buffer", "mmengine.config",
             "mmengine.config.config", "mmengine.hooks", "mmengine.hooks.evil"}  # fmt: skip
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    sys.modules["mmengine.logging.history_buffer"].HistoryBuffer = _FakeHistoryBuffer
    sys.modules["mmengine.config.config"].ConfigDict = _FakeConfigDict
    sys.modules["mmengine.hooks.evil"].Payload = _Payload
    try:
        torch.save(obj, path)
    finally:
        for n in added:
            del sys.modules[n]


def _mmengine_checkpoint(src: MlpMixer, **extra) -> dict:
    """What mmengine's Runner.save_checkpoint writes for an mmpretrain classifier: meta, state_dict, message_hub
    (HistoryBuffers with numpy arrays, runtime info with numpy scalars), optimizer and param_scheduler state."""
    opt = torch.optim.AdamW(src.parameters(), lr=1e-3)
    src(images()).sum().backward()
    opt.step()
    return {
        "meta": {
            "epoch": 3,
            "iter": 300,
            "cfg": "model = dict(type='ImageClassifier', backbone=dict(type='MlpMixer', arch='b'))",
            "seed": 42,
            "experiment_name": "mixer_20261202",
            "time": "20261202_120000",
            "mmengine_version": "0.10.7",
            "dataset_meta": {"classes": ("tench", "goldfish")},
        },
        "state_dict": mmpretrain_state(src),
        "message_hub": {
            "log_scalars": {"train/loss": _FakeHistoryBuffer([2.5, 2.25]), "train/lr": _FakeHistoryBuffer([1e-3])},
            "runtime_info": {"epoch": 3, "iter": 300, "val/accuracy/top1": np.float64(71.5), "max_iters": 900},
            "resumed_keys": {"train/loss": True, "epoch": True},
        },
        "optimizer": opt.state_dict(),
        "param_schedulers": [{"by_epoch": True, "base_values": [1e-3], "last_step": 3, "eta_min": 1e-5}],
        **extra,
    }


def test_mmengine_training_checkpoint_loads_without_mmengine(tmp_path, reference_backend):
    import sys

    src = source(eps=1e-5)
    path = tmp_path / "epoch_3.pth"
    _save_as_mmengine(_mmengine_checkpoint(src), path)
    assert "mmengine" not in sys.modules
    with pytest.raises(Exception, match="mmengine"):  # the file really needs mmengine's classes to unpickle
        torch.load(path, weights_only=True)
    dst = target()
    with pytest.warns(UserWarning, match="mmpretrain"):
        load_checkpoint(dst, path)
    assert_same_state(dst.state_dict(), timm_state(src))
    assert "mmengine" not in sys.modules  # nothing imported it
    with torch.no_grad():
        torch.testing.assert_close(dst(images()), src(images()), rtol=0, atol=0)
    model = model_from_checkpoint(path)  # the architecture is inferred from the same file
    assert layer_norm_eps(model) == {1e-5} and len(model.blocks) == 2


def test_mmengine_objects_become_inert_data(tmp_path):
    from fastmixer.weights import _StandIn, _torch_load

    path = tmp_path / "epoch_3.pth"
    _save_as_mmengine(_mmengine_checkpoint(source()), path)
    obj = _torch_load(path)
    buf = obj["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buf, _StandIn) and buf.stands_for == "mmengine.logging.history_buffer.HistoryBuffer"
    arr = buf.state["_log_history"]
    assert isinstance(arr, _StandIn) and arr.stands_for == "numpy.ndarray"  # numpy arrays are not rebuilt either
    assert float(obj["message_hub"]["runtime_info"]["val/accuracy/top1"]) == 71.5  # a real numpy scalar
    assert obj["meta"]["dataset_meta"] == {"classes": ("tench", "goldfish")}


def test_malicious_pickle_in_an_mmengine_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    cases = {
        # a call of os.system next to the known classes
        "hook": _mmengine_checkpoint(source(), hook=_Payload(marker)),
        # the same call hidden inside the state of a class that is mapped to a stand-in
        "inside": _mmengine_checkpoint(source()),
    }
    buf = cases["inside"]["message_hub"]["log_scalars"]["train/loss"]
    buf._log_history = _Payload(marker)
    for name, ckpt in cases.items():
        path = tmp_path / f"{name}.pth"
        _save_as_mmengine(ckpt, path)
        dst = target()
        before = snapshot(dst)
        with pytest.raises(ValueError, match="nothing in it was unpickled or run") as info:
            load_checkpoint(dst, path)
        assert "posix.system" in str(info.value) or "os.system" in str(info.value), name
        assert not marker.exists(), f"{name}: the pickled call ran"
        assert_same_state(dst.state_dict(), before)


def test_unknown_mmengine_classes_are_refused_and_named(tmp_path):
    path = tmp_path / "cfg.pth"
    ckpt = _mmengine_checkpoint(source())
    ckpt["meta"]["cfg"] = _FakeConfigDict(model="ImageClassifier")
    ckpt["extra"] = _Opaque()
    _save_as_mmengine(ckpt, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(target(), path)
    msg = str(info.value)
    # every class the file names that is not allowed, in one message; the known ones are not listed
    assert "mmengine.config.config.ConfigDict" in msg and "test_weights._Opaque" in msg
    assert "HistoryBuffer" not in msg.split("Known")[0]


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(target(), tmp_path / "nope.pth")
    with pytest.raises(TypeError, match=r"str or os\.PathLike"):
        load_checkpoint(target(), 3)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        load_checkpoint({"a": 1}, tmp_path / "nope.pth")


# ------------------------------------------------------------------------------------------------ timm <-> fastmixer
@pytest.mark.parametrize("cfg", [CFG, CFG_ODD], ids=["default", "odd"])
@pytest.mark.parametrize("share", [True, False])
def test_timm_round_trip(cfg, share, reference_backend):
    t = randomize_(TimmMlpMixer(**cfg)).eval()
    f = from_timm(t, share=share)
    assert type(f) is MlpMixer and all(type(b) is MixerBlock for b in f.blocks)
    back = to_timm(f, share=share)
    assert type(back) is TimmMlpMixer and all(type(b) is TimmMixerBlock for b in back.blocks)
    for m in (f, back):
        assert_same_state(m.state_dict(), t.state_dict())
        assert layer_norm_eps(m) == layer_norm_eps(t)
        assert m.training is False and m.global_pool == t.global_pool
    tp, fp = dict(t.named_parameters()), dict(f.named_parameters())
    if share:
        assert all(fp[k] is tp[k] for k in tp)  # the same Parameter objects: train one, train both
    else:
        assert all(fp[k].data_ptr() != tp[k].data_ptr() for k in tp)
    x = images(size=cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (24, 24))
    with torch.no_grad():
        want = t(x)
        assert want.abs().max() > 0.1
        torch.testing.assert_close(back(x), want, rtol=0, atol=0)
        torch.testing.assert_close(f(x), want, rtol=1e-5, atol=1e-5)
        kept = t.stem.proj.weight.clone()
        f.stem.proj.weight.add_(1.0)
    assert torch.equal(t.stem.proj.weight, kept + 1.0 if share else kept)


def test_from_timm_keeps_pretrained_cfg_and_training_mode():
    t = timm.create_model("mixer_s32_224", drop_path_rate=0.1, drop_rate=0.2, proj_drop_rate=0.05)
    f = from_timm(t)
    assert f.training and f.pretrained_cfg == t.pretrained_cfg and f.pretrained_cfg["architecture"] == "mixer_s32_224"
    assert f.blocks[0].drop_path.drop_prob == 0.1 and f.head_drop.p == 0.2
    assert f.blocks[0].mlp_channels.drop1.p == 0.05


def test_from_timm_rejects_non_mixers():
    with pytest.raises(TypeError, match="timm MlpMixer"):
        from_timm(nn.Linear(2, 2))
    resmlp = TimmMlpMixer(**{**CFG, "num_blocks": 1}, block_layer=ResBlock, mlp_ratio=4)  # timm's resmlp_* class
    with pytest.raises(ValueError, match="ResBlock"):
        from_timm(resmlp)
