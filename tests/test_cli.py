"""`fastmixer predict / eval / info`: run in-process through fastmixer.cli.main (plus one `python -m fastmixer`
subprocess), outputs checked against the library functions and timm, exit code 2 + one-line message on bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import randomize_
from test_predict import make_image_folder

import fastmixer
from fastmixer.cli import build_parser, main
from fastmixer.evaluate import evaluate
from fastmixer.predict import class_labels, predict

# a timm-format checkpoint of mixer_s32_224 fine-tuned to 64 px / 3 classes: 4 tokens, quick on CPU
ARCH = "mixer_s32_224"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    items = make_image_folder(root / "data", num_classes=3, per_class=3)
    model = randomize_(fastmixer.create_model(ARCH, img_size=64, num_classes=3), std=0.05).eval()
    ckpt = root / "s32_64px_3cls.pth"
    torch.save(model.state_dict(), ckpt)
    return dict(root=root, data=root / "data", items=items, model=model, ckpt=str(ckpt))


def test_subcommands_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"predict", "eval", "info"} <= set(sub.choices)


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
    assert out.splitlines()[0].startswith(f"{paths[0]}: {want['pred_label']} (class {want['pred_class']}")
    assert len(out.splitlines()) == 2 + 3  # header line, column names, top-3 of 3 classes


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
    assert {k: d[k] for k in want} == want and d["n"] == 9 and d["top5"] == 100.0
    rc = main(args)  # with the progress bar (stderr) and the text summary
    out, err = capsys.readouterr()
    assert rc == 0 and "eval" in err and "batch" in err
    assert f"top-1 {want['top1']:.2f}%  top-5 100.00%  (9 images, 3 classes)" in out


def test_info_cli(capsys):
    assert main(["info", "mixer_b16_224"]) == 0
    out = capsys.readouterr().out
    assert "59.88 M (59,880,472)" in out and "25.20 (12.60 GMACs" in out and "3x224x224" in out
    assert main(["info", "MixerL16", "--img-size", "448", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tokens"] == 784 and d["input_size"] == [3, 448, 448] and d["num_blocks"] == 24


def test_python_m_fastmixer_info():
    env = {**os.environ, "FASTMIXER_BACKEND": "auto"}
    cmd = [sys.executable, "-m", "fastmixer", "info", "mixer_b16_224"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fastmixer_b16_224" in r.stdout and "59,880,472" in r.stdout


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "{root}/missing.jpg"], "fastmixer predict: error: image file not found: '{root}/missing.jpg'"),
        (["predict", "{img}", "--checkpoint", "{root}/none.pth"], "checkpoint file not found"),
        (["predict", "{img}", "--checkpoint", "{ckpt}", "--pretrained"], "either --checkpoint or --pretrained"),
        (["predict", "{img}", "--model", "resnet50"], "unknown Mixer model 'resnet50'"),
        (["predict", "{img}", "--topk", "0"], "--topk must be >= 1"),
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
    assert "Traceback" not in err
