"""fastmixer.predict / evaluate / info as library functions, checked against timm on a tiny image folder made here.

Models are small fastmixer MlpMixers with randomised weights (CPU, reference backend via "auto"); the expected
results come from a plain timm MlpMixer with the same weights, timm's own transforms and the test's own loop."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import DEVICE
from helpers import randomize_, timm_twin
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.flop_counter import FlopCounterMode

import fastmixer
from fastmixer.evaluate import evaluate
from fastmixer.info import info, mixer_flops
from fastmixer.predict import class_labels, data_config, predict, transforms


def make_image_folder(root: Path, num_classes: int, per_class: int, seed: int = 0) -> list[tuple[Path, int]]:
    """DIR/cls_<i>/img_<j>.png, random pictures of varying size and mode; returns [(path, class)] in sorted order."""
    rng = np.random.default_rng(seed)
    items = []
    for c in range(num_classes):
        d = root / f"cls_{c:02d}"
        d.mkdir(parents=True)
        for j in range(per_class):
            h, w = int(rng.integers(34, 60)), int(rng.integers(34, 60))
            # class-dependent mean colour so images differ between classes, plus noise
            base = rng.integers(0, 256, size=3) if j else np.array([80 * c % 256, 150, 255 - 40 * c % 256])
            px = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(px)
            if (c + j) % 5 == 3:
                img = img.convert("L")  # a greyscale file: loaders must convert it to RGB
            path = d / f"img_{j}.png"
            img.save(path)
            items.append((path, c))
    return items


def tiny_model(num_classes: int = 3) -> fastmixer.MlpMixer:
    return randomize_(
        fastmixer.MlpMixer(num_classes=num_classes, img_size=32, patch_size=8, num_blocks=2, embed_dim=32), std=0.2
    ).eval()


# timm's eval transform for a model without a pretrained cfg, built by hand (timm's defaults), 32 px input
TIMM_TF = create_transform(
    input_size=(3, 32, 32),
    interpolation="bicubic",
    crop_pct=0.875,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
)


@pytest.fixture(scope="module")
def folder3(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder3")
    return root, make_image_folder(root, num_classes=3, per_class=4)


# ------------------------------------------------------------------------------------------------ predict
def test_predict_path_pil_tensor_agree_with_timm(folder3):
    model = tiny_model()
    ref = timm_twin(model).eval()
    for path, _ in folder3[1][:5]:
        pil = Image.open(path).convert("RGB")
        u8 = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)  # [3, H, W] uint8
        pre = TIMM_TF(pil)  # [3, 32, 32] float32
        with torch.no_grad():
            want = ref(pre[None]).softmax(-1)[0]  # [3]
        results = [predict(model, im, topk=5) for im in (path, str(path), pil, u8, pre, pre[None])]
        for r in results:
            assert r == results[0]
        r = results[0]
        assert len(r["topk"]) == 3  # topk capped at num_classes
        scores = [t["score"] for t in r["topk"]]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert r["pred_class"] == int(want.argmax()) == r["topk"][0]["class"]
        assert r["pred_score"] == pytest.approx(float(want.max()), abs=1e-5)
        for t in r["topk"]:
            assert t["score"] == pytest.approx(float(want[t["class"]]), abs=1e-5)
            assert t["label"] == f"class_{t['class']}"
        assert r["pred_label"] == f"class_{r['pred_class']}"


def test_predict_topk_batch_and_mode(folder3):
    model = tiny_model(num_classes=7).train()
    paths = [p for p, _ in folder3[1][:3]]
    singles = [predict(model, p, topk=2) for p in paths]
    batch = predict(model, paths, topk=2)
    assert model.training  # previous mode restored
    assert all(p.grad is None for p in model.parameters())
    assert isinstance(batch, list) and len(batch) == 3
    for one, many in zip(singles, batch):
        assert len(one["topk"]) == 2
        assert [t["class"] for t in one["topk"]] == [t["class"] for t in many["topk"]]
        assert one["pred_score"] == pytest.approx(many["pred_score"], abs=1e-5)
    # distinct images, distinct outputs: the predictions are not a constant
    assert len({round(r["pred_score"], 6) for r in singles}) > 1
    named = predict(model, paths[0], labels=[f"thing{i}" for i in range(7)])
    assert named["pred_label"] == f"thing{named['pred_class']}"


def test_imagenet_labels():
    names = class_labels(1000)
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and names[1] == "goldfish, Carassius auratus"
    goog, miil = class_labels(21843), class_labels(11221)  # mixer_*.goog_in21k and mixer_b16_224.miil_in21k heads
    assert (len(goog), goog[0], goog[1]) == (21843, "organism, being", "benthos")
    assert (len(miil), miil[0]) == (11221, "benthos")
    assert class_labels(10) == [f"class_{i}" for i in range(10)]
    model = randomize_(fastmixer.MlpMixer(num_classes=1000, img_size=32, patch_size=8, num_blocks=1, embed_dim=16))
    r = predict(model, torch.zeros(3, 32, 32), topk=3)
    assert r["pred_label"] == names[r["pred_class"]]
    assert [t["label"] for t in r["topk"]] == [names[t["class"]] for t in r["topk"]]


def test_preprocessing_follows_pretrained_cfg(folder3):
    with torch.device("meta"):
        goog = fastmixer.create_model("mixer_b16_224")
        miil = fastmixer.create_model("mixer_b16_224.miil_in21k_ft_in1k")
        small = fastmixer.create_model("mixer_s32_224", img_size=64)
    half = (0.5, 0.5, 0.5)
    assert data_config(goog) == dict(
        input_size=(3, 224, 224), interpolation="bicubic", mean=half, std=half, crop_pct=0.875, crop_mode="center"
    )
    cfg = data_config(miil)
    assert cfg["interpolation"] == "bilinear" and tuple(cfg["mean"]) == (0.0,) * 3 and tuple(cfg["std"]) == (1.0,) * 3
    assert data_config(small)["input_size"] == (3, 64, 64)  # the model's own size, not the cfg's 224
    want_tf = create_transform(input_size=(3, 64, 64), interpolation="bicubic", crop_pct=0.875, mean=half, std=half)
    img = Image.open(folder3[1][0][0]).convert("RGB")
    assert torch.equal(transforms(small)(img), want_tf(img))


def test_predict_bad_input(tmp_path, folder3):
    model = tiny_model()
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(FileNotFoundError, match=r"cannot read image '.*missing\.png': no such file"):
        predict(model, tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"cannot read image '.*notes\.png': not an image format PIL recognises"):
        predict(model, tmp_path / "notes.png")
    with pytest.raises(ValueError, match="topk must be a positive int"):
        predict(model, torch.zeros(3, 32, 32), topk=0)
    with pytest.raises(ValueError, match=r"one preprocessed image \[3, H, W\]"):
        predict(model, torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"uint8 RGB image tensor \[3, H, W\]"):
        predict(model, torch.zeros(32, 32, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or floating-point"):
        predict(model, torch.zeros(3, 32, 32, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"image path or a PIL\.Image"):
        predict(model, 3.5)
    with pytest.raises(ValueError, match="size 32x32"):  # the model's own check, for a float tensor of the wrong size
        predict(model, torch.zeros(3, 40, 40))
    with pytest.raises(ValueError, match="labels has 2 names but the model has 3 classes"):
        predict(model, torch.zeros(3, 32, 32), labels=["a", "b"])
    with pytest.raises(ValueError, match="at least one image"):
        predict(model, [])
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        predict(lambda x: x, torch.zeros(3, 32, 32))
    model.reset_classifier(0)
    with pytest.raises(ValueError, match="no classifier head"):
        predict(model, torch.zeros(3, 32, 32))


# ------------------------------------------------------------------------------------------------ evaluate
def _timm_loop(model, items, k=5):
    """The test's own top-1/top-5 count: timm model, timm transform, one image at a time."""
    ref = timm_twin(model).eval()
    c1 = c5 = 0
    with torch.no_grad():
        for path, label in items:
            logits = ref(TIMM_TF(Image.open(path).convert("RGB"))[None])[0]
            top = logits.topk(min(k, logits.numel())).indices.tolist()
            c1 += top[0] == label
            c5 += label in top
    return c1, c5


def test_evaluate_matches_timm(tmp_path):
    items = make_image_folder(tmp_path, num_classes=8, per_class=2)
    model = tiny_model(num_classes=8).train()
    res = evaluate(model, tmp_path, batch_size=5, progress=False)  # 16 images: batches of 5, 5, 5, 1
    assert model.training
    c1, c5 = _timm_loop(model, items)
    assert 0 < c5 < len(items)  # setup check: the folder separates right from wrong, so equality means something
    assert (res["correct1"], res["correct5"], res["n"], res["num_folders"]) == (c1, c5, 16, 8)
    assert res["top1"] == pytest.approx(100 * c1 / 16) and res["top5"] == pytest.approx(100 * c5 / 16)


def test_evaluate_few_classes_agrees_with_predict(folder3):
    root, items = folder3
    model = tiny_model()
    res = evaluate(model, root, batch_size=64, progress=True)
    hits = sum(predict(model, p)["pred_class"] == c for p, c in items)
    assert res["n"] == 12 and res["correct1"] == hits == _timm_loop(model, items)[0]
    assert res["top5"] == 100.0  # top-5 of a 3-class head is top-3: every image


def _corrupt(path):
    path.write_bytes(b"GIF89a" + bytes(40))  # a GIF header and nothing PIL can decode
    return path


def _truncated(path):
    Image.new("RGB", (40, 40), (9, 99, 199)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_evaluate_skips_unreadable_images(tmp_path):
    items = make_image_folder(tmp_path, num_classes=3, per_class=3)
    bad = [_truncated(tmp_path / "cls_00" / "b_truncated.jpg"), _corrupt(tmp_path / "cls_02" / "z_corrupt.png")]
    model = tiny_model()
    lines = []
    res = evaluate(model, tmp_path, batch_size=2, progress=False, warn=lines.append)  # bad files mid-batch
    want = evaluate(model, tmp_path, batch_size=9, progress=False, warn=lambda line: None)
    assert res["n"] == 9 and res["skipped"] == 2 and res["correct1"] == _timm_loop(model, items)[0]
    assert [f["path"] for f in res["skipped_files"]] == [str(p) for p in bad]
    assert "truncated" in res["skipped_files"][0]["reason"]
    assert lines == [f"skipped {str(f['path'])!r}: {f['reason']}" for f in res["skipped_files"]]
    assert res == want  # batch boundaries do not matter
    with pytest.warns(UserWarning) as record:  # the library's default: warnings.warn, one per file
        evaluate(model, tmp_path, progress=False)
    assert [str(w.message) for w in record] == lines
    with pytest.raises(ValueError, match=r"cannot read image '.*b_truncated\.jpg': the file is truncated"):
        evaluate(model, tmp_path, progress=False, strict=True)
    for p, _ in items:
        _corrupt(p)
    with pytest.raises(ValueError, match=r"no readable image .* \(11 skipped\)"):
        evaluate(model, tmp_path, progress=False, warn=lambda line: None)


def test_evaluate_warns_on_class_count_mismatch(folder3):
    lines = []
    res = evaluate(tiny_model(num_classes=5), folder3[0], progress=False, warn=lines.append)
    assert res["class_mapping"] == "sorted-folders" and res["n"] == 12
    assert len(lines) == 1 and "3 class folders but the model's head has 5 classes" in lines[0]
    lines.clear()
    evaluate(tiny_model(num_classes=3), folder3[0], progress=False, warn=lines.append)
    assert lines == []


def test_evaluate_maps_imagenet_synsets(tmp_path):
    """Synset folders score as their own ImageNet index, not as their sorted position."""
    from fastmixer.evaluate import class_mapping
    from fastmixer.predict import imagenet_synsets

    synsets = imagenet_synsets(1000)
    assert len(synsets) == 1000 and synsets[:2] == ("n01440764", "n01443537") and synsets[999] == "n15075141"
    assert class_mapping(["n01443537", "n15075141"], 1000)[:2] == ([1, 999], "imagenet-synsets")
    assert class_mapping(["n01443537", "dogs"], 1000)[1] == "sorted-folders"  # not all synsets: sorted order
    for name in ("n01443537", "n15075141"):
        (tmp_path / name).mkdir()
        for j in range(2):
            Image.new("RGB", (40, 40), (40 * j, 90, 200)).save(tmp_path / name / f"{j}.png")
    model = randomize_(
        fastmixer.MlpMixer(num_classes=1000, img_size=32, patch_size=8, num_blocks=1, embed_dim=16), std=0.02
    ).eval()
    with torch.no_grad():
        model.head.bias[999] = 100.0  # every image is predicted as class 999 = n15075141
    lines = []
    res = evaluate(model, tmp_path, progress=False, warn=lines.append)
    assert res["class_mapping"] == "imagenet-synsets" and lines == []  # 2 of 1000 classes, mapped: no mismatch
    assert res["correct1"] == 2 and res["top1"] == 50.0  # the n15075141 folder is right (sorted order: 0 right)


def test_evaluate_bad_input(tmp_path, folder3):
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        evaluate(tiny_model(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        evaluate(tiny_model(), tmp_path / "empty")
    with pytest.raises(ValueError, match="3 class folders but the model has 2 classes"):
        evaluate(tiny_model(num_classes=2), folder3[0])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        evaluate(tiny_model(), folder3[0], batch_size=0)


# ------------------------------------------------------------------------------------------------ info
def _counted_flops(model, img_size):
    x = torch.randn(1, 3, img_size, img_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(x)
    return fc.get_total_flops()


@pytest.mark.parametrize(
    "name,params,gflops",
    [("mixer_b16_224", 59_880_472, 25.20), ("MixerH14", 432_350_952, 241.98), ("mixer_s32_224", 19_104_624, 2.00)],
)
def test_info_variants(name, params, gflops):
    d = info(name)
    assert d["params"] == params and d["gflops"] == pytest.approx(gflops, abs=0.01)
    assert d["input_size"] == (3, 224, 224) and d["gmacs"] == pytest.approx(d["gflops"] / 2)
    assert sum(v for k, v in d["flops"].items() if k != "total") == d["flops"]["total"]


def test_info_fields_and_overrides():
    d = info("mixer_b16_224")
    assert (d["tokens"], d["embed_dim"], d["tokens_mlp_dim"], d["channels_mlp_dim"]) == (196, 768, 384, 3072)
    assert (d["num_blocks"], d["patch_size"], d["num_classes"]) == (12, 16, 1000)
    assert "goog_in21k_ft_in1k" in d["pretrained_tags"] and d["data_config"]["mean"] == (0.5, 0.5, 0.5)
    assert info("mixer_b16_224.goog_in21k")["num_classes"] == 21843
    big = info("mixer_b16_224", img_size=448, num_classes=10)
    assert big["tokens"] == 784 and big["input_size"] == (3, 448, 448) and big["num_classes"] == 10
    assert big["flops"]["channel_mix"] == 4 * d["flops"]["channel_mix"]  # linear in tokens
    with pytest.raises(ValueError, match="unknown Mixer model"):
        info("resnet50")
    with pytest.raises(TypeError, match="expected an MlpMixer"):
        info(torch.nn.Linear(3, 3))


def test_info_flops_match_flop_counter():
    # fastmixer forward (reference path) and timm's, counted by torch's FlopCounterMode
    tiny = tiny_model()
    assert info(tiny)["flops"]["total"] == _counted_flops(tiny, 32)
    with torch.device("meta"):  # full-size timm B/16 and L/16: shapes only, counted without computing
        for name in ("mixer_b16_224", "mixer_l16_224"):
            ref = timm.create_model(name)
            counted = _counted_flops(ref, 224)
            analytic = mixer_flops(ref)["total"]
            assert abs(analytic - counted) <= 0.01 * counted, name
            assert analytic == info(name)["flops"]["total"]
    s32 = fastmixer.create_model("mixer_s32_224", img_size=64)
    assert abs(info(s32)["flops"]["total"] - _counted_flops(s32, 64)) <= 0.01 * info(s32)["flops"]["total"]


def test_predict_and_evaluate_through_fused_kernels(folder3, triton_backend):
    # the Triton kernels (interpreted on CPU) give the reference path's answers, end to end from image files
    root, items = folder3
    model, dev = tiny_model(), DEVICE  # CUDA: compiled kernels; CPU: interpreted
    fused = [predict(model, p, topk=3, device=dev) for p, _ in items[:3]]
    res = evaluate(model, root, batch_size=12, progress=False, device=dev)
    with fastmixer.use_backend("reference"):
        ref = [predict(model, p, topk=3, device=dev) for p, _ in items[:3]]
        want = evaluate(model, root, batch_size=12, progress=False, device=dev)
    for a, b in zip(fused, ref):
        assert [t["class"] for t in a["topk"]] == [t["class"] for t in b["topk"]]
        assert [t["score"] for t in a["topk"]] == pytest.approx([t["score"] for t in b["topk"]], abs=1e-4)
    assert res == want
