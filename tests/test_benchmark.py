"""The benchmark harness end-to-end on CPU at a tiny size (JSON / Markdown / PNG written and checked), its FLOP
bookkeeping against the Mixer formula, and its argument checking."""

import json

import pytest
import torch

from fastmixer import benchmark
from fastmixer.cli import main as cli_main


def test_model_flops_match_mixer_formula():
    # per image and block: 2*(2*S*C*Dt) + 2*(2*S*C*Dc); plus the patchify stem and the head
    S, C, Dt, Dc, L = 196, 768, 384, 3072, 12
    blocks = L * (2 * (2 * S * C * Dt) + 2 * (2 * S * C * Dc))
    stem_head = 2 * S * C * 3 * 16 * 16 + 2 * C * 1000
    assert benchmark.gemm_flops(benchmark.model_gemms("b16", 1)) == blocks + stem_head
    assert benchmark.gemm_flops(benchmark.model_gemms("b16", 8)) == 8 * (blocks + stem_head)
    train = benchmark.case_gemms(benchmark.Case("model", "b16", "training", "timm", 2, "bf16"))
    assert benchmark.gemm_flops(train) == 3 * 2 * (blocks + stem_head)
    tok = benchmark.op_gemms("token_mix", "l16", 1)
    assert tok == [(1024, 512, 196), (1024, 196, 512)]


def test_metrics_arithmetic():
    case = benchmark.Case("op", "channel_mix", "forward", "fastmixer", 4, "fp32")
    m = benchmark.metrics(case, [2.0, 1.0, 3.0], torch.device("cpu"), None)
    assert m["ms"] == 2.0 and m["img_s"] == pytest.approx(2000.0)
    assert m["tflops"] == pytest.approx(benchmark.gemm_flops(benchmark.case_gemms(case)) / 2e-3 / 1e12)
    assert m["pct_peak"] is None and m["peak_mem_mb"] is None
    assert benchmark.peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.0
    assert benchmark.peak_tflops("NVIDIA H100 PCIe", torch.bfloat16) == 756.0


@pytest.mark.parametrize(
    "case,exc,match",
    [
        (benchmark.Case("op", "token_mix", "forward", "pytorch", 1, "fp32"), ValueError, "provider"),
        (benchmark.Case("op", "token_mix", "forward", "timm", 1, "int8"), ValueError, "dtype"),
        (benchmark.Case("op", "token_mix", "forward", "timm", 0, "fp32"), ValueError, "batch"),
        (benchmark.Case("op", "token_mix", "training", "timm", 1, "fp32"), ValueError, "op mode"),
        (benchmark.Case("op", "mixer", "forward", "timm", 1, "fp32"), ValueError, "op must be"),
        (benchmark.Case("model", "b16", "forward", "timm", 1, "fp32"), ValueError, "model mode"),
    ],
)
def test_bad_cases_raise(case, exc, match):
    with pytest.raises(exc, match=match):
        benchmark.build_step(case, torch.device("cpu"))


def test_cpu_compile_policy():
    op_fwd = benchmark.Case("op", "token_mix", "forward", "timm+compile", 1, "fp32")
    train = benchmark.Case("model", "b16", "training", "fastmixer+compile", 1, "fp32")
    assert benchmark.cpu_compile_allowed(op_fwd, "forward") and not benchmark.cpu_compile_allowed(train, "inference")
    assert benchmark.cpu_compile_allowed(train, "all") and not benchmark.cpu_compile_allowed(op_fwd, "none")
    assert benchmark.cpu_compile_allowed(benchmark.Case("op", "token_mix", "forward", "timm", 1, "fp32"), "none")
    with pytest.raises(ValueError, match="policy"):
        benchmark.cpu_compile_allowed(op_fwd, "sometimes")


def test_cli_bench_end_to_end_writes_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the PNG chart needs matplotlib (test extra)")
    rc = cli_main(
        [
            "bench",
            "--device=cpu",
            "--models=b16",
            "--blocks=1",
            "--ops=channel_mix",
            "--modes=inference,forward",
            "--providers=fastmixer,timm,cublas",
            "--batch=1",
            "--warmup=0",
            "--iters=2",
            f"--out={tmp_path}",
            "--name=run",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "run.json").read_text())
    env = report["env"]
    assert env["device_kind"] == "CPU" and env["torch"] == torch.__version__ and env["fastmixer_backend"] == "reference"
    assert report["config"]["dtype"] == "fp32" and report["config"]["batch"] == [1]
    rows = report["results"]
    assert [(r["level"], r["mode"], r["provider"]) for r in rows] == [
        ("model", "inference", "fastmixer"),
        ("model", "inference", "timm"),
        ("model", "inference", "cublas"),
        ("op", "forward", "fastmixer"),
        ("op", "forward", "timm"),
        ("op", "forward", "cublas"),
    ]
    for r in rows:
        assert r["calls"] == 2 and r["ms"] > 0 and r["img_s"] == pytest.approx(1e3 / r["ms"])
    md = (tmp_path / "run.md").read_text()
    assert "CPU" in md and "### b16[1 blk] inference b1 fp32" in md and "| cublas |" in md
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_cli_rejects_unknown_provider(tmp_path):
    assert cli_main(["bench", "--device=cpu", "--providers=fastmixer,tensorrt", f"--out={tmp_path}"]) == 2
