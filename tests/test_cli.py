"""`fastmixer` command line: help without torch, predict / eval / info outputs against the library, errors as one line
with exit status 2 (bad images named with their reason, unknown names with suggestions, offline pretrained naming
--checkpoint FILE). The first-run checks go through the real entry point (`python -m fastmixer`, and the console
script where installed); the many error cases run in-process through fastmixer.cli.main, the function both call."""

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from helpers import randomize_
from PIL import Image
from test_predict import make_image_folder

import fastmixer
from fastmixer.cli import build_parser, main
from fastmixer.evaluate import evaluate
from fastmixer.predict import class_labels, format_score, predict

# a timm-format checkpoint of mixer_s32_224 fine-tuned to 64 px / 3 classes: 4 tokens, quick on CPU
ARCH = "mixer_s32_224"
HEAVY = ("torch", "timm", "torchvision", "numpy", "triton")


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m fastmixer ARGS` in a fresh process, failing fast on any network access."""
    env = {
        **os.environ,
        "FASTMIXER_BACKEND": "auto",
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://fastmixer-test.invalid",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "fastmixer", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


# ------------------------------------------------------------------------------------------------ image files
def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: PIL opens the header, then fails to decode."""
    Image.new("RGB", (96, 80), (200, 30, 60)).save(path.with_suffix(".tmp.jpg"), quality=95)
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.with_suffix(".tmp.jpg").unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_file(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 3)  # image extension, no image format inside
    return path


def huge_png(path: Path, side: int = 14000) -> Path:
    """A valid 1-bit side x side PNG (196 M pixels at 14000: over twice PIL's default limit) in ~25 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * ((side // 8 + 2) * side), 9)  # filter byte + packed bits per row, all zero
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    items = make_image_folder(root / "data", num_classes=3, per_class=3)
    model = randomize_(fastmixer.create_model(ARCH, img_size=64, num_classes=3), std=0.05).eval()
    ckpt = root / "s32_64px_3cls.pth"
    torch.save(model.state_dict(), ckpt)
    bad = root / "bad"
    bad.mkdir()
    (bad / "folder.jpg").mkdir()
    files = dict(
        truncated=truncated_jpeg(bad / "truncated.jpg"),
        corrupt=corrupt_file(bad / "corrupt.png"),
        huge=huge_png(bad / "huge.png"),
        empty=bad / "empty.jpg",
        directory=bad / "folder.jpg",
        missing=bad / "missing.jpg",
    )
    files["empty"].write_bytes(b"")
    return dict(root=root, data=root / "data", items=items, model=model, ckpt=str(ckpt), bad=files)


# ------------------------------------------------------------------------------------------------ help, at once
HELP_ARGS = [
    ["--help"],
    ["predict", "--help"],
    ["eval", "--help"],
    ["info", "--help"],
    ["bench", "--help"],
    ["demo", "-h"],
]


@pytest.mark.parametrize("args", HELP_ARGS, ids=lambda a: " ".join(a))
def test_help_imports_no_torch(args):
    # -X importtime lists every module the process imported, on stderr: none of the heavy ones may be there
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fastmixer", *args], capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage: fastmixer")
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "fastmixer.cli" in imported  # setup check: the listing is real
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    print(f"fastmixer {' '.join(args)}: {seconds:.2f} s (with -X importtime)")


def test_console_script_help_imports_no_torch():
    script = shutil.which("fastmixer", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("no `fastmixer` console script next to this interpreter (not pip-installed)")
    r = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: fastmixer" in r.stdout
    assert not any(line.rsplit("|", 1)[-1].strip() in HEAVY for line in r.stderr.splitlines())


CODE_REGISTERS = """
import sys
import fastmixer
assert "torch" not in sys.modules and "timm" not in sys.modules, "import fastmixer must stay light"
import timm
assert "fastmixer_b16_224" in timm.list_models("fastmixer*"), "importing timm after fastmixer must register"
from fastmixer import MixerB16, create_model, load_checkpoint, predict, evaluate, info, MlpMixer
import fastmixer.predict, fastmixer.evaluate, fastmixer.info
assert fastmixer.predict is predict and callable(predict) and callable(fastmixer.evaluate) and callable(fastmixer.info)
assert set(fastmixer.__all__) <= set(dir(fastmixer))
print("ok")
"""


def test_light_import_keeps_the_public_api_and_timm_registration(tmp_path):
    # a fresh interpreter: lazy names resolve to the same objects, and timm still sees fastmixer_* after import timm
    r = subprocess.run([sys.executable, "-c", CODE_REGISTERS], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    code = "import timm, fastmixer; print('fastmixer_s32_224' in timm.list_models('fastmixer*'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip() == "True", r.stderr[-2000:]


def test_subcommands_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"demo", "predict", "eval", "info", "bench"}


# ------------------------------------------------------------------------------------------------ predict / eval / info
def test_predict_cli_matches_library(setup, capsys):
    paths = [str(p) for p, _ in setup["items"][:2]]
    rc = main(["predict", *paths, "--model", ARCH, "--checkpoint", setup["ckpt"], "--topk", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and "random" not in err
    lines = [json.loads(s) for s in out.strip().splitlines()]
    assert [d["image"] for d in lines] == paths
    for d, path in zip(lines, paths):
        want = predict(setup["model"], path, topk=2)  # the checkpoint's own model, through the library
        assert [t["class"] for t in d["topk"]] == [t["class"] for t in want["topk"]]
        assert d["pred_score"] == pytest.approx(want["pred_score"], abs=1e-5)
        assert d["pred_label"] == f"class_{want['pred_class']}"  # 3-class head: generic names

    rc = main(["predict", paths[0], "--model", ARCH, "--checkpoint", setup["ckpt"], "--device", "cpu"])
    out = capsys.readouterr().out
    want = predict(setup["model"], paths[0])
    assert rc == 0
    assert out.splitlines()[0] == (
        f"{paths[0]}: {want['pred_label']} (class {want['pred_class']}, p = {format_score(want['pred_score'])})"
    )
    assert len(out.splitlines()) == 2 + 3  # header line, column names, top-3 of 3 classes
    for line, t in zip(out.splitlines()[2:], want["topk"]):  # scores to 4 significant digits
        assert line.split()[2] == format(t["score"], ".4g")


def test_scores_four_significant_digits_json_full_precision(setup, capsys):
    assert [format_score(p) for p in (0.0010000000474974513, 0.98765432, 2.5e-05, 1.0)] == [
        "0.001",
        "0.9877",
        "2.5e-05",
        "1",
    ]
    path = str(setup["items"][0][0])
    args = ["predict", path, "--model", ARCH, "--img-size", "64", "--topk", "20"]  # random weights, seeded alike
    torch.manual_seed(1)
    assert main([*args, "--json"]) == 0
    scores = {t["class"]: t["score"] for t in json.loads(capsys.readouterr().out)["topk"]}
    assert any(float(format(v, ".4g")) != v for v in scores.values())  # JSON keeps more than 4 digits
    torch.manual_seed(1)
    assert main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert len(rows) == 20
    assert all(row[2] == format(scores[int(row[1])], ".4g") for row in rows)  # the same scores, 4 digits


def test_predict_cli_without_weights_warns(setup, capsys):
    path = str(setup["items"][0][0])
    rc = main(["predict", path, "--model", ARCH, "--img-size", "64", "--topk", "3", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and "weights are random" in err
    d = json.loads(out)
    names = class_labels(1000)  # untouched 1000-class head: ImageNet names
    assert len(d["topk"]) == 3 and all(t["label"] == names[t["class"]] for t in d["topk"])


def test_eval_cli_matches_library(setup, capsys):
    args = ["eval", "--data", str(setup["data"]), "--model", ARCH, "--checkpoint", setup["ckpt"], "--batch-size", "4"]
    rc = main([*args, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    want = evaluate(setup["model"], setup["data"], batch_size=4, progress=False)
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert {k: d[k] for k in want} == want and d["n"] == 9 and d["top5"] == 100.0 and d["skipped"] == 0
    rc = main(args)  # with the progress bar (stderr) and the text summary
    out, err = capsys.readouterr()
    assert rc == 0 and "eval" in err and "batch" in err
    assert f"top-1 {format_score(want['top1'])}%  top-5 100%  (9 images, 3 classes)" in out


def test_info_cli(capsys):
    assert main(["info", "mixer_b16_224"]) == 0
    out = capsys.readouterr().out
    assert "59.88 M (59,880,472)" in out and "25.20 (12.60 GMACs" in out and "3x224x224" in out
    assert main(["info", "MixerL16", "--img-size", "448", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tokens"] == 784 and d["input_size"] == [3, 448, 448] and d["num_blocks"] == 24


# ------------------------------------------------------------------------------------------------ real entry point
def test_python_m_predict_truncated_image_one_line_exit_2(setup):
    path = setup["bad"]["truncated"]
    r = run_cli("predict", str(setup["items"][0][0]), str(path), "--model", ARCH, "--checkpoint", setup["ckpt"])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"fastmixer predict: error: cannot read image {str(path)!r}: the file is truncated " + (
        "(incomplete image data)"
    )


def test_python_m_eval_skips_bad_images_and_warns_on_class_mismatch(setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    bad = [corrupt_file(data / "cls_01" / "zz_corrupt.png"), truncated_jpeg(data / "cls_02" / "zz_truncated.jpg")]
    # a 4-class head on 3 folders: scored, with a warning about the mismatch
    model = randomize_(fastmixer.create_model(ARCH, img_size=64, num_classes=4), std=0.05)
    ckpt = tmp_path / "four.pth"
    torch.save(model.state_dict(), ckpt)
    common = ["eval", "--data", str(data), "--model", ARCH, "--checkpoint", str(ckpt), "--no-progress"]
    r = run_cli(*common, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["n"] == 9 and d["skipped"] == 2 and d["num_folders"] == 3
    assert [f["path"] for f in d["skipped_files"]] == [str(p) for p in bad]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3  # the mismatch, then one line per bad file, each naming it
    assert "3 class folders but the model's head has 4 classes" in warnings[0]
    assert str(bad[0]) in warnings[1] and "not an image format" in warnings[1]
    assert str(bad[1]) in warnings[2] and "truncated" in warnings[2]
    assert "Traceback" not in r.stderr

    r = run_cli(*common, "--strict")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == (
        f"fastmixer eval: error: cannot read image {str(bad[0])!r}: not an image format PIL recognises "
        "(corrupt, empty, or not an image)"
    )


def test_python_m_unknown_model_suggests_and_comes_before_weights_warning(setup):
    r = run_cli("predict", str(setup["items"][0][0]), "--model", "mixer_b61_224")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1  # one line
    assert "unknown Mixer model 'mixer_b61_224'; did you mean 'mixer_b16_224'" in r.stderr
    assert all(name in r.stderr for name in ("MixerB16", "fastmixer_b16_224", "mixer_l16_224", "MixerH14"))
    assert "random" not in r.stderr  # no weights warning before (or after) the name error


def test_python_m_pretrained_offline_fails_fast_naming_checkpoint_option(setup, tmp_path):
    # no HF_HUB_OFFLINE: the Hub check itself must notice (an unresolvable endpoint) instead of retrying for ~50 s
    env = {"HF_HUB_OFFLINE": "", "HF_HUB_CACHE": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    t0 = time.perf_counter()
    r = run_cli("predict", str(setup["items"][0][0]), "--model", "mixer_b16_224", "--pretrained", env=env)
    seconds = time.perf_counter() - t0
    assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "Hub id timm/mixer_b16_224.goog_in21k_ft_in1k" in err and "cannot connect to" in err
    assert "--checkpoint FILE" in err and "checkpoint_path=" not in err  # the route that fits the CLI
    assert seconds < 60, f"{seconds:.0f} s"  # imports included; without the check it retried for ~50 s on top
    print(f"offline --pretrained: failed in {seconds:.1f} s (process start to exit)")


# ------------------------------------------------------------------------------------------------ errors, in-process
@pytest.mark.parametrize(
    "kind,reason",
    [
        ("truncated", "the file is truncated (incomplete image data)"),
        ("corrupt", "not an image format PIL recognises (corrupt, empty, or not an image)"),
        ("empty", "not an image format PIL recognises (corrupt, empty, or not an image)"),
        ("directory", "it is a directory, not an image file"),
        ("missing", "no such file"),
        ("huge", "too large: 196,000,000 pixels, over PIL's decompression-bomb limit"),
    ],
)
def test_predict_bad_image_one_line_exit_2(setup, capsys, kind, reason):
    path = setup["bad"][kind]
    rc = main(["predict", str(path), "--model", ARCH, "--checkpoint", setup["ckpt"]])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith(f"fastmixer predict: error: cannot read image {str(path)!r}: {reason}")
    assert err.count("\n") == 1 and "Traceback" not in err
    if kind == "huge":
        assert "--max-image-pixels N" in err and "PIL.Image.MAX_IMAGE_PIXELS" in err


def test_max_image_pixels_option(setup, capsys):
    path = str(setup["items"][0][0])  # at most 59 x 59 pixels
    rc = main(["predict", path, "--model", ARCH, "--checkpoint", setup["ckpt"], "--max-image-pixels", "100"])
    assert rc == 2 and "too large" in capsys.readouterr().err
    rc = main(["predict", path, "--model", ARCH, "--checkpoint", setup["ckpt"], "--max-image-pixels", "0"])
    assert rc == 0 and capsys.readouterr().out.startswith(path)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # restored: the option does not leak into the process


def test_unreadable_image(setup, capsys, monkeypatch, tmp_path):
    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)  # as root, chmod 000 would still be readable
    rc = main(["predict", str(path), "--model", ARCH, "--checkpoint", setup["ckpt"]])
    assert rc == 2
    assert capsys.readouterr().err == f"fastmixer predict: error: cannot read image {str(path)!r}: permission denied\n"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "{img}", "--checkpoint", "{root}/none.pth"], "checkpoint file not found"),
        (["predict", "{img}", "--checkpoint", "{ckpt}", "--pretrained"], "either --checkpoint or --pretrained"),
        (["predict", "{img}", "--model", "resnet50"], "unknown Mixer model 'resnet50'; Accepted names"),
        (["predict", "{img}", "--model", "MixerB17"], "did you mean 'MixerB16'"),
        (["predict", "{img}", "--model", "mixer_b16_224.goog_in21k_ft"], "did you mean 'goog_in21k'"),
        (["predict", "{img}", "--topk", "0"], "--topk must be >= 1"),
        (["predict", "{img}", "--max-image-pixels", "-1"], "--max-image-pixels must be >= 0"),
        (["predict", "{img}", "--model", ARCH, "--checkpoint", "{ckpt}", "--num-classes", "5"], "head.weight"),
        (["eval", "--data", "{root}/nope"], "fastmixer eval: error: data directory not found"),
        (["info", "mixer_x99"], "fastmixer info: error: unknown Mixer model 'mixer_x99'"),
    ],
)
def test_cli_errors_exit_2(setup, capsys, argv, message):
    fill = dict(root=setup["root"], img=setup["items"][0][0], ckpt=setup["ckpt"])
    rc = main([a.format(**fill) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert message.format(**fill) in err
    assert "Traceback" not in err and "random" not in err


def test_pretrained_fetch_error_names_the_route(monkeypatch, tmp_path):
    """The library error says checkpoint_path=; the CLI's says --checkpoint FILE; both name the Hub id, fast."""
    import huggingface_hub.constants

    from fastmixer import hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://fastmixer-test.invalid")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub, "_checked", {})
    t0 = time.perf_counter()
    with pytest.raises(hub.PretrainedFetchError) as info:
        fastmixer.create_model("mixer_b16_224", pretrained=True, num_blocks=1)
    assert time.perf_counter() - t0 < 20
    e = info.value
    assert e.hub_id == "timm/mixer_b16_224.goog_in21k_ft_in1k" and "fastmixer-test.invalid" in e.reason
    assert "checkpoint_path=" in str(e) and "--checkpoint" not in str(e)
    assert "--checkpoint FILE" in e.cli_message() and "checkpoint_path=" not in e.cli_message()
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # cache-only mode was undone


def test_hub_check_is_bounded(monkeypatch):
    """A network that swallows packets (connect never returns) costs the timeout, not the download's retries."""
    import socket

    from fastmixer import hub

    def hang(*args, **kwargs):
        time.sleep(3)  # far past the 0.5 s timeout below; then fail as a dropped connection would
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(hub, "_checked", {})
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    t0 = time.perf_counter()
    reason = hub.hub_unreachable(timeout_s=0.5)
    assert time.perf_counter() - t0 < 2
    assert reason is not None and "no answer within 0.5 s" in reason
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set"
