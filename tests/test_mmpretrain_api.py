"""The seed's (mmpretrain's) API on fastmixer: names, architecture, weights download, preprocessing, the snippets of
the seed's "How to use it?" section (import changed to fastmixer), the CLI and `fastmixer info`.

No test touches the network: published checkpoints are stood in for by files written here in mmpretrain's layout
(placed in a temporary torch.hub cache, or served from file:// URLs), and unreachable servers are 127.0.0.1:9 or a
patched socket.create_connection.
"""

import dataclasses
import json
import socket
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import randomize_, timm_twin
from PIL import Image
from test_weights import mmpretrain_state

import fastmixer
from fastmixer import mmpretrain_api
from fastmixer.cli import main as cli_main
from fastmixer.mmpretrain_api import SEED_MODELS, WeightsDownloadError, download_checkpoint, mmpretrain_preprocess
from fastmixer.predict import class_labels

BASE = "mlp-mixer-base-p16_3rdparty_64xb64_in1k"
LARGE = "mlp-mixer-large-p16_3rdparty_64xb64_in1k"

# The seed's README, "How to use it?" (configs/mlp_mixer/README.md), with only the import changed.
SNIPPET_PREDICT = """
from fastmixer import inference_model

predict = inference_model('mlp-mixer-base-p16_3rdparty_64xb64_in1k', 'demo/bird.JPEG')
print(predict['pred_class'])
print(predict['pred_score'])
"""
SNIPPET_MODEL = """
import torch
from fastmixer import get_model

model = get_model('mlp-mixer-base-p16_3rdparty_64xb64_in1k', pretrained=True)
inputs = torch.rand(1, 3, 224, 224)
out = model(inputs)
print(type(out))
# To extract features.
feats = model.extract_feat(inputs)
print(type(feats))
"""


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch.hub cache for this test."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _picture(w: int = 300, h: int = 200) -> Image.Image:
    """A smooth, asymmetric RGB test picture (gradients and a disc), deterministic."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * xx / (w - 1)
    g = 255 * yy / (h - 1)
    b = np.where((xx - 0.6 * w) ** 2 + (yy - 0.4 * h) ** 2 < (0.2 * h) ** 2, 230.0, 40.0)
    return Image.fromarray(np.stack([r, g, b], -1).round().astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def seed_checkpoint(tmp_path_factory):
    """Mixer-B/16 with random weights (eps 1e-5), saved the way the seed's published file is: mmpretrain keys under
    'state_dict' plus a 'meta' dict. Returns (path, the source model)."""
    src = randomize_(fastmixer.MlpMixer(patch_size=16, num_blocks=12, embed_dim=768, norm_eps=1e-5)).eval()
    path = tmp_path_factory.mktemp("seed") / "mixer-base-p16_3rdparty_64xb64_in1k_20211124-1377e3e0.pth"
    torch.save(
        {"meta": {"mmcls_version": "0.18.0", "CLASSES": class_labels(1000)}, "state_dict": mmpretrain_state(src)}, path
    )
    return path, src


@pytest.fixture
def cached_seed(seed_checkpoint, hub_dir):
    """The stand-in checkpoint where pretrained=True looks first: torch.hub's cache, under the published file name."""
    path, src = seed_checkpoint
    target = hub_dir / "checkpoints" / path.name
    target.parent.mkdir(parents=True)
    target.symlink_to(path)
    return target, src


# ---------------------------------------------------------------------------------------------------- names
def test_list_models_one_namespace():
    names = fastmixer.list_models()
    assert {BASE, LARGE, "mixer_b16_224", "mixer_b16_224.goog_in21k_ft_in1k", "fastmixer_b16_224", "MixerB16"} <= set(
        names
    )
    assert "fastmixer_h14_224" in names and names == sorted(names)
    assert fastmixer.list_models("mlp-mixer") == [BASE, LARGE]  # a pattern matches the start, as in mmpretrain
    assert fastmixer.list_models("*b16*", exclude_patterns=["fastmixer", "Mixer"]) == [
        n for n in names if "b16" in n and n.startswith("mixer_")
    ]
    assert fastmixer.list_models("no-such-model") == []
    from fastmixer.registry import resolve_name

    for name in names:  # every listed name is accepted
        assert resolve_name(name).startswith("fastmixer_") or name in SEED_MODELS, name


def test_seed_names_in_the_registry_and_create_model():
    from fastmixer.registry import create_model, resolve_name

    assert resolve_name(BASE) == BASE
    with torch.device("meta"):
        m = create_model(LARGE)
    assert m.pretrained_cfg["architecture"] == LARGE and len(m.blocks) == 24
    with pytest.raises(ValueError) as info:
        resolve_name("mlp-mixer-base-p16_3rdparty_in1k")
    assert BASE in str(info.value)  # the error lists the seed's names among the accepted ones


@pytest.mark.parametrize(
    "name,timm_name,params,blocks,dim",
    [(BASE, "mixer_b16_224", 59_880_472, 12, 768), (LARGE, "mixer_l16_224", 208_196_168, 24, 1024)],
)
def test_seed_architecture(name, timm_name, params, blocks, dim):
    import timm

    with torch.device("meta"):
        ours = fastmixer.get_model(name)
        theirs = timm.create_model(timm_name)
    assert not ours.training  # get_model returns the model in eval mode, as mmpretrain's
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    assert sum(p.numel() for p in ours.parameters()) == params
    assert round(params / 1e6, 2) == SEED_MODELS[name].params_m  # the seed's table: 59.88 / 208.20 M
    assert len(ours.blocks) == blocks and ours.embed_dim == dim and ours.num_classes == 1000
    assert {m.eps for m in ours.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}  # mmcv's LayerNorm default
    acts = {(type(m), m.approximate) for m in ours.modules() if isinstance(m, nn.GELU)}
    assert acts == {(nn.GELU, "none")}
    drops = {d.p for b in ours.blocks for m in (b.mlp_tokens, b.mlp_channels) for d in (m.drop1, m.drop2)}
    assert drops == {0.1}  # the seed config's MLP dropout (drop_rate=0.1); inactive in eval mode
    assert ours.head_drop.p == 0.0  # mmpretrain's LinearClsHead has none
    cfg = ours.pretrained_cfg
    assert cfg["url"] == SEED_MODELS[name].url and cfg["url"].startswith("https://download.openmmlab.com/")
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 224 / 256 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)  # 127.5 / 255


def test_get_model_arguments(tmp_path, reference_backend):
    with pytest.raises(TypeError, match="model name"):
        fastmixer.get_model(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="pretrained must be"):
        fastmixer.get_model("MixerS32", pretrained=3)
    with pytest.raises(TypeError, match="config override"):
        fastmixer.get_model(BASE, head=dict(num_classes=10))
    with pytest.raises(ValueError, match="unknown Mixer model"):
        fastmixer.get_model("resnet50_8xb32_in1k")
    with torch.device("meta"):
        m = fastmixer.get_model(BASE, num_classes=10, proj_drop_rate=0.0)
    assert m.num_classes == 10 and {x.p for x in m.modules() if isinstance(x, nn.Dropout)} == {0.0}
    # a local checkpoint for a timm / fastmixer name
    src = randomize_(fastmixer.MixerS32(num_blocks=2)).eval()
    path = tmp_path / "s32.pth"
    torch.save(src.state_dict(), path)
    got = fastmixer.get_model("mixer_s32_224", pretrained=path, num_blocks=2)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), src.state_dict().values()))


# ---------------------------------------------------------------------------------------------------- weights
def test_pretrained_true_reads_the_hub_cache_and_converts(cached_seed, monkeypatch, reference_backend):
    _, src = cached_seed

    def no_network(*a, **k):
        raise AssertionError("a cached checkpoint must not be downloaded again")

    monkeypatch.setattr(mmpretrain_api.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(mmpretrain_api.socket, "create_connection", no_network)
    model = fastmixer.get_model(BASE, pretrained=True)
    ref = timm_twin(src).eval()  # timm's MlpMixer with the source weights, eps 1e-5
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(x), ref(x)
    err = (a - b).abs().max().item()
    print(f"\nseed B/16 via get_model(pretrained=True) vs timm twin: max |logit diff| = {err:.3g}")
    assert b.abs().max() > 0.1 and err <= 1e-5


def test_download_checks_the_hash_and_lands_in_the_cache(tmp_path, hub_dir):
    payload = b"fastmixer test payload " * 1000
    import hashlib

    digest = hashlib.sha256(payload).hexdigest()
    good = tmp_path / f"weights-{digest[:8]}.pth"
    good.write_bytes(payload)
    path = download_checkpoint(good.as_uri())
    assert path == hub_dir / "checkpoints" / good.name and path.read_bytes() == payload
    bad = tmp_path / "weights-deadbeef.pth"
    bad.write_bytes(payload)
    with pytest.raises(WeightsDownloadError, match="does not start with deadbeef") as info:
        download_checkpoint(bad.as_uri(), name="test")
    assert bad.as_uri() in str(info.value)
    assert sorted(p.name for p in (hub_dir / "checkpoints").iterdir()) == [good.name]  # nothing half-written left


def test_offline_pretrained_fails_fast_naming_url_and_file_route(hub_dir, monkeypatch):
    url = SEED_MODELS[BASE].url

    def refuse(address, timeout=None, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(mmpretrain_api.socket, "create_connection", refuse)
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        fastmixer.get_model(BASE, pretrained=True)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert url in msg and "Network is unreachable" in msg
    assert f"get_model('{BASE}', pretrained='mixer-base-p16_3rdparty_64xb64_in1k_20211124-1377e3e0.pth')" in msg
    assert str(hub_dir / "checkpoints") in msg and "--checkpoint FILE" in msg


def test_unanswered_connection_times_out(hub_dir, monkeypatch):
    release = threading.Event()

    def hang(address, timeout=None, **kwargs):
        release.wait(30)  # a DNS lookup or SYN that never returns
        raise OSError("gave up")

    monkeypatch.setattr(mmpretrain_api.socket, "create_connection", hang)
    start = time.monotonic()
    try:
        with pytest.raises(WeightsDownloadError, match=r"within 0\.3 s"):
            download_checkpoint(SEED_MODELS[LARGE].url, timeout_s=0.3)
    finally:
        release.set()
    assert time.monotonic() - start < 3


def test_refused_connection(hub_dir, monkeypatch):
    # a real socket to a closed local port: refused at once (no traffic leaves the machine)
    seed = dataclasses.replace(SEED_MODELS[BASE], url="http://127.0.0.1:9/mixer-base-p16_20211124-1377e3e0.pth")
    monkeypatch.setitem(SEED_MODELS, BASE, seed)
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match=r"127\.0\.0\.1:9"):
        fastmixer.get_model(BASE, pretrained=True)
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------------------------------------------- preprocessing
def test_preprocess_sizes_crop_and_normalisation():
    # a 256 x 320 (h x w) image is already at the short edge: the bicubic resize is the identity, so the output is
    # exactly the centre crop (offsets (256-224)/2 = 16 and (320-224)/2 = 48) normalised by (x - 127.5) / 127.5
    rgb = np.random.default_rng(0).integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
    out = mmpretrain_preprocess(rgb)
    want = (torch.from_numpy(rgb[16:240, 48:272]).permute(2, 0, 1).float() - 127.5) / 127.5
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out, want)
    # short edge 200 -> 256, long edge int(256 * 300 / 200) = 384; constant images stay constant
    assert torch.equal(mmpretrain_preprocess(np.full((200, 300, 3), 255, np.uint8)), torch.ones(3, 224, 224))
    assert torch.equal(mmpretrain_preprocess(np.zeros((300, 200, 3), np.uint8)), -torch.ones(3, 224, 224))
    with pytest.raises(ValueError, match="uint8 RGB array"):
        mmpretrain_preprocess(np.zeros((300, 200), np.uint8))
    with pytest.raises(TypeError, match="numpy array or a tensor"):
        mmpretrain_preprocess([1, 2, 3])


def test_preprocess_resize_is_opencv_style_bicubic():
    # OpenCV's INTER_CUBIC (mmcv's default backend): Keys kernel a = -0.75, pixel centres aligned, no antialiasing,
    # uint8 output. A 2x upsampling of a step 0 -> 200 (between source columns 69 and 70) gives, at output columns
    # 138..143 (source positions 68.75, 69.25, ..., 70.75):
    #   200 * f(1.25) < 0 -> 0 (clamped);  200 * (f(0.75) + f(1.75)) = 45.3 -> 45;  200 * (f(0.25) + f(1.25)) = 154.7
    #   -> 155;  200 * (f(0.25) + f(0.75) + f(1.75)) = 221.1 -> 221;  200 * (f(0.75) + f(0.25) + f(1.25)) = 207.0;  200
    # with f the Keys kernel at a = -0.75 (f(0.25) = 0.8789, f(0.75) = 0.2617, f(1.25) = -0.1055, f(1.75) = -0.0352).
    # PIL's a = -0.5 would give 41 / 159 / 214 and an antialiased resize no overshoot.
    img = np.zeros((112, 140, 3), np.uint8)
    img[:, 70:] = 200
    out = mmpretrain_preprocess(img, resize_short=224, crop=224)  # 112 x 140 -> 224 x 280, crop columns 28..251
    row = (out[0, 100] * 127.5 + 127.5).round().int().tolist()
    assert row[138 - 28 : 144 - 28] == [0, 45, 155, 221, 207, 200]
    assert row[: 138 - 28] == [0] * (138 - 28) and row[144 - 28 :] == [200] * (224 - 144 + 28)


# ---------------------------------------------------------------------------------------------------- inference
@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return randomize_(fastmixer.get_model("MixerS32", num_blocks=2), std=0.05).eval()


def test_inference_model_keys_and_values(small_model, tmp_path, reference_backend):
    path = tmp_path / "pic.png"  # lossless, so the array route sees the same pixels
    _picture().save(path)
    r = fastmixer.inference_model(small_model, str(path))
    assert set(r) == {"pred_scores", "pred_label", "pred_score", "pred_class"}
    assert isinstance(r["pred_scores"], np.ndarray) and r["pred_scores"].dtype == np.float32
    assert r["pred_scores"].shape == (1000,) and abs(float(r["pred_scores"].sum()) - 1) < 1e-5
    assert isinstance(r["pred_label"], int) and r["pred_label"] == int(r["pred_scores"].argmax())
    assert isinstance(r["pred_score"], float) and r["pred_score"] == float(r["pred_scores"].max())
    assert r["pred_class"] == class_labels(1000)[r["pred_label"]]
    x = mmpretrain_preprocess(np.asarray(_picture()))[None]
    with torch.no_grad():
        want = small_model(x).softmax(-1)[0]
    np.testing.assert_allclose(r["pred_scores"], want.numpy(), rtol=0, atol=1e-7)
    # mmpretrain takes numpy images in OpenCV's BGR order; PIL images are RGB; lists give lists
    bgr = np.asarray(_picture())[..., ::-1].copy()
    batch = fastmixer.inference_model(small_model, [bgr, _picture(), str(path)])
    assert [b["pred_label"] for b in batch] == [r["pred_label"]] * 3
    for b in batch:
        np.testing.assert_allclose(b["pred_scores"], r["pred_scores"], rtol=0, atol=1e-6)
    assert not small_model.training


def test_inference_model_refusals(small_model):
    with pytest.raises(TypeError, match="one image"):
        fastmixer.inference_model(small_model)
    with pytest.raises(ValueError, match="BGR image array"):
        fastmixer.inference_model(small_model, np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match="unexpected arguments"):
        fastmixer.inference_model(small_model, _picture(), pretrained=True)
    with pytest.raises(TypeError, match=r"name or an nn\.Module"):
        fastmixer.inference_model(3, _picture())


# ------------------------------------------------------------------------------------------------ the seed's snippets
def test_seed_snippet_predict_image(cached_seed, tmp_path, monkeypatch, capsys, reference_backend):
    _, src = cached_seed
    (tmp_path / "demo").mkdir()
    _picture(500, 375).save(tmp_path / "demo" / "bird.JPEG", quality=95)
    monkeypatch.chdir(tmp_path)
    exec(compile(SNIPPET_PREDICT, "seed_readme_predict", "exec"), {})
    pred_class, pred_score = capsys.readouterr().out.strip().splitlines()
    img = np.asarray(Image.open(tmp_path / "demo" / "bird.JPEG").convert("RGB"))
    with torch.no_grad():
        probs = timm_twin(src).eval()(mmpretrain_preprocess(img)[None]).softmax(-1)[0]
    assert pred_class == class_labels(1000)[int(probs.argmax())]
    assert abs(float(pred_score) - float(probs.max())) < 1e-5


def test_seed_snippet_use_the_model(cached_seed, capsys, reference_backend):
    exec(compile(SNIPPET_MODEL, "seed_readme_model", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["<class 'torch.Tensor'>", "<class 'torch.Tensor'>"]
    model = fastmixer.get_model(BASE, pretrained=True)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (1, 1000) and model.extract_feat(x).shape == (1, 768)


# ---------------------------------------------------------------------------------------------------- CLI and info
@pytest.mark.parametrize("name,params,macs", [(BASE, "59.88 M", "12.61 G"), (LARGE, "208.20 M", "44.57 G")])
def test_info_shows_the_seed_table_figures(name, params, macs, capsys):
    assert cli_main(["info", name]) == 0
    out = capsys.readouterr().out
    assert f"parameters           {params}" in out
    assert f"MACs / image, mmcv   {macs} multiply-adds" in out
    assert "short edge 256 (bicubic), centre crop 224" in out
    d = fastmixer.info(name)
    assert (
        round(d["gmacs_mmcv"], 2) == SEED_MODELS[name].flops_g
        and round(d["params"] / 1e6, 2) == SEED_MODELS[name].params_m
    )


def test_cli_predict_with_a_seed_name(seed_checkpoint, tmp_path, capsys, reference_backend):
    path, _ = seed_checkpoint
    img = tmp_path / "pic.jpg"
    _picture().save(img)
    assert cli_main(["predict", str(img), "--model", BASE, "--checkpoint", str(path), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pred_label"] in class_labels(1000)


def test_cli_pretrained_offline_names_the_url(hub_dir, monkeypatch, capsys, tmp_path):
    def refuse(address, timeout=None, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    img = tmp_path / "pic.jpg"
    _picture().save(img)
    assert cli_main(["predict", str(img), "--model", LARGE, "--pretrained", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert SEED_MODELS[LARGE].url in err and "--checkpoint FILE" in err
