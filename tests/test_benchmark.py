"""The benchmark harness end-to-end on CPU at a tiny size (JSON / Markdown / PNG written and checked), its FLOP
bookkeeping against the Mixer formula, and its argument checking."""

import dataclasses
import json

import pytest
import torch

from fastmixer.bench import harness
from fastmixer.cli import main as cli_main


def test_model_flops_match_mixer_formula():
    # per image and block: 2*(2*S*C*Dt) + 2*(2*S*C*Dc); plus the patchify stem and the head
    S, C, Dt, Dc, L = 196, 768, 384, 3072, 12
    blocks = L * (2 * (2 * S * C * Dt) + 2 * (2 * S * C * Dc))
    stem_head = 2 * S * C * 3 * 16 * 16 + 2 * C * 1000
    assert harness.gemm_flops(harness.model_gemms("b16", 1)) == blocks + stem_head
    assert harness.gemm_flops(harness.model_gemms("b16", 8)) == 8 * (blocks + stem_head)
    train = harness.case_gemms(harness.Case("model", "b16", "training", "timm", 2, "bf16"))
    assert harness.gemm_flops(train) == 3 * 2 * (blocks + stem_head)
    tok = harness.op_gemms("token_mix", "l16", 1)
    assert tok == [(1024, 512, 196), (1024, 196, 512)]


@pytest.mark.parametrize(
    "case",
    [
        harness.Case("model", "b16", "inference", "timm", 3, "bf16"),
        harness.Case("model", "l16", "training", "cublas", 2, "fp32", num_blocks=2),
        harness.Case("op", "token_mix", "forward", "fastmixer", 5, "fp16", variant="s32"),
        harness.Case("op", "channel_mix", "forward+backward", "timm", 2, "bf16"),
    ],
    ids=lambda c: c.label,
)
def test_reported_flops_come_from_info_and_equal_the_timed_gemms(case):
    # TFLOP/s use fastmixer.info.mixer_flops; the cuBLAS provider times the GEMM list: both must be the same work.
    assert harness.case_flops(case) == harness.gemm_flops(harness.case_gemms(case)) > 0


def test_metrics_arithmetic():
    case = harness.Case("op", "channel_mix", "forward", "fastmixer", 4, "fp32")
    m = harness.metrics(case, [2.0, 1.0, 3.0], torch.device("cpu"), None)
    assert m["ms"] == 2.0 and m["img_s"] == pytest.approx(2000.0)
    assert m["tflops"] == pytest.approx(harness.gemm_flops(harness.case_gemms(case)) / 2e-3 / 1e12)
    assert m["pct_peak"] is None and m["peak_mem_mb"] is None
    assert harness.peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.0
    assert harness.peak_tflops("NVIDIA H100 PCIe", torch.bfloat16) == 756.0


@pytest.mark.parametrize(
    "case,exc,match",
    [
        (harness.Case("op", "token_mix", "forward", "pytorch", 1, "fp32"), ValueError, "provider"),
        (harness.Case("op", "token_mix", "forward", "timm", 1, "int8"), ValueError, "dtype"),
        (harness.Case("op", "token_mix", "forward", "timm", 0, "fp32"), ValueError, "batch"),
        (harness.Case("op", "token_mix", "training", "timm", 1, "fp32"), ValueError, "op mode"),
        (harness.Case("op", "mixer", "forward", "timm", 1, "fp32"), ValueError, "op must be"),
        (harness.Case("model", "b16", "forward", "timm", 1, "fp32"), ValueError, "model mode"),
    ],
)
def test_bad_cases_raise(case, exc, match):
    with pytest.raises(exc, match=match):
        harness.build_step(case, torch.device("cpu"))


def test_cpu_compile_policy():
    op_fwd = harness.Case("op", "token_mix", "forward", "timm+compile", 1, "fp32")
    train = harness.Case("model", "b16", "training", "fastmixer+compile", 1, "fp32")
    assert harness.cpu_compile_allowed(op_fwd, "forward") and not harness.cpu_compile_allowed(train, "inference")
    assert harness.cpu_compile_allowed(train, "all") and not harness.cpu_compile_allowed(op_fwd, "none")
    assert harness.cpu_compile_allowed(harness.Case("op", "token_mix", "forward", "timm", 1, "fp32"), "none")
    with pytest.raises(ValueError, match="policy"):
        harness.cpu_compile_allowed(op_fwd, "sometimes")


BENCH = [
    "bench",
    "--device=cpu",
    "--models=b16",
    "--blocks=1",
    "--ops=channel_mix",
    "--modes=inference,forward",
    "--providers=fastmixer,timm,timm+compile,cublas",
    "--cpu-compile=none",  # timm+compile is recorded as skipped
    "--batch=1",
    "--warmup=0",
    "--iters=2",
]


def test_cli_bench_end_to_end_writes_reports(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="the PNG chart needs matplotlib (test extra)")
    monkeypatch.chdir(tmp_path)
    rc = cli_main([*BENCH, "--out=out", "--name=run"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing outside --out
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    env = report["env"]
    assert env["device_kind"] == "CPU" and env["torch"] == torch.__version__ and env["fastmixer_backend"] == "reference"
    assert report["config"]["dtype"] == "fp32" and report["config"]["batch"] == [1]
    rows = report["results"]
    assert [(r["level"], r["mode"], r["provider"]) for r in rows] == [
        (level, mode, p)
        for level, mode in (("model", "inference"), ("op", "forward"))
        for p in ("fastmixer", "timm", "timm+compile", "cublas")
    ]
    for r in rows:
        if r["provider"] == "timm+compile":
            assert "ms" not in r and "policy 'none'" in r["skipped"]
            continue
        assert r["calls"] == 2 and r["ms"] > 0 and r["img_s"] == pytest.approx(1e3 / r["ms"])
    md = (tmp_path / "out" / "run.md").read_text()
    assert (tmp_path / "out" / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, err = capsys.readouterr()
    # stdout: each table once, the same Markdown as the file; stderr: progress and what was written
    assert out.strip() == md.strip()
    assert out.count("### b16[1 blk] inference b1 fp32") == 1 and out.count("### channel_mix@b16 forward b1 fp32") == 1
    assert "[1/8] b16[1 blk] inference b1 fp32" in err and "wrote out/run.md" in err
    # the GEMM-only provider is what it is on a CPU; no CPU ratio is presented as a speed-up; no MODEL in timings
    assert "| torch.mm GEMMs only (CPU) |" in out and "| cublas" not in out and "cuBLAS" not in out
    assert "| vs timm |" not in out and "of limit |" not in out and "MODEL" not in out
    assert "| timm+compile | skipped: torch.compile on CPU not in policy 'none'" in out


def test_cli_bench_writes_no_files_without_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main([*BENCH, "--providers=timm", "--ops=none"]) == 0
    assert list(tmp_path.iterdir()) == []
    out, err = capsys.readouterr()
    assert "### b16[1 blk] inference b1 fp32" in out and "no files written (--out DIR" in err
    # what the runtime selection chose (fastmixer/select.py): on CPU nothing is timed, and the table says so
    assert out.count("## Runtime selection") == 1 and "runtime selection: FASTMIXER_SELECT=fused" in out
    assert "no fused op has met the selection" in out


def _count_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["bench", "--count-only", "--models=b16", "--blocks=1", "--batch=2", "--out=out", "--name=c"]) == 0
    return json.loads((tmp_path / "out" / "c.json").read_text()), capsys.readouterr()


def test_count_only_tables_once_and_model_only_where_modelled(tmp_path, capsys, monkeypatch):
    report, (out, err) = _count_report(tmp_path, capsys, monkeypatch)
    (c,) = report["counts"]
    assert report["results"] == [] and c["fastmixer"]["forward"]["launches_per_block"] == 5
    assert out.count("| fastmixer | forward |") == 1 and out.count("| timm eager | forward |") == 1
    assert out.count("## Counts") == 1 and "counting b16" in err and "counting b16" not in out
    assert "(model)" not in out  # not "roofline MODEL on H100 SXM (model)"
    assert out.count("MODEL") == 2  # the sentence about the modelled column and its header, nowhere else
    assert "| modelled ms (MODEL) |" in out and "not a measurement" in out


def test_count_only_figure_shows_the_counts(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="figures need matplotlib (test extra)")
    report, _ = _count_report(tmp_path, capsys, monkeypatch)
    (c,) = report["counts"]
    fig = harness.figure(report)
    axes = fig.axes
    assert len(axes) == 3
    for ax, key, scale in zip(axes, ("launches", "gbytes", "model_us"), (1, 1, 1e-3)):
        heights = [b.get_height() for b in ax.patches]
        want = [c[p][ph][key] * scale for p in ("fastmixer", "timm eager") for ph in ("forward", "backward")]
        assert heights == pytest.approx(want)  # the bars are the counts, not empty axes
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fastmixer", "timm eager"]
    assert "MODEL" in axes[2].get_title() and "MODEL" not in axes[0].get_title() + axes[1].get_title()
    assert (tmp_path / "out" / "c.png").stat().st_size > 10_000


def _result(level, target, mode, provider, ms=None, skipped=None):
    case = harness.Case(level, target, mode, provider, 8, "bf16")
    r = {**dataclasses.asdict(case), "label": case.label}
    if ms is None:
        return {**r, "skipped": skipped or "time budget of 60 s used up"}
    return {**r, **harness.metrics(case, [ms], torch.device("cpu"), None)}


def _report(kind):
    env = dict(
        device="NVIDIA H100 80GB HBM3" if kind == "CUDA" else "CPU: x86_64",
        device_kind=kind,
        torch="2.x",
        triton="3.x",
        timm="1.x",
        cuda="12",
        python="3.11",
        fastmixer_backend="triton",
        git_commit="abc",
        date="2026-01-01T00:00:00",
    )
    results = [
        _result("model", "b16", "inference", "fastmixer", 500.0),
        _result("model", "b16", "inference", "timm", 700.0),
        _result("model", "b16", "inference", "timm+compile"),  # skipped
        _result("model", "b16", "inference", "cublas", 400.0),
        _result("op", "token_mix", "forward", "fastmixer", 4.0),
        _result("op", "token_mix", "forward", "timm", 5.0),
        _result("op", "token_mix", "forward", "cublas", 3.0),
    ]
    return {"env": env, "config": {}, "results": results, "counts": []}


def test_limit_provider_labelled_by_device():
    cuda, cpu = harness.markdown(_report("CUDA")), harness.markdown(_report("CPU"))
    assert "| cuBLAS GEMMs only (limit) | 400.000 |" in cuda and "| provider | ms | img/s |" in cuda
    assert "| fastmixer | 500.000 | 16.0 |" in cuda and "| 1.40x | 80% |" in cuda  # vs timm, share of the limit
    assert "| torch.mm GEMMs only (CPU) | 400.000 |" in cpu and "of limit" not in cpu and "1.40x" not in cpu
    assert "MODEL" not in cuda + cpu


def test_timed_figure_separate_panels_and_skipped_named():
    pytest.importorskip("matplotlib", reason="figures need matplotlib (test extra)")
    fig = harness.figure(_report("CPU"))
    model_ax, op_ax = fig.axes
    assert model_ax.get_title() == "model level" and op_ax.get_title() == "op level"
    # own y axes: the ~1000x faster op-level bars do not flatten the model-level ones
    assert model_ax.get_ylim()[1] < 100 < op_ax.get_ylim()[1]
    assert [round(b.get_height(), 3) for b in model_ax.patches] == [16.0, round(8 / 0.7, 3), 20.0]
    texts = [t.get_text() for t in model_ax.texts]
    assert "timm+compile: skipped" in texts  # named where its bar would be
    assert "time budget of 60 s used up" in " ".join(t.get_text() for t in fig.texts)
    legend = [t.get_text() for t in model_ax.get_legend().get_texts()]
    assert legend == ["fastmixer", "timm", "torch.mm GEMMs only (CPU)"]  # no entry for a provider with no bar
    cuda_legend = [t.get_text() for t in harness.figure(_report("CUDA")).axes[1].get_legend().get_texts()]
    assert cuda_legend == ["fastmixer", "timm", "cuBLAS GEMMs only (limit)"]


def test_from_json_rerenders_without_measuring(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="figures need matplotlib (test extra)")
    src = tmp_path / "saved.json"
    src.write_text(json.dumps(_report("CUDA")))
    assert cli_main(["bench", "--from-json", str(src), "--out", str(tmp_path / "re")]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (tmp_path / "re" / "saved.md").read_text().strip()
    assert sorted(p.name for p in (tmp_path / "re").iterdir()) == ["saved.md", "saved.png"]


def test_cli_rejects_unknown_provider(tmp_path):
    assert cli_main(["bench", "--device=cpu", "--providers=fastmixer,tensorrt", f"--out={tmp_path}"]) == 2


def test_git_describe_marks_uncommitted_changes(tmp_path):
    """Reports name the commit they were made at, "+dirty" when tracked files differ from it (results regenerated
    before their own commit), and None outside a git checkout."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert harness.git_describe(tmp_path) is None
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "y")
    clean = harness.git_describe(tmp_path)
    assert clean and "+" not in clean
    (tmp_path / "untracked.txt").write_text("u")  # untracked files do not count
    assert harness.git_describe(tmp_path) == clean
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "r.md").write_text("r1")
    git("add", "bench")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "z")
    clean = harness.git_describe(tmp_path / "bench")  # from a subfolder, as the harness runs it
    (tmp_path / "bench" / "results" / "r.md").write_text("r2")  # regenerated results do not count
    assert harness.git_describe(tmp_path) == clean
    (tmp_path / "f.txt").write_text("b")
    assert harness.git_describe(tmp_path / "bench") == clean + "+dirty"
