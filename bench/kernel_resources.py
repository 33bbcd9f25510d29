"""Registers, stack, spills and shared memory of every Triton kernel x autotune config x dtype, built ahead of time for
sm_90 (H100) and sm_80 (A100) without a GPU. Prints a Markdown table and writes it to --out.

    python bench/kernel_resources.py --out bench/results/kernel_resources.md [--arch 90] [--module norm_pool] \
        [--filter bf16]

The builds are those of the `gpu_build` tests (tests/aot.py): same specs, same compile, same limits.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import aot

COLUMNS = ("kernel", "config", "dtype", "arch", "registers", "stack", "spills st/ld", "shared KB", "fits", "build s")


def _config(summary: dict) -> str:
    consts = ",".join(f"{k}={v}" for k, v in summary["constexprs"].items() if type(v) is int and k.isupper())
    return f"{summary['name']} w{summary['num_warps']} s{summary['num_stages']}" + (f" ({consts})" if consts else "")


def _row(summary: dict, arch: int) -> tuple[list[str], bool]:
    head = [summary["kernel"], _config(summary), summary["dtype"], f"sm_{arch}"]
    try:
        r = aot.build(summary, arch)
    except aot.BuildError as e:
        return [*head, "-", "-", "-", "-", "BUILD FAILED: " + str(e).splitlines()[0][:120], "-"], False
    shared = (r["shared_bytes"] + r["static_shared_bytes"]) / 1024
    fits = "yes" if r["ok"] else "NO: " + "; ".join(r["problems"])
    cells = [str(r["registers"]), str(r["stack_bytes"]), f"{r['spill_stores']}/{r['spill_loads']}", f"{shared:.1f}"]
    return [*head, *cells, fits, f"{r['build_s']:.1f}"], r["ok"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Markdown file to write the table to")
    parser.add_argument("--arch", type=int, action="append", choices=aot.ARCHS, help="default: 90 and 80")
    parser.add_argument("--module", action="append", help="kernel module(s), e.g. token_mix; default: all")
    parser.add_argument("--filter", default="", help="only specs whose name contains this text, e.g. bf16")
    parser.add_argument("--selftest", action="store_true", help="also list tests/aot.py's small self-test kernels")
    args = parser.parse_args(argv)
    archs = args.arch or list(aot.ARCHS)
    modules = [m if "." in m else f"fastmixer.kernels.{m}" for m in (args.module or aot.KERNEL_MODULES)]
    if args.selftest:
        modules.append(aot.SELFTEST_MODULE)

    import triton

    start = time.perf_counter()
    lines = [
        f"# Triton kernel resources (ahead-of-time builds, triton {triton.__version__}, {platform.machine()})",
        "",
        f"Limits per block: shared {aot.SHARED_LIMIT[90] // 1024} KB (sm_90), {aot.SHARED_LIMIT[80] // 1024} KB "
        "(sm_80); no spills, no stack. shared KB = dynamic + static.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    print("\n".join(lines), flush=True)
    bad = 0
    for module in modules:
        try:
            summaries = aot.list_specs(module)
        except Exception as e:
            line = f"| {module} | - | - | - | - | - | - | - | NO SPECS: {str(e).splitlines()[0][:150]} | - |"
            lines.append(line)
            print(line, flush=True)
            bad += 1
            continue
        for summary in summaries:
            if args.filter not in summary["name"]:
                continue
            for arch in archs:
                cells, ok = _row(summary, arch)
                bad += not ok
                line = "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"
                lines.append(line)
                print(line, flush=True)
    total = time.perf_counter() - start
    lines += ["", f"{len(lines) - 6} rows, {bad} not fitting or failed; {total:.0f} s of builds."]
    print(lines[-1])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
