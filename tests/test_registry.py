"""timm registry: fastmixer_* names, pretrained tags and Hub ids equal to timm's Mixer entries, the offline error, and
the names fastmixer.create_model accepts. Full-width models are built with num_blocks=1 to keep CPU time small."""

import huggingface_hub.constants
import pytest
import timm
import torch
from helpers import randomize_
from timm.models import get_pretrained_cfg

import fastmixer
from fastmixer import MlpMixer
from fastmixer.registry import ARCHS

NAMES = [f"fastmixer_{v}_224" for v in ("b16", "b32", "h14", "l16", "l32", "s16", "s32")]
MIRRORED = [(arch, timm_arch) for arch, (timm_arch, _) in ARCHS.items() if timm_arch is not None]
CFG_FIELDS = ("hf_hub_id", "url", "file", "num_classes", "input_size", "crop_pct", "interpolation", "mean", "std")


def test_list_models():
    assert timm.list_models("fastmixer_*") == sorted(NAMES)
    assert sorted(ARCHS) == sorted(NAMES)
    assert len(MIRRORED) == 6


@pytest.mark.parametrize("arch,timm_arch", MIRRORED)
def test_pretrained_tags_and_hub_ids_equal_timms(arch, timm_arch):
    ours = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
    theirs = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{timm_arch}.*")]
    assert ours == theirs
    assert timm.models.is_model_pretrained(arch) == timm.models.is_model_pretrained(timm_arch)
    for tag in theirs:
        a, b = get_pretrained_cfg(f"{arch}.{tag}"), get_pretrained_cfg(f"{timm_arch}.{tag}")
        assert a.architecture == arch and a.tag == tag
        assert {f: getattr(a, f) for f in CFG_FIELDS} == {f: getattr(b, f) for f in CFG_FIELDS}


def test_pretrained_tags_cover_timms_mixers():
    ours = {n.replace("fastmixer_", "mixer_", 1) for n in timm.list_pretrained("fastmixer_*")}
    assert ours == set(timm.list_pretrained("mixer_*"))
    for tag in ("goog_in21k_ft_in1k", "goog_in21k", "miil_in21k", "miil_in21k_ft_in1k"):
        cfg = get_pretrained_cfg(f"fastmixer_b16_224.{tag}")
        assert cfg.hf_hub_id == f"timm/mixer_b16_224.{tag}"


def test_h14_has_no_pretrained_weights():
    assert [n for n in timm.list_pretrained("fastmixer_h14_224*")] == []
    assert get_pretrained_cfg("fastmixer_h14_224").hf_hub_id is None


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No Hub access and an empty cache, even where huggingface_hub read its settings at import time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model("fastmixer_b16_224.goog_in21k_ft_in1k", pretrained=True, num_blocks=1),
        lambda: fastmixer.MixerB16(pretrained=True, num_blocks=1),
        lambda: fastmixer.create_model("mixer_b16_224.goog_in21k", pretrained=True, num_blocks=1),
    ],
    ids=["timm.create_model", "MixerB16", "fastmixer.create_model"],
)
def test_pretrained_offline_error_says_how_to_pass_a_file(build, offline):
    with pytest.raises(RuntimeError) as info:
        build()
    msg = str(info.value)
    assert "fastmixer_b16_224" in msg and "checkpoint_path=" in msg and "load_checkpoint" in msg
    assert isinstance(info.value.__cause__, (OSError, RuntimeError, ValueError))


def test_pretrained_without_published_weights_says_so(offline):
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)no pretrained weights") as info:
        fastmixer.MixerS32(pretrained=True, num_blocks=1)
    assert "network" not in str(info.value).lower()


def test_suggested_local_file_works(tmp_path, offline):
    """What the offline error suggests: the timm checkpoint as a local file, through create_model(checkpoint_path)."""
    src = randomize_(fastmixer.MixerB16(num_blocks=1))
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = fastmixer.create_model("mixer_b16_224.goog_in21k_ft_in1k", num_blocks=1, checkpoint_path=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # timm's own local-file route works on fastmixer architectures too.
    model = timm.create_model(
        "fastmixer_b16_224.goog_in21k_ft_in1k", pretrained=True, num_blocks=1, pretrained_cfg_overlay=dict(file=path)
    )
    assert torch.equal(model.head.weight, src.head.weight)


@pytest.mark.parametrize(
    "name,num_classes,tag",
    [
        ("mixer_b16_224", 1000, "goog_in21k_ft_in1k"),
        ("mixer_b16_224.goog_in21k", 21843, "goog_in21k"),
        ("fastmixer_b16_224", 1000, "goog_in21k_ft_in1k"),
        ("MixerB16", 1000, "goog_in21k_ft_in1k"),
        ("MixerB16.miil_in21k", 11221, "miil_in21k"),
    ],
)
def test_create_model_names(name, num_classes, tag):
    model = fastmixer.create_model(name, num_blocks=1)
    assert type(model) is MlpMixer and type(model.blocks[0]) is fastmixer.MixerBlock
    assert model.embed_dim == 768 and model.stem.patch_size == (16, 16) and model.num_classes == num_classes
    assert model.pretrained_cfg["architecture"] == "fastmixer_b16_224" and model.pretrained_cfg["tag"] == tag


def test_timm_create_model_builds_fastmixer():
    model = timm.create_model("fastmixer_s32_224", num_blocks=1, num_classes=5)
    assert type(model) is MlpMixer and model.num_classes == 5 and model.stem.patch_size == (32, 32)


@pytest.mark.parametrize(
    "name,match",
    [
        ("mixer_x99_224", "unknown Mixer model"),
        ("resnet50", "unknown Mixer model"),
        ("MixerB17", "unknown Mixer model"),
        ("mixer_b16_224.no_such_tag", "unknown pretrained tag"),
        ("MixerB16.goog_in1k", "unknown pretrained tag"),
        ("fastmixer_h14_224.goog_in21k", "unknown pretrained tag"),
    ],
)
def test_unknown_names_and_tags(name, match):
    with pytest.raises(ValueError, match=match):
        fastmixer.create_model(name)
