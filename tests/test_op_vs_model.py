"""bench/op_vs_model.py: per fused op, measured (fastmixer bench JSON, pytest-benchmark JSON, selection cache) vs the
time MODEL, forward and backward. Measured files and the model here are TEST FIXTURES (invented times), in the shapes
fastmixer/bench/harness.py, bench/conftest.py, fastmixer/select.py and bench/time_model.py write."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import op_vs_model as ovm  # noqa: E402

H100_NAME = "NVIDIA H100 80GB HBM3 (TEST FIXTURE)"


def _model(key="h100"):
    """A time-model JSON in bench/time_model.py's shape: one case, B/16 batch 256 bf16, two providers' per-op us."""
    us = {"fastmixer": (200.0, 800.0, 1000.0, 2000.0), "timm eager": (500.0, 1000.0, 900.0, 1800.0)}
    ops = {
        prov: {"token_mix": {"forward": {"us": t[0]}, "backward": {"us": t[1]}},
               "channel_mix": {"forward": {"us": t[2]}, "backward": {"us": t[3]}}}
        for prov, t in us.items()
    }  # fmt: skip
    return {"device": {"key": key, "name": f"{key.upper()} (TEST FIXTURE)"},
            "cases": [{"variant": "b16", "batch": 256, "dtype": "bf16", "ops": ops}]}  # fmt: skip


def _bench_json(device=H100_NAME):
    """A `fastmixer bench` report with op rows; channel_mix fastmixer has no forward+backward row (cut short)."""
    base = dict(level="op", variant="b16", batch=256, dtype="bf16", num_blocks=None)
    rows = [
        dict(base, target="token_mix", mode="forward", provider="fastmixer", ms=0.25),
        dict(base, target="token_mix", mode="forward+backward", provider="fastmixer", ms=1.25),
        dict(base, target="token_mix", mode="forward", provider="timm", ms=0.6),
        dict(base, target="token_mix", mode="forward+backward", provider="timm", ms=1.8),
        dict(base, target="channel_mix", mode="forward", provider="fastmixer", ms=1.1),
        dict(base, target="channel_mix", mode="forward+backward", provider="fastmixer", skipped="time budget"),
        dict(base, target="channel_mix", mode="forward", provider="timm", batch=64, ms=0.3),  # no model case
        dict(level="model", target="b16", mode="inference", provider="fastmixer", batch=256, dtype="bf16", ms=9.0),
    ]
    return {"env": {"device": device, "device_kind": "CUDA"}, "results": rows}


def _pytest_bench_json():
    def bench(op, mode, provider, ms):
        label = f"{op}@b16 {mode} b256 bf16"
        return {"name": f"test_op[{op}-{mode}-{provider}]", "params": {"op": op, "mode": mode, "provider": provider},
                "extra_info": {"ms": ms, "label": label, "device": H100_NAME}}  # fmt: skip

    cases = [("forward", "cublas", 0.7), ("forward", "fastmixer", 1.2), ("forward+backward", "fastmixer", 3.6)]
    return {"benchmarks": [bench("channel_mix", *c) for c in cases]}


def _selection_json(device="NVIDIA H100 80GB HBM3 sm_90"):
    def key(op, grad):
        return (f"op={op}|x=256x196x768|dtype=bfloat16|w=bfloat16|ln=bfloat16|autocast=none|hidden=384|scale=0"
                f"|act=gelu|tf32=0|grad={grad}|device={device}|fastmixer=0|torch=2.11|triton=3.6")  # fmt: skip

    rec = dict(choice="fused", reason="fixture", time=0.0)
    return {"format": 1, "entries": {
        key("token_mix", 0): dict(rec, fused_ms=0.2, reference_ms=0.5),
        key("token_mix", 1): dict(rec, fused_ms=1.0, reference_ms=1.5),
    }}  # fmt: skip


def _selection_log(monkeypatch):
    """env.txt as gpu_report.sh writes it: fastmixer.select's own printed lines (describe_selection), for the
    selection_json keys plus a noisy verdict (not cached on disk) and an autocast key (not compared)."""
    import threading

    from fastmixer import select

    keys = list(_selection_json()["entries"])
    memory = {
        keys[0]: select._record("fused", "faster", "timed", 0.2, 0.5),
        keys[1]: select._record("fused", "noisy (quartiles overlap): fused kept, not cached on disk", "timed", 1.0,
                                1.5),
        keys[0].replace("op=token_mix", "op=channel_mix").replace("hidden=384", "hidden=3072"): select._record(
            "reference", "faster", "timed", 1.1, 0.9),
        keys[0].replace("autocast=none", "autocast=bfloat16"): select._record("fused", "faster", "timed", 9.0, 9.0),
    }  # fmt: skip
    state = select._State(memory=memory, untimed={}, warned=set(), lock=threading.RLock(), fast={})
    monkeypatch.setattr(select, "_STATE", state)
    return "== runtime selection\nfused vs reference per op\n" + "\n".join(select.describe_selection()) + "\n"


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_device_key():
    assert ovm.device_key("NVIDIA H100 80GB HBM3") == "h100"
    assert ovm.device_key("NVIDIA H200") == "h200"
    assert ovm.device_key("NVIDIA H100 PCIe") is None  # the model is the SXM part's
    assert ovm.device_key("NVIDIA GH200 480GB") is None
    assert ovm.device_key("NVIDIA A100-SXM4-80GB") is None
    assert ovm.device_key(None) is None


def test_each_format_gives_op_rows(tmp_path):
    bench = ovm.measured_rows(_write(tmp_path, "report.json", _bench_json()))
    assert {(r["op"], r["mode"], r["provider"]) for r in bench} >= {("token_mix", "forward+backward", "timm")}
    assert all(r["device"] == H100_NAME for r in bench) and len(bench) == 6  # model row and skipped row left out
    pyb = ovm.measured_rows(_write(tmp_path, "pytest_bench.json", _pytest_bench_json()))
    assert (pyb[0]["variant"], pyb[0]["batch"], pyb[0]["dtype"], pyb[0]["provider"]) == ("b16", 256, "bf16", "cublas")
    sel = ovm.measured_rows(_write(tmp_path, "selection-v1.json", _selection_json()))
    assert {(r["mode"], r["provider"], r["ms"]) for r in sel} == {
        ("forward", "fused", 0.2), ("forward", "reference", 0.5),
        ("forward+backward", "fused", 1.0), ("forward+backward", "reference", 1.5),
    }  # fmt: skip
    assert {r["device"] for r in sel} == {"NVIDIA H100 80GB HBM3"} and {r["variant"] for r in sel} == {"b16"}
    with pytest.raises(ValueError, match="expected a fastmixer bench JSON"):
        ovm.measured_rows(_write(tmp_path, "other.json", {"schema": "x"}))


def test_selection_log_lines_from_describe_selection(tmp_path, monkeypatch):
    log = tmp_path / "env.txt"
    log.write_text(_selection_log(monkeypatch))
    rows = ovm.measured_rows(log)
    got = {(r["op"], r["mode"], r["provider"]): r["ms"] for r in rows}
    assert got == {
        ("token_mix", "forward", "fused"): 0.2,
        ("token_mix", "forward", "reference"): 0.5,
        ("token_mix", "forward+backward", "fused"): 1.0,
        ("token_mix", "forward+backward", "reference"): 1.5,
        ("channel_mix", "forward", "fused"): 1.1,
        ("channel_mix", "forward", "reference"): 0.9,
    }  # fmt: skip  (the autocast key is left out)
    assert {(r["device"], r["variant"], r["batch"], r["dtype"]) for r in rows} == {
        ("NVIDIA H100 80GB HBM3", "b16", 256, "bf16")
    }
    out = {(r["op"], r["provider"]): r for r in ovm.compare_ops(rows, _model())}
    assert out[("token_mix", "reference")]["bwd_ms"] == pytest.approx(1.0)
    assert out[("channel_mix", "fused")]["note"] == "no measured forward+backward row"


def test_compare_backward_is_difference_and_ratios(tmp_path):
    rows = ovm.measured_rows(_write(tmp_path, "report.json", _bench_json()))
    out = {(r["op"], r["provider"], r["batch"]): r for r in ovm.compare_ops(rows, _model())}
    tok = out[("token_mix", "fastmixer", 256)]
    assert tok["fwd_ms"] == 0.25 and tok["bwd_ms"] == pytest.approx(1.0)
    assert tok["model_provider"] == "fastmixer" and tok["model_fwd_ms"] == 0.2 and tok["model_bwd_ms"] == 0.8
    timm = out[("token_mix", "timm", 256)]
    assert timm["model_provider"] == "timm eager" and timm["bwd_ms"] == pytest.approx(1.2)
    assert timm["model_fwd_ms"] == 0.5 and timm["model_bwd_ms"] == 1.0 and timm["note"] == ""
    # the missing forward+backward row: forward compared, backward not, and said so
    ch = out[("channel_mix", "fastmixer", 256)]
    assert ch["fwd_ms"] == 1.1 and ch["bwd_ms"] is None and ch["model_fwd_ms"] == 1.0
    assert ch["note"] == "no measured forward+backward row"
    # a batch the model has no case for
    b64 = out[("channel_mix", "timm", 64)]
    assert b64["model_fwd_ms"] is None and "not modelled" in b64["note"]
    md = ovm.format_ops(list(out.values()), "H100 (TEST FIXTURE)", "model.json", H100_NAME)
    line = next(x for x in md.splitlines() if x.startswith("| report.json | token_mix | B16 | 256 | bf16 | fastmixer"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[7:13] == ["0.250", "0.200", "1.25", "1.000", "0.800", "1.25"]
    line = next(x for x in md.splitlines() if "| channel_mix | B16 | 256 | bf16 | fastmixer" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[10:13] == ["-", "2.000", "-"]


def test_report_picks_the_device_model_and_names_what_it_cannot_compare(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    _write(results, "2000-01-01-time-model-h100.json", {"cases": []})  # older: not taken
    _write(results, "2000-01-02-time-model-h100.json", _model("h100"))
    files = [
        _write(tmp_path, "report.json", _bench_json()),
        _write(tmp_path, "pytest_bench.json", _pytest_bench_json()),
        _write(tmp_path, "selection-v1.json", _selection_json()),
        _write(tmp_path, "a100.json", _bench_json(device="NVIDIA A100-SXM4-80GB")),  # a device the model lacks
        _write(tmp_path, "h200.json", _bench_json(device="NVIDIA H200")),  # known device, no model file
        _write(tmp_path, "cpu.json", {"env": {"device": "CPU", "device_kind": "CPU"}, "results": []}),
        tmp_path / "never-written.json",
    ]
    text = ovm.report(files, results)
    assert "2000-01-02-time-model-h100.json" in text and "2000-01-01" not in text
    assert "| selection-v1.json | token_mix | B16 | 256 | bf16 | fused | fastmixer | 0.200 | 0.200 | 1.00 |" in text
    assert "| pytest_bench.json | channel_mix | B16 | 256 | bf16 | cublas | bare GEMMs |" in text
    assert "not modelled (bare GEMMs, channel_mix)" in text  # the fixture model has no bare-GEMMs provider
    assert "NVIDIA A100-SXM4-80GB: the time model knows H100 SXM and H200 only; 6 measured op rows" in text
    assert "NVIDIA H200: no time model file for h200" in text
    assert "cpu.json: no op-level timings in it" in text
    assert "never-written.json: not found" in text
    heading = ""
    for x in text.splitlines():  # every table sits under a heading that says MODEL
        heading = x if x.startswith("#") else heading
        if x.startswith("|---"):
            assert "MODEL" in heading


def test_cli_prints_and_exits_zero_on_unknown_device(tmp_path, capsys):
    f = _write(tmp_path, "a100.json", _bench_json(device="NVIDIA A100-SXM4-80GB"))
    assert ovm.main([str(f), "--results", str(tmp_path)]) == 0
    assert "knows H100 SXM and H200 only" in capsys.readouterr().out


def test_committed_time_model_has_the_per_op_fields(tmp_path):
    path = ovm.newest_model("h100")
    if path is None:
        pytest.skip("no committed time model under bench/results (bench/time_model.py writes it)")
    rows = ovm.compare_ops(ovm.measured_rows(_write(tmp_path, "r.json", _bench_json())), json.loads(path.read_text()))
    tok = next(r for r in rows if r["op"] == "token_mix" and r["provider"] == "fastmixer")
    assert tok["model_fwd_ms"] > 0 and tok["model_bwd_ms"] > 0 and tok["note"] == ""
