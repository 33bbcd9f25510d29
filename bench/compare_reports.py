"""Before / after of two kernel reports (bench/kernel_resources.py JSON), per kernel x dtype route at one arch: build
count, registers, spill bytes, CTAs per SM, main-loop instructions per step, issue cycles per MMA cycle and the main
loop's MMA kind, each as min-max over the builds. Markdown on stdout; kernels whose rows are identical are left out
unless --all. What the session notes' "SASS before vs after" tables are made from:

    python bench/compare_reports.py OLD.json NEW.json [--arch 90] [--kernel _token_mix_fwd_kernel] [--all]
    git show REV:bench/results/<date>-kernel-report.json > /tmp/old.json   # a committed report as OLD
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any

COLUMNS = ("builds", "registers", "spill B", "CTAs/SM", "loop instr", "issue/MMA", "MMA")


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    fmt = "{:.2f}" if any(isinstance(v, float) and not float(v).is_integer() for v in values) else "{:.0f}"
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


def summarize(report: dict[str, Any], arch: int) -> dict[tuple[str, str], dict[str, str]]:
    """(kernel, route) -> the COLUMNS as text, over the report's builds at `arch` that compiled."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in report["builds"]:
        if row.get("arch") == arch and row.get("registers") is not None:
            groups[row["kernel"], row.get("route", row.get("dtype", "?"))].append(row)
    out = {}
    for key, rows in groups.items():
        loops = [r["sass"]["main_loop"] for r in rows if (r.get("sass") or {}).get("main_loop")]
        kinds = sorted({ml.get("mma_kind") or "-" for ml in loops})
        out[key] = {
            "builds": str(len(rows)),
            "registers": _span([r["registers"] for r in rows]),
            "spill B": _span([r.get("spill_stores") or 0 for r in rows]),
            "CTAs/SM": _span([(r.get("occupancy") or {}).get("ctas_per_sm", 0) for r in rows]),
            "loop instr": _span([ml["instructions"] for ml in loops]),
            "issue/MMA": _span([ml["issue_over_mma"] for ml in loops if ml.get("issue_over_mma") is not None]),
            "MMA": "+".join(kinds) if kinds else "-",
        }
    return out


def compare(old: dict[str, Any], new: dict[str, Any], arch: int = 90, kernel: str | None = None,
            show_all: bool = False) -> str:  # fmt: skip
    """The Markdown table: one row per (kernel, route) in either report, cells "before / after" where they differ."""
    a, b = summarize(old, arch), summarize(new, arch)
    lines = [
        f"SASS before / after, sm_{arch}: {old.get('triton', '?')} report of {old.get('created', '?')} vs "
        f"{new.get('triton', '?')} report of {new.get('created', '?')}",
        "",
        "| kernel | route | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for key in sorted(set(a) | set(b)):
        if kernel and key[0] != kernel:
            continue
        before, after = a.get(key), b.get(key)
        if before == after and not show_all:
            continue
        cells = []
        for col in COLUMNS:
            x = before[col] if before else "(none)"
            y = after[col] if after else "(none)"
            cells.append(x if x == y else f"{x} / {y}")
        lines.append(f"| `{key[0]}` | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--kernel", help="one kernel function, e.g. _token_mix_fwd_kernel")
    parser.add_argument("--all", action="store_true", help="also the kernels whose rows did not change")
    args = parser.parse_args(argv)
    with open(args.old) as f:
        old = json.load(f)
    with open(args.new) as f:
        new = json.load(f)
    print(compare(old, new, args.arch, args.kernel, args.all), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
