"""SASS-level kernel report: every Triton kernel x autotune config x dtype route x model shape, built ahead of time for
sm_90 (H100/H200) and sm_80 (A100) without a GPU. Markdown + JSON.

    python bench/kernel_resources.py                       # -> bench/results/<date>-kernel-report.{md,json}
    python bench/kernel_resources.py --out DIR/NAME.md [--arch 90] [--module token_mix] [--filter bf16] \
        [--selftest] [--sass-dir DIR]                      # subsets; --sass-dir keeps each build's SASS text
    python bench/kernel_resources.py --from-json FILE.json # re-render the Markdown of an existing report (no builds)

Per build: registers, shared memory, spills/stack, theoretical occupancy (CTAs and warps per SM, limiter), the MMA mix
of the whole kernel and of its main loop (HGMMA / HMMA / FFMA counts and shapes), the main loop's operand paths (TMA,
cp.async, plain loads by width, shared loads/stores), whether it waits for each wgmma to finish, and its issue cycles
per step against the MMA cycles of that step. The builds are those of the `gpu_build` tests (tests/aot.py: same specs,
same compile, same limits); the SASS reading is tests/sass.py (its docstring says how loops, FLOPs and cycles are
counted); the JSON schema is described in bench/README.md. Builds that do not fit or do not compile are rows too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from collections import Counter, defaultdict
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import aot  # noqa: E402
import sass  # noqa: E402

SCHEMA = "fastmixer.kernel_report/1"


# ------------------------------------------------------------------------------------------------ one row per build
def _labels(summary: dict[str, Any]) -> tuple[str, str, str]:
    """(route, config, shape) labels of a spec named "module.kernel[route,cfgN,shapes]": the dtype route tag ("bf16",
    "fp32-tf32", "fp32+bf16", ...; the pointer types when the name has no [...]), "cfg3", and the model shapes it
    serves (its "shapes" key, else the remaining parts of the name's [...])."""
    inside = summary["name"][summary["name"].find("[") + 1 : -1] if "[" in summary["name"] else ""
    parts = [p for p in inside.split(",") if p]
    route = parts[0] if parts else summary["dtype"]
    config = next((p for p in parts if re.fullmatch(r"cfg\d+", p)), "")
    if summary.get("shapes"):
        return route, config, "/".join(summary["shapes"])
    rest = [p for p in parts[1:] if not re.fullmatch(r"cfg\d+", p)]
    return route, config, ",".join(rest)


def reusable_rows(path: str, triton_version: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows of an earlier report that still describe a current build, keyed by (build_id, arch): same triton, same
    build_id (kernel source and callees, specialisation). Failed or errored rows are built again."""
    with open(path) as f:
        report = json.load(f)
    if report.get("triton") != triton_version:
        print(f"--update: {path} is from triton {report.get('triton')}, this is {triton_version}: nothing reused")
        return {}
    return {
        (r["build_id"], r["arch"]): r
        for r in report["builds"]
        if r.get("build_id") and r.get("status") in ("ok", "does_not_fit")
    }


def _row_labels(summary: dict[str, Any], arch: int) -> dict[str, Any]:
    """The identifying columns of a row (what a reused row takes from the current spec)."""
    route, config, shape = _labels(summary)
    return dict(
        module=summary["module"],
        name=summary["name"],
        kernel=summary["kernel"],
        dtype=summary["dtype"],
        route=route,
        config=config,
        shape=shape,
        constexprs=summary["constexprs"],
        num_warps=summary["num_warps"],
        num_stages=summary["num_stages"],
        must_fit=summary.get("must_fit", True),
        arch=arch,
        build_id=summary.get("build_id"),  # tests/aot.build_id: the committed row stands for this exact build
    )


def build_row(summary: dict[str, Any], arch: int) -> dict[str, Any]:
    row = _row_labels(summary, arch)
    try:
        res = aot.build(summary, arch)
    except aot.BuildError as e:
        return {**row, "status": "build_failed", "problems": [], "error": str(e).splitlines()[0][:300]}
    except Exception as e:  # worker crash or timeout: a row, not a lost build
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return {**row, "status": "error", "problems": [], "error": err}
    keys = ("registers", "stack_bytes", "local_bytes", "spill_stores", "spill_loads", "shared_bytes")
    row.update({k: res[k] for k in (*keys, "static_shared_bytes", "build_s")})
    row.update(status="ok" if res["ok"] else "does_not_fit", problems=res["problems"], error=None)
    row["occupancy"] = res.get("occupancy")
    row["sass"] = res.get("sass")
    return row


# ------------------------------------------------------------------------------------------------ formatting helpers
def _kb(b: int) -> str:
    return f"{b / 1024:.1f}"


def _mix(counts: dict[str, int] | None) -> str:
    if not counts:
        return "-"
    return " ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _shapes(shapes: dict[str, int] | None) -> str:
    if not shapes:
        return ""
    return ", ".join(f"{v}x {k}" for k, v in shapes.items())


def _main(row: dict[str, Any]) -> dict[str, Any] | None:
    s = row.get("sass")
    return s.get("main_loop") if isinstance(s, dict) else None


def _main_mma(row: dict[str, Any]) -> str:
    ml = _main(row)
    if ml is None:
        return "no loop" if isinstance(row.get("sass"), dict) and "error" not in row["sass"] else "-"
    if not ml["mma_kind"]:
        return "no MMA"
    if ml["mma_kind"] == "FFMA":
        return f"FFMA {ml['counts']['FFMA']}"
    return _shapes(ml["shapes"])


def _waits(ml: dict[str, Any] | None) -> str:
    if ml is None or ml["waits_each_mma"] is None:
        return "n/a"
    return f"{'yes' if ml['waits_each_mma'] else 'no'} (≤{','.join(map(str, ml['wgmma_waits'])) or '-'})"


def _balance(ml: dict[str, Any] | None) -> str:
    if ml is None or not ml["mma_cycles"]:
        return "-"
    return f"{ml['issue_cycles']:.0f} / {ml['mma_cycles']:.0f} = {ml['issue_over_mma']:.2f}"


def _occ(row: dict[str, Any]) -> str:
    o = row.get("occupancy")
    if not o:
        return "-"
    if o["ctas_per_sm"] == 0:
        return "0 (does not launch)"
    return f"{o['ctas_per_sm']} / {o['warps_per_sm']} ({o['limiter']})"


def _fits(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return "yes"
    known = "" if row.get("must_fit", True) else " (known)"
    if row["status"] == "does_not_fit":
        return f"NO{known}: " + "; ".join(row["problems"])
    return f"{row['status'].upper().replace('_', ' ')}{known}: {row.get('error', '')}"


def _cell(x: Any) -> str:
    return str(x).replace("|", "/").replace("\n", " ")


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _span(values: list[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


# ------------------------------------------------------------------------------------------------ summary
def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (kernel, dtype route, arch): builds, how many fit, main-loop MMA kinds and shapes, whole-kernel
    MMA counts, CTAs/warps per SM and limiters of the fitting builds, issue/MMA span, builds waiting each MMA."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r.get("route", r["dtype"]), r["arch"])].append(r)
    out = []
    for (kernel, route, arch), rs in groups.items():
        built = [r for r in rs if r["status"] in ("ok", "does_not_fit")]
        fit = [r for r in built if r["status"] == "ok"]
        mls = [m for m in (_main(r) for r in built) if m]
        kinds = Counter(m["mma_kind"] or "none" for m in mls)
        whole = Counter()
        for r in built:
            if isinstance(r.get("sass"), dict) and "counts" in r["sass"]:
                whole.update({k: v for k, v in r["sass"]["counts"].items() if v})
        ratios = [m["issue_over_mma"] for m in mls if m.get("issue_over_mma")]
        shares = [_hmma_share(m) for m in mls if m.get("mma_flops_per_cta")]
        out.append(
            dict(
                kernel=kernel,
                route=route,
                arch=arch,
                builds=len(rs),
                fit=len(fit),
                not_fitting=[r["name"] for r in rs if r["status"] != "ok"],
                main_loop_mma=dict(kinds),
                main_loop_shapes=sorted({k for m in mls for k in (m["shapes"] or {})}),
                whole_kernel_counts=dict(whole),
                ctas_per_sm=sorted({r["occupancy"]["ctas_per_sm"] for r in fit}),
                warps_per_sm=sorted({r["occupancy"]["warps_per_sm"] for r in fit}),
                limiters=dict(Counter(r["occupancy"]["limiter"] for r in fit)),
                issue_over_mma=[min(ratios), max(ratios)] if ratios else None,
                hmma_flop_share=[min(shares), max(shares)] if shares else None,
                waits_each_mma=sum(1 for m in mls if m["waits_each_mma"]),
                hgmma_loops=sum(1 for m in mls if m["counts"]["HGMMA"]),
            )
        )
    return out


def _hmma_share(ml: dict[str, Any]) -> float:
    """Fraction of a main loop's tensor-MMA FLOPs issued as mma.sync (HMMA) rather than wgmma (HGMMA)."""
    by = ml.get("mma_flops_by_kind") or {}
    tensor = sum(v for k, v in by.items() if k in sass.TENSOR_MMA)
    return round(by.get("HMMA", 0) / tensor, 3) if tensor else 0.0


def _summary_md(summary: list[dict[str, Any]]) -> list[str]:
    by_kernel: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for s in summary:
        by_kernel[(s["kernel"], s["route"])][s["arch"]] = s

    def side(s: dict | None) -> list[str]:
        if s is None:
            return ["-"] * 4
        mma = ", ".join(f"{k} {v}" for k, v in s["main_loop_mma"].items()) or "-"
        share = s.get("hmma_flop_share")
        if share and share[1] > 0 and any("HGMMA" in k for k in s["main_loop_mma"]):
            mma += f" (HMMA {_span([100 * x for x in share])}% of MMA FLOPs)"
        occ = (
            f"{_span(s['ctas_per_sm'])} / {_span(s['warps_per_sm'])} (" + ", ".join(f"{k}" for k in s["limiters"]) + ")"
            if s["fit"]
            else "-"
        )
        bal = _span(s["issue_over_mma"], "{:.2f}") if s["issue_over_mma"] else "-"
        waits = f"{s['waits_each_mma']}/{s['hgmma_loops']}" if s["hgmma_loops"] else "n/a"
        return [mma, occ, bal, waits]

    lines = []
    rows = []
    for (kernel, route), archs in sorted(by_kernel.items()):
        s90, s80 = archs.get(90), archs.get(80)
        n = ", ".join(f"{s['fit']}/{s['builds']}" for s in (s90, s80) if s is not None)
        rows.append([kernel, route, n, *side(s90), *side(s80)])
    head = [
        "kernel",
        "route",
        "fit/builds (90, 80)",
        "sm_90 main-loop MMA (builds)",
        "sm_90 CTAs / warps per SM (limiter)",
        "sm_90 issue/MMA",
        "sm_90 waits each wgmma",
        "sm_80 main-loop MMA (builds)",
        "sm_80 CTAs / warps per SM (limiter)",
        "sm_80 issue/MMA",
        "sm_80 waits",
    ]
    lines += _table(head, rows)
    return lines


# ------------------------------------------------------------------------------------------------ the report
ASSUMPTIONS = [
    "Static SASS counts from `cuobjdump --dump-resource-usage --dump-sass` of each cubin (tests/sass.py): a loop is a "
    "backward branch, its per-iteration count includes both arms of any branch inside it.",
    "Main loop: the innermost loop holding tensor MMA (or FFMA when the kernel has no tensor MMA) with the most MMA "
    "FLOPs; per-iteration figures are per CTA.",
    "MMA FLOPs per CTA step: HGMMA.MxNxK counted once per warpgroup (its 4 warps issue it together), "
    "2*M*N*K*num_warps/4; HMMA per warp, 2*M*N*K*num_warps (m16n8k16 = 4096); FFMA 64 per warp instruction.",
    "MMA cycles = MMA FLOPs per CTA step / dense FLOP per SM per cycle: sm_90 bf16/fp16 4096, tf32 2048; sm_80 "
    "bf16/fp16 2048, tf32 1024; FFMA 256 on both. HMMA on sm_90 is costed at the same dense rate as HGMMA (an upper "
    "bound on its speed there).",
    "Issue cycles = instructions per iteration x max(num_warps, 4)/4 (one warp-instruction per cycle per SM "
    "sub-partition). issue/MMA > 1: the main loop cannot keep the tensor cores busy even with perfect latency hiding.",
    "'waits each wgmma' = a `WARPGROUP.DEPBAR.LE gsb0, 0x0` inside the main loop (every wgmma group drained each "
    "step); the numbers in brackets are the wait depths seen. n/a for HMMA/FFMA loops.",
    "Occupancy: CUDA occupancy-calculator rules (registers in 256-per-warp units per sub-partition, shared memory in "
    "128-byte units + 1 KB reserved per CTA, 64 warps and 32 CTAs per SM; 228 KB shared/SM on sm_90, 164 KB on "
    "sm_80). sm_90 cubins already count the 1 KB reservation as 1 KB static shared (cuobjdump SHARED:1024, "
    "`.nv.reservedSmem`), so it is not added twice there; 'fits' uses the gpu_build check (dynamic + static <= "
    "227 / 163 KB), which is 1 KB stricter on sm_90.",
]


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["builds"]
    n_bad = sum(1 for r in rows if r["status"] != "ok")
    lines = [
        f"# Kernel report: SASS, occupancy and main-loop balance (AOT builds, triton {report['triton']})",
        "",
        f"Generated {report['created']} by `python bench/kernel_resources.py` on {report['host']} "
        f"({report['seconds']:.0f} s, {len(rows)} builds, {n_bad} not fitting or not built). No GPU: theoretical "
        "occupancy and static instruction counts, not measurements. JSON beside this file; schema in "
        "bench/README.md.",
        "",
        "## Summary per kernel and dtype route",
        "",
        "Main-loop MMA: the MMA kind of each build's main loop (number of builds). CTAs / warps per SM: span over the "
        "fitting builds. issue/MMA: issue cycles per main-loop step over its MMA cycles (span over builds).",
        "",
        *_summary_md(report["summary"]),
        "",
        "## Builds that do not fit or do not build",
        "",
    ]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += _table(
            ["build", "arch", "registers", "shared KB", "spills st/ld", "why"],
            [
                [
                    r["name"],
                    f"sm_{r['arch']}" if r["arch"] else "-",
                    r.get("registers", "-"),
                    _kb(r["shared_bytes"] + r["static_shared_bytes"]) if "shared_bytes" in r else "-",
                    f"{r['spill_stores']}/{r['spill_loads']}" if "spill_stores" in r else "-",
                    _fits(r),
                ]
                for r in bad
            ],
        )
    else:
        lines.append("None: every build fits (no spills, shared memory and registers within one block's limits).")
    lines += ["", "## Assumptions", ""] + [f"- {a}" for a in ASSUMPTIONS]
    head = [
        "kernel",
        "config",
        "route",
        "shape",
        "arch",
        "regs",
        "shared KB",
        "spills st/ld, stack",
        "CTAs / warps per SM (limiter)",
        "main-loop MMA",
        "kernel HGMMA/HMMA/FFMA",
        "main-loop operands",
        "waits each wgmma",
        "instr/step",
        "issue / MMA cycles",
        "fits",
    ]
    by_module: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_module[r["module"]].append(r)
    for module, rs in by_module.items():
        lines += ["", f"## {module}", ""]
        table = []
        for r in rs:
            built = r["status"] in ("ok", "does_not_fit")
            ml = _main(r)
            sa = r.get("sass") if isinstance(r.get("sass"), dict) else {}
            table.append(
                [
                    r["kernel"],
                    f"{r['config']} w{r['num_warps']} s{r['num_stages']}" + _tile(r["constexprs"]),
                    r.get("route", r["dtype"]),
                    r["shape"],
                    f"sm_{r['arch']}" if r["arch"] else "-",
                    r["registers"] if built else "-",
                    _kb(r["shared_bytes"] + r["static_shared_bytes"]) if built else "-",
                    f"{r['spill_stores']}/{r['spill_loads']}, {r['stack_bytes']}" if built else "-",
                    _occ(r),
                    _main_mma(r),
                    "/".join(str(sa.get("counts", {}).get(k, "-")) for k in ("HGMMA", "HMMA", "FFMA")) if sa else "-",
                    ", ".join(ml["operand_paths"]) if ml else "-",
                    _waits(ml),
                    ml["instructions"] if ml else "-",
                    _balance(ml),
                    _fits(r),
                ]
            )
        lines += _table(head, table)
    return "\n".join(lines) + "\n"


def _tile(constexprs: dict[str, Any]) -> str:
    keys = [k for k, v in constexprs.items() if k.startswith("BLOCK") and type(v) is int]
    return f" ({','.join(f'{k[6:] or k}={constexprs[k]}' for k in keys)})" if keys else ""


def write_report(report: dict[str, Any], out: str) -> str:
    """Write the Markdown to `out` and the JSON beside it (one build row per line, so diffs stay readable); returns
    the JSON path."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    json_path = os.path.splitext(out)[0] + ".json"
    head = {k: v for k, v in report.items() if k != "builds"}
    with open(json_path, "w") as f:
        f.write("{\n")
        for k, v in head.items():
            f.write(f"{json.dumps(k)}: {json.dumps(v)},\n")
        rows = ",\n".join(json.dumps(r, separators=(",", ":")) for r in report["builds"])
        f.write(f'"builds": [\n{rows}\n]\n}}\n')
    with open(out, "w") as f:
        f.write(render_markdown(report))
    return json_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Markdown path (JSON beside it); default bench/results/<date>-kernel-report.md")
    parser.add_argument("--arch", type=int, action="append", choices=aot.ARCHS, help="default: 90 and 80")
    parser.add_argument("--module", action="append", help="kernel module(s), e.g. token_mix; default: all")
    parser.add_argument("--filter", default="", help="only specs whose name contains this text, e.g. bf16")
    parser.add_argument("--selftest", action="store_true", help="also report tests/aot.py's small self-test kernels")
    parser.add_argument("--sass-dir", help="also write each build's SASS text (cuobjdump) into this folder")
    parser.add_argument("--from-json", help="re-render the Markdown of this JSON report (no builds)")
    parser.add_argument(
        "--update",
        help="an earlier report JSON: keep its rows whose build_id (tests/aot.build_id) and arch match a current "
        "build, build only the rest (a kernel change rebuilds that kernel's specs, not all ~700)",
    )
    args = parser.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        report["summary"] = summarize(report["builds"])  # with this version's summary rules
        out = args.out or os.path.splitext(args.from_json)[0] + ".md"
        write_report(report, out)
        print(f"wrote {out} and its JSON")
        return 0

    archs = args.arch or list(aot.ARCHS)
    modules = [m if "." in m or ":" in m else f"fastmixer.kernels.{m}" for m in (args.module or aot.KERNEL_MODULES)]
    if args.selftest:
        modules.append(aot.SELFTEST_MODULE)
    if args.sass_dir:
        os.makedirs(args.sass_dir, exist_ok=True)
        os.environ["FASTMIXER_AOT_SASS_DIR"] = os.path.abspath(args.sass_dir)  # read by the build worker
    out = args.out or os.path.join(ROOT, "bench", "results", f"{datetime.date.today().isoformat()}-kernel-report.md")

    import triton

    reuse = reusable_rows(args.update, triton.__version__) if args.update else {}
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for module in modules:
        try:
            summaries = aot.list_specs(module)
        except Exception as e:
            err = str(e).splitlines()[0][:300]
            rows.append(dict(module=module, name=module, kernel=module.rsplit(".", 1)[-1], dtype="-", route="-",
                             config="", shape="", constexprs={}, num_warps=0, num_stages=0, arch=0,
                             status="no_specs", problems=[], error=err))  # fmt: skip
            print(f"{module}: NO SPECS: {err}", flush=True)
            continue
        for summary in summaries:
            if args.filter not in summary["name"]:
                continue
            for arch in (a for a in archs if a in aot.spec_archs(summary)):
                old = reuse.get((summary.get("build_id"), arch))
                row = {**old, **_row_labels(summary, arch)} if old else build_row(summary, arch)
                rows.append(row)
                ml = _main(row)
                print(
                    f"{row['name']} sm_{arch}: {row['status']} regs {row.get('registers', '-')} occ {_occ(row)} "
                    f"main {_main_mma(row)} {_balance(ml)} ({row.get('build_s', '-')} s)",
                    flush=True,
                )
    report = dict(
        schema=SCHEMA,
        created=datetime.datetime.now().isoformat(timespec="seconds"),
        triton=triton.__version__,
        host=f"{platform.machine()}, {os.cpu_count()} CPUs",
        seconds=round(time.perf_counter() - start, 1),
        constants={str(a): sass.ARCH[a] for a in sorted(sass.ARCH)},
        assumptions=ASSUMPTIONS,
        summary=summarize(rows),
        builds=rows,
    )
    json_path = write_report(report, out)
    bad = sum(1 for r in rows if r["status"] != "ok")
    print(f"{len(rows)} builds, {bad} not fitting or not built; {report['seconds']:.0f} s. Wrote {out} and {json_path}")
    # Builds that do not fit are findings (rows of the report); a spec list that cannot load or a dead worker is not.
    broken = [r["name"] for r in rows if r["status"] in ("no_specs", "error")]
    broken += [r["name"] for r in rows if isinstance(r.get("sass"), dict) and "error" in r["sass"]]
    if broken:
        print(f"ERRORS in {len(broken)} rows: {broken[:10]}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
