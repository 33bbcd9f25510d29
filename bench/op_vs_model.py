"""Per fused op, measured on a GPU vs the H100/H200 time MODEL: forward and backward, fastmixer and timm eager.

    python bench/op_vs_model.py MEASURED.json [MEASURED.json ...] [--model TIME_MODEL.json] [--results DIR]

MEASURED files (any mix; the format is recognised from the content):
- a `fastmixer bench` JSON (fastmixer/bench/harness.py): its op-level rows (level "op");
- a pytest-benchmark JSON of `pytest bench/test_ops.py` (each benchmark's extra_info holds the harness's CUDA-event
  median "ms", its label and the device);
- the runtime selection's cache (fastmixer/select.py, `selection-v1.json`): fused vs reference median ms per op key;
- a text log holding the selection's printed lines (`python -m fastmixer.select`, `describe_selection`; gpu_report.sh
  appends them to env.txt): the same figures, also for noisy verdicts, which the cache does not keep.
Each measured row is matched to the time model of the same device kind (the newest committed
`bench/results/*-time-model-{h100,h200}.json`, or --model), variant, batch and dtype. Forward is the forward row;
backward is measured as (forward + backward) - forward from the same source, and modelled as the model's backward
launches. Provider mapping: fastmixer / fused -> the model's "fastmixer", timm / reference (timm's own aten
composition) -> "timm eager", timm+compile -> "compile plan", cublas -> "bare GEMMs". A measured row the model has no
case for, and a device the model does not know, are said so in the output; nothing here raises on them.

Reads JSON only (no torch import): bench/gpu_report.sh runs it at the end, within its time budget.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OPS = ("token_mix", "channel_mix")
MODEL_PROVIDER = {"fastmixer": "fastmixer", "fastmixer+compile": "fastmixer", "fused": "fastmixer",
                  "timm": "timm eager", "reference": "timm eager", "timm+compile": "compile plan",
                  "cublas": "bare GEMMs"}  # fmt: skip
PROVIDER_ORDER = ("fused", "fastmixer", "fastmixer+compile", "reference", "timm", "timm+compile", "cublas")
SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
# (tokens S, channels C) of the 224 px variants -> variant name (the selection cache records x's shape only)
VARIANT_BY_SHAPE = {(196, 512): "s16", (196, 768): "b16", (196, 1024): "l16", (49, 768): "b32", (49, 1024): "l32"}
_LABEL = re.compile(r"^(?P<op>\w+)@(?P<variant>\w+) (?P<mode>\S+) b(?P<batch>\d+) (?P<dtype>\w+)$")
# one line of fastmixer.select.describe_selection(): "  token_mix x=256x196x768 bfloat16 hidden=384 forward: fused
# (faster, timed; fused 0.123 ms, reference 0.456 ms) on NVIDIA H100 80GB HBM3 sm_90"
_SELECTION_LINE = re.compile(
    r"^\s+(?P<op>\w+) x=(?P<x>\d+x\d+x\d+) (?P<dtype>\w+) hidden=\d+(?P<autocast> autocast=\w+)? "
    r"(?P<mode>forward\+backward|forward): .*; fused (?P<fused>[\d.]+ ms|-), reference (?P<reference>[\d.]+ ms|-)\) "
    r"on (?P<device>.+)$"
)


def device_key(name: str | None) -> str | None:
    """The model's key ("h100" or "h200") for a CUDA device name it covers (H100 SXM, H200), else None."""
    if not name:
        return None
    up = name.upper()
    if re.search(r"\bH200\b", up):
        return "h200"
    if re.search(r"\bH100\b", up) and not re.search(r"PCIE|\bNVL\b", up):  # the model is the SXM part's
        return "h100"
    return None


def newest_model(key: str, results: Path = RESULTS) -> Path | None:
    """The newest `<date>-time-model-<key>.json` under `results` (dates sort as text)."""
    found = sorted(results.glob(f"*-time-model-{key}.json"))
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------------ measured rows
def _row(source: str, device: str | None, variant: str | None, batch: Any, dtype: Any, op: str, mode: str,
         provider: str, ms: float) -> dict[str, Any]:  # fmt: skip
    return dict(source=source, device=device, variant=variant, batch=batch, dtype=SHORT_DTYPE.get(dtype, dtype),
                op=op, mode=mode, provider=provider, ms=float(ms))  # fmt: skip


def _bench_rows(data: dict[str, Any], source: str) -> list[dict[str, Any]]:
    device = data.get("env", {}).get("device")
    rows = []
    for r in data.get("results", []):
        if r.get("level") == "op" and isinstance(r.get("ms"), (int, float)):
            rows.append(_row(source, device, r.get("variant", "b16"), r.get("batch"), r.get("dtype"), r["target"],
                             r.get("mode"), r.get("provider"), r["ms"]))  # fmt: skip
    return rows


def _pytest_bench_rows(data: dict[str, Any], source: str) -> list[dict[str, Any]]:
    rows = []
    for b in data.get("benchmarks", []):
        info, params = b.get("extra_info") or {}, b.get("params") or {}
        m = _LABEL.match(str(info.get("label", "")))
        if m is None or not isinstance(info.get("ms"), (int, float)) or m["op"] not in OPS:
            continue  # model-level benchmarks and failed ones
        rows.append(_row(source, info.get("device"), m["variant"], int(m["batch"]), m["dtype"], m["op"], m["mode"],
                         params.get("provider", "?"), info["ms"]))  # fmt: skip
    return rows


def _selection_rows(data: dict[str, Any], source: str) -> list[dict[str, Any]]:
    rows = []
    for key, rec in (data.get("entries") or {}).items():
        try:
            f = dict(part.split("=", 1) for part in key.split("|"))
            batch, s, c = (int(v) for v in f["x"].split("x"))
        except (ValueError, KeyError):
            continue
        if f.get("autocast", "none") != "none" or not isinstance(rec, dict):
            continue
        device = re.sub(r"\s+sm_\d+$", "", f.get("device", ""))
        mode = "forward+backward" if f.get("grad") == "1" else "forward"
        for provider in ("fused", "reference"):
            ms = rec.get(f"{provider}_ms")
            if isinstance(ms, (int, float)):
                rows.append(_row(source, device, VARIANT_BY_SHAPE.get((s, c)), batch, f.get("dtype"),
                                 f.get("op", "?"), mode, provider, ms))  # fmt: skip
    return rows


def _selection_log_rows(text: str, source: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        m = _SELECTION_LINE.match(line)
        if m is None or m["autocast"]:
            continue
        batch, s, c = (int(v) for v in m["x"].split("x"))
        device = re.sub(r"\s+sm_\d+$", "", m["device"].strip())
        for provider in ("fused", "reference"):
            if m[provider] != "-":
                rows.append(_row(source, device, VARIANT_BY_SHAPE.get((s, c)), batch, m["dtype"], m["op"],
                                 m["mode"], provider, float(m[provider].split()[0])))  # fmt: skip
    return rows


def measured_rows(path: str | Path) -> list[dict[str, Any]]:
    """Op-level measured rows of one file (fastmixer bench JSON, pytest-benchmark JSON, selection cache, or a text
    log with the selection's lines). Raises ValueError naming the file when it is none of these."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e})") from e
    try:
        data = json.loads(text)
    except ValueError:
        return _selection_log_rows(text, path.name)
    if isinstance(data, dict) and "results" in data and "env" in data:
        return _bench_rows(data, path.name)
    if isinstance(data, dict) and "benchmarks" in data:
        return _pytest_bench_rows(data, path.name)
    if isinstance(data, dict) and "entries" in data:
        return _selection_rows(data, path.name)
    raise ValueError(f"{path}: expected a fastmixer bench JSON, a pytest-benchmark JSON or a selection cache")


# ------------------------------------------------------------------------------------------------ comparison
def compare_ops(rows: Sequence[dict[str, Any]], model: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (source, op, variant, batch, dtype, provider): measured forward / backward ms beside the model's.
    Backward measured = forward+backward - forward (None when either is missing)."""
    cases = {(c["variant"], c["batch"], c["dtype"]): c for c in model.get("cases", [])}
    groups: dict[tuple, dict[str, float]] = {}
    for r in rows:
        k = (r["source"], r["op"], r["variant"], r["batch"], r["dtype"], r["provider"])
        groups.setdefault(k, {})[r["mode"]] = r["ms"]
    out = []
    order = {p: i for i, p in enumerate(PROVIDER_ORDER)}
    ops = {op: i for i, op in enumerate(OPS)}
    for k in sorted(groups, key=lambda k: (k[0], ops.get(k[1], 9), str(k[2]), -(k[3] or 0), k[4], order.get(k[5], 99))):
        source, op, variant, batch, dtype, provider = k
        t = groups[k]
        fwd, fb = t.get("forward"), t.get("forward+backward")
        bwd = fb - fwd if fwd is not None and fb is not None else None
        row = dict(source=source, op=op, variant=variant, batch=batch, dtype=dtype, provider=provider,
                   model_provider=MODEL_PROVIDER.get(provider), fwd_ms=fwd, fwd_bwd_ms=fb, bwd_ms=bwd,
                   model_fwd_ms=None, model_bwd_ms=None, note="")  # fmt: skip
        case = cases.get((variant, batch, dtype))
        if row["model_provider"] is None:
            row["note"] = f"no model for provider {provider!r}"
        elif case is None:
            row["note"] = "not modelled (no case of this variant, batch and dtype)"
        elif op not in case["ops"].get(row["model_provider"], {}):
            row["note"] = f"not modelled ({row['model_provider']}, {op})"
        else:
            m = case["ops"][row["model_provider"]][op]
            row["model_fwd_ms"], row["model_bwd_ms"] = m["forward"]["us"] / 1e3, m["backward"]["us"] / 1e3
            missing = [name for name, v in (("forward", fwd), ("forward+backward", fb)) if v is None]
            if missing:
                row["note"] = "no measured " + " and ".join(missing) + " row"
        out.append(row)
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ratio(measured: float | None, model: float | None) -> str:
    return "-" if measured is None or not model else f"{measured / model:.2f}"


def format_ops(rows: Sequence[dict[str, Any]], model_name: str, model_path: str, device: str) -> str:
    lines = [
        f"### Per fused op: measured vs MODEL ({model_name} model: {model_path}; measured on {device})",
        "",
        "Backward measured = (forward + backward) - forward, same source. MODEL figures are the time model's, not a "
        "measurement; a ratio > 1 means slower than modelled.",
        "",
        "| source | op | model | batch | dtype | measured | as MODEL | fwd ms | fwd MODEL ms | fwd meas/MODEL | "
        "bwd ms | bwd MODEL ms | bwd meas/MODEL | note |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['op']} | {str(r['variant']).upper()} | {r['batch']} | {r['dtype']} | "
            f"{r['provider']} | {r['model_provider'] or '-'} | {_ms(r['fwd_ms'])} | {_ms(r['model_fwd_ms'])} | "
            f"{_ratio(r['fwd_ms'], r['model_fwd_ms'])} | {_ms(r['bwd_ms'])} | {_ms(r['model_bwd_ms'])} | "
            f"{_ratio(r['bwd_ms'], r['model_bwd_ms'])} | {r['note']} |"
        )
    return "\n".join(lines)


def report(paths: Sequence[str | Path], results: Path = RESULTS, model_path: str | Path | None = None) -> str:
    """The whole printable comparison for the measured files `paths` (missing or unreadable files, devices the
    model does not know and files without op rows are stated, never raised)."""
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    for p in paths:
        if not Path(p).is_file():
            notes.append(f"- {p}: not found (its step did not run or wrote nothing)")
            continue
        try:
            got = measured_rows(p)
        except ValueError as e:
            notes.append(f"- {e}")
            continue
        if not got:
            notes.append(f"- {Path(p).name}: no op-level timings in it")
        rows += got
    by_device: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_device.setdefault(r["device"] or "unknown device", []).append(r)
    parts = ["## Per fused op: measured vs the time MODEL (bench/op_vs_model.py)", ""]
    for device, drows in by_device.items():
        key = device_key(device)
        path = Path(model_path) if model_path is not None else (newest_model(key, results) if key else None)
        if key is None and model_path is None:
            notes.append(f"- {device}: the time model knows H100 SXM and H200 only; {len(drows)} measured op rows "
                         "not compared")  # fmt: skip
            continue
        if path is None or not path.is_file():
            notes.append(f"- {device}: no time model file for {key} under {results} (bench/time_model.py writes it)")
            continue
        try:
            model = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            notes.append(f"- {path}: cannot read the time model ({e})")
            continue
        name = model.get("device", {}).get("name", key or "?")
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        where = f"{shown}, made at git {model.get('git_commit') or '?'}"  # a stale model shows here
        parts += [format_ops(compare_ops(drows, model), name, where, device), ""]
    if notes:
        parts += ["Not compared:", *notes, ""]
    if not rows and not notes:
        parts += ["no measured files given", ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measured", nargs="+", help="fastmixer bench JSON, pytest-benchmark JSON, selection cache or "
                        "a text log with the selection's lines")  # fmt: skip
    parser.add_argument("--model", default=None, help="time model JSON (default: the newest for the device kind)")
    parser.add_argument("--results", default=str(RESULTS), help="folder holding <date>-time-model-<device>.json")
    args = parser.parse_args(argv)
    print(report(args.measured, Path(args.results), args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
