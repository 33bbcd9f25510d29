"""H100 / H200 time MODEL of MLP-Mixer: fastmixer vs timm eager vs a "timm + torch.compile" plan vs the bare GEMMs.

    python bench/time_model.py [--report bench/results/<date>-kernel-report.json] [--out bench/results]
        [--device h100,h200] [--models b16,l16] [--batch 256,1] [--measured GPU_REPORT.json ...]

Nothing here ran on a GPU. Every figure is a MODEL built from:
  * the launches each provider makes at real model size, counted on CPU without running anything
    (fastmixer/bench/counting.py): fastmixer's Triton launches with their grid and arguments, with the launch
    parameters a GPU run uses (the kernel modules' interpreter-only choices are switched off while counting), and the
    aten ops timm eager (and fastmixer's stem/head/backward glue) issues, with their shapes;
  * the SASS kernel report (bench/kernel_resources.py -> bench/results/*-kernel-report.json, schema
    fastmixer.kernel_report/1): per build of kernel x autotune config x dtype x shape on sm_90, the CTAs per SM, every
    loop's instructions and MMA FLOPs per iteration, the MMA kinds and whether the main loop waits for each MMA;
  * the assumptions in DEVICES and Assumptions, printed beside every table.

The rules (all in this file):
  Triton kernel (fastmixer), per autotune config in the report for that kernel, dtype and shape; the autotuner is
  assumed to keep the config with the lowest modelled time (every candidate is listed in the JSON):
    per program: loop iterations from the kernel's trip counts (KERNELS) by loop depth; instructions per warp =
      straight-line code once + each loop's own body x its iterations; MMA cycles = executed MMA FLOPs (report, so tile
      padding and duplicated work count) / (per-SM dense rate of that MMA dtype x efficiency of that MMA kind);
    waves: grid programs G over SMs x CTAs/SM (report occupancy); each wave with n CTAs puts c = ceil(n / SMs) on the
      busiest SM and lasts max(MMA: c x MMA cycles, issue: instructions x max(1, c x warps / 4) / IPC,
      one CTA's chain: MMA + issue when the main loop waits for each MMA, else max of the two,
      memory: bytes x n / G / (HBM bandwidth x efficiency));
    kernel time = sum over waves + launch overhead.
  cuBLAS GEMM (timm's aten mm/addmm/conv, fastmixer's backward mm, the compile plan's and the bare GEMMs): the best of
    a few tile shapes and split-K factors at one efficiency, 1 CTA per SM, each wave a whole tile, bounded below by
    its compulsory bytes; plus launch overhead.
  Memory-bound kernel (every other aten op, the compile plan's LayerNorm passes): bytes / (bandwidth x efficiency)
    + launch overhead.
  Compulsory bytes: every tensor a kernel reads or writes, once (fastmixer/bench/counting.py); L2 re-reads are free.

Providers. fastmixer and timm eager: their counted kernels. Compile plan: constructed from the shapes (compile_plan),
what Inductor can fuse into one Mixer block; its GEMMs at cuBLAS efficiency. Bare GEMMs: only the model's GEMMs.

Outputs: <date>-time-model-<device>.{md,json} under --out. Every table is titled MODEL. When a GPU report exists (a
bench/results/*.json written by `fastmixer bench` on CUDA, e.g. via bench/gpu_report.sh, or --measured), the same
command adds model vs measurement side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))  # tests/sass.py: the SASS reader (pure text functions)
from sass import mma_dtype, mma_flops  # noqa: E402

SCHEMA = "fastmixer.kernel_report/"
ARCH = 90  # H100 and H200 are both sm_90
TITLE = "MODEL"


# ------------------------------------------------------------------------------------------------ assumptions
@dataclasses.dataclass(frozen=True)
class Device:
    key: str
    name: str
    sms: int
    clock_ghz: float
    hbm_tb_s: float
    source: str


DEVICES = {
    "h100": Device(
        "h100",
        "H100 SXM5 80 GB",
        132,
        1.83,
        3.35,
        "datasheet: 132 SMs, HBM3 3.35 TB/s, 989 TFLOP/s dense bf16; 1.83 GHz is the clock at which 132 SMs x 4096 "
        "bf16 FLOP/cycle/SM give that peak (the report's per-SM rates are derived the same way)",
    ),
    "h200": Device(
        "h200",
        "H200 SXM 141 GB",
        132,
        1.83,
        4.8,
        "datasheet: the H100's SMs and clocks, HBM3e 4.8 TB/s",
    ),
}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """Efficiencies and fixed costs of the model (fractions of the device's peak rates)."""

    # Fraction of the per-SM dense MMA rate a loop sustains, by the MMA instruction kind in its SASS.
    mma_eff: tuple[tuple[str, float], ...] = (("HGMMA", 0.75), ("HMMA", 0.45), ("IMMA", 0.45), ("FFMA", 0.7))
    cublas_eff: float = 0.80  # cuBLAS bf16 GEMM, fraction of the dense peak, within one full wave of tiles
    mem_eff: float = 0.85  # fraction of the HBM bandwidth a memory pass reaches
    launch_us: float = 2.0  # per kernel: back-to-back launch gap + ramp (host overhead assumed hidden)
    issue_ipc: float = 1.0  # warp-instructions issued per cycle per SM sub-partition (4 per SM)
    cublas_tiles: tuple[tuple[int, int], ...] = ((128, 256), (128, 128), (64, 128))
    cublas_split_k: tuple[int, ...] = (1, 2, 4, 8, 16)

    def eff(self, kind: str) -> float:
        table = dict(self.mma_eff)
        if kind not in table:
            raise ValueError(f"no MMA efficiency assumed for kind {kind!r}; known: {sorted(table)}")
        return table[kind]


ASSUMPTION_NOTES = {
    "HGMMA": "wgmma main loop: 0.75 of the dense peak (a Triton Hopper GEMM, a little under cuBLAS's 0.80)",
    "HMMA": "mma.sync on Hopper: 0.45 of the wgmma dense peak (mma.sync cannot reach the wgmma rate on sm_90; "
    "published microbenchmarks put its ceiling near 0.6-0.65 of it, a Triton loop reaches less)",
    "FFMA": "FMA-unit dot (fp32 route): 0.7 of 256 FLOP/cycle/SM",
    "cublas": "cuBLAS bf16: 0.80 of the dense peak per full wave (an 8192^3 bf16 product measured 769-798 TFLOP/s "
    "= 0.78-0.81 of 989 on this workplace's H200, /work/.library/device/KINDS.md); best of tiles 128x256, 128x128, "
    "64x128 and split-K 1-16, 1 CTA/SM, whole tiles per wave",
    "memory": "memory passes reach 0.85 of HBM bandwidth (a device copy measured 4.3 of 4.8 TB/s = 0.90 on the H200 "
    "here; LayerNorm/reduction passes taken a little lower)",
    "launch": "2 us per kernel (back-to-back launch gap and ramp; host-side Python/dispatch overhead assumed hidden "
    "behind the GPU, which is NOT true at batch 1, where the host usually dominates)",
    "issue": "1 warp-instruction per cycle per sub-partition (the issue ceiling; stalls not modelled)",
    "bytes": "compulsory bytes: every tensor a kernel touches, read or written once; L2 re-reads free",
}


# ------------------------------------------------------------------------------------------------ small helpers
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def short_dtype(dtype: Any) -> str:
    key = str(dtype).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be bf16, fp16 or fp32, got {dtype!r}")
    return _DTYPES[key]


# ------------------------------------------------------------------------------------------------ the SASS report
def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """The kernel report JSON (schema fastmixer.kernel_report/1), checked for the keys the model reads."""
    with open(path) as f:
        data = json.load(f)
    if not str(data.get("schema", "")).startswith(SCHEMA):
        raise ValueError(f"{path}: not a kernel report (schema {data.get('schema')!r}, expected {SCHEMA}1)")
    if not isinstance(data.get("builds"), list) or str(ARCH) not in data.get("constants", {}):
        raise ValueError(f"{path}: a kernel report needs 'builds' and constants for sm_{ARCH}")
    path = Path(path).resolve()
    data["_path"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return data


def default_report(results: Path = RESULTS) -> Path | None:
    """The newest committed kernel report under bench/results (by file name: they start with the date)."""
    found = sorted(results.glob("*kernel-report*.json"))
    return found[-1] if found else None


_SHAPE_LABEL = re.compile(r"([A-Z]):S(\d+):b(\d+)")


def _shape_ok(row: dict[str, Any], shape: tuple[str, int, int] | None) -> bool:
    """A row built for named shapes ("B:S196:b256/L:S196:b256") serves only those; a shape-free row serves all."""
    labels = _SHAPE_LABEL.findall(str(row.get("shape") or "")) + _SHAPE_LABEL.findall(str(row.get("name") or ""))
    if shape is None or not labels:
        return True
    width, S, batch = shape
    build_batch = 1 if batch == 1 else 256  # the report builds batch 1 and 256; any other batch specialises as 256
    return (width, str(S), str(build_batch)) in labels


def _consts_ok(row: dict[str, Any], args: dict[str, Any], flags: bool = True) -> bool:
    """The launch's own constexprs equal the build's: ints and strings always (same tiles, same S, same route), the
    boolean flags (HAS_SCALE, ROW_SUM, ...) only when `flags`."""
    for k, v in (row.get("constexprs") or {}).items():
        if k not in args:
            continue
        if isinstance(v, bool) or isinstance(args[k], bool):
            if flags and bool(v) != bool(args[k]):
                return False
            continue
        if isinstance(v, (int, str)) and isinstance(args[k], (int, str)) and args[k] != v:
            return False
    return True


def report_rows(
    report: dict[str, Any],
    kernel: str,
    dtype: str,
    shape: tuple[str, int, int] | None = None,
    args: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The sm_90 builds of `kernel` for the dtype route (the row's `route`, e.g. "bf16"; "fp32+bf16" is autocast's),
    the shape (width letter, S, batch) and the launch's constexpr arguments: one row per autotune config. Builds whose
    boolean flags also equal the launch's are preferred; without any, the flags are not compared (they change only
    prologue/epilogue work). Builds that failed are left out; builds that do not fit are kept (they do not launch)."""
    rows = _report_rows(report, kernel, dtype, shape, args, flags=True)
    if not rows and args is not None:
        rows = _report_rows(report, kernel, dtype, shape, args, flags=False)
    return rows


def _report_rows(
    report: dict[str, Any],
    kernel: str,
    dtype: str,
    shape: tuple[str, int, int] | None,
    args: dict[str, Any] | None,
    flags: bool,
) -> list[dict[str, Any]]:
    rows = []
    seen = set()
    for r in report["builds"]:
        if r.get("kernel") != kernel or r.get("arch") != ARCH or r.get("status") == "build_failed":
            continue
        route = r["route"] if "route" in r else str(r.get("dtype", "")).split("+")[0]  # older rows: pointer types
        if route != dtype or not r.get("occupancy"):
            continue
        if not isinstance(r.get("sass"), dict) or "instructions" not in r["sass"]:  # not built, or SASS unread
            continue
        if not _shape_ok(r, shape) or (args is not None and not _consts_ok(r, args, flags)):
            continue
        key = (r.get("config"), r["num_warps"], r["num_stages"], json.dumps(r.get("constexprs"), sort_keys=True))
        if key not in seen:
            seen.add(key)
            rows.append(r)
    return rows


# ------------------------------------------------------------------------------------------------ Triton kernels
# Per kernel: the loop trip counts by nesting depth (one program) and the useful FLOPs of the launch (2 per
# multiply-add of the GEMMs it computes, no padding), from the launch's arguments and the config's constexprs (meta).
KERNELS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _kernel(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        KERNELS[name] = fn
        return fn

    return deco


@_kernel("_token_stats_kernel")
def _token_stats(m: dict[str, Any]) -> dict[str, Any]:
    return dict(trips=[_cdiv(m["C"], m["BLOCK_K"])], flops=0)  # Welford over C in BLOCK_K chunks


@_kernel("_token_mix_fwd_kernel")
def _token_mix_fwd(m: dict[str, Any]) -> dict[str, Any]:
    trips = [_cdiv(m["DT"], m["BLOCK_D"])]  # hidden chunks; the FMA route splits dot 1 over tokens inside
    if m["BLOCK_K"] < m["S_PAD"]:
        trips.append(_cdiv(m["S"], m["BLOCK_K"]))
    B = m["X"].shape[0]
    return dict(trips=trips, flops=2 * 2 * B * m["C"] * m["DT"] * m["S"])  # W1 Y and W2 H per image


@_kernel("_token_fc1_kernel")
def _token_fc1(m: dict[str, Any]) -> dict[str, Any]:
    B = m["X"].shape[0]
    return dict(trips=[_cdiv(m["S"], m["BLOCK_K"])], flops=2 * B * m["C"] * m["DT"] * m["S"])  # split route: W1 Y


@_kernel("_token_fc2_kernel")
def _token_fc2(m: dict[str, Any]) -> dict[str, Any]:
    B = m["X"].shape[0]
    return dict(trips=[_cdiv(m["DT"], m["BLOCK_K"])], flops=2 * B * m["C"] * m["DT"] * m["S"])  # split route: W2 H


@_kernel("_layernorm_fwd_kernel")
def _layernorm_fwd(m: dict[str, Any]) -> dict[str, Any]:
    # depth 0: the statistics loop and the normalising loop, both over C in BLOCK_K chunks
    return dict(trips=[_cdiv(m["C"], m["BLOCK_K"])], flops=0)


@_kernel("_ln_fold_kernel")
def _ln_fold(m: dict[str, Any]) -> dict[str, Any]:
    # no loop: each program takes BLOCK_R whole rows of x (statistics) or of W1 (gamma folded in). Straight-line code
    # counts once per program, so both branches' instructions are charged to every program (an overestimate of issue)
    return dict(trips=[1], flops=0)


@_kernel("_fc1_gelu_kernel")
def _ln_fc1(m: dict[str, Any]) -> dict[str, Any]:
    # depth 0: the GEMM main loop over K in BLOCK_K steps (LayerNorm: the separate _layernorm_fwd_kernel pass, or
    # folded in by _ln_fold_kernel with mean / rstd / cw applied in the epilogue)
    return dict(trips=[_cdiv(m["K"], m["BLOCK_K"])], flops=2 * m["M"] * m["N"] * m["K"])


@_kernel("_fc2_residual_kernel")
def _fc2(m: dict[str, Any]) -> dict[str, Any]:
    return dict(trips=[_cdiv(m["K"], m["BLOCK_K"])], flops=2 * m["M"] * m["N"] * m["K"])


@_kernel("_norm_pool_kernel")
def _norm_pool(m: dict[str, Any]) -> dict[str, Any]:
    return dict(trips=[_cdiv(m["S"], m["BLOCK_S"]), _cdiv(m["C"], m["BLOCK_K"])], flops=0)  # tokens, then stats


@_kernel("_ln_prep_kernel")
def _ln_prep(m: dict[str, Any]) -> dict[str, Any]:
    return dict(trips=[_cdiv(m["rows_per_prog"], m["BLOCK_R"])], flops=0)


@_kernel("_ln_bwd_kernel")
def _ln_bwd(m: dict[str, Any]) -> dict[str, Any]:
    return dict(trips=[_cdiv(m["rows_per_prog"], m["BLOCK_R"])], flops=0)


@_kernel("_dual_gemm_kernel")
def _dual_gemm(m: dict[str, Any]) -> dict[str, Any]:
    return dict(trips=[_cdiv(m["C"], m["BLOCK_K"])], flops=2 * 2 * m["M"] * m["D"] * m["C"])  # a = y W1^T, dh = do W2


@_kernel("_token_dgrad_kernel")
def _token_dgrad(m: dict[str, Any]) -> dict[str, Any]:
    B = m["Y"].shape[0]  # per image: a = W1 y and dh = W2^T do, one K loop over the S tokens
    return dict(trips=[_cdiv(m["S"], m["BLOCK_K"])], flops=2 * 2 * B * m["C"] * m["D"] * m["S"])


@_kernel("_token_dgrad_dy_kernel")
def _token_dgrad_dy(m: dict[str, Any]) -> dict[str, Any]:
    B = m["Y"].shape[0]  # per image, per hidden chunk: a = W1 y, dh = W2^T do (K = S) and dy += W1^T da (K = chunk)
    return dict(trips=[_cdiv(m["D"], m["BLOCK_D"])], flops=3 * 2 * B * m["C"] * m["D"] * m["S"])


@_kernel("_token_dy_kernel")
def _token_dy(m: dict[str, Any]) -> dict[str, Any]:
    B = m["DA"].shape[0]  # per image: dy = W1^T da, one K loop over the D hidden units
    return dict(trips=[_cdiv(m["D"], m["BLOCK_K"])], flops=2 * B * m["C"] * m["D"] * m["S"])


@_kernel("_wgrad_kernel")
def _wgrad(m: dict[str, Any]) -> dict[str, Any]:
    # one flat loop over (sample, K-tile); the longest program has b_per_split samples. One launch computes both
    # dW2 = sum do h^T [S, D] and dW1 = sum da y^T [D, S]: 2 GEMMs of 2 * NB * S * D * C.
    trips = [m["b_per_split"] * _cdiv(m["C"], m["BLOCK_K"])]
    return dict(trips=trips, flops=2 * 2 * m["NB"] * m["S"] * m["D"] * m["C"])


@_kernel("_reduce_partials_kernel")
def _reduce_partials(m: dict[str, Any]) -> dict[str, Any]:
    # One loop over row tiles of one segment per program: segment i has cdiv(N_i, 2**L_i) programs of
    # cdiv(R_i, BLOCK / 2**L_i) trips. The trip count is the mean over the launch's programs (segments differ:
    # thousands of rows for the row kernels' partials, a few for the split-K ones), so the wave model sees balanced
    # programs.
    segs = [(m[f"R{i}"], m[f"N{i}"], 1 << m[f"L{i}"]) for i in range(m["NSEG"])]
    programs = [_cdiv(n, w) for _, n, w in segs]
    work = sum(p * _cdiv(r, m["BLOCK"] // w) for p, (r, _, w) in zip(programs, segs))
    return dict(trips=[max(1, _cdiv(work, sum(programs)))], flops=0)


# The report's counting rule for one issue of a matrix opcode (HGMMA per warpgroup, HMMA/IMMA/DMMA per warp, FFMA 64 per
# warp) and the key of its input type in the report's per-SM rate table: tests/sass.py, which wrote the report.
op_flops = mma_flops
op_rate_key = mma_dtype


def program_work(row: dict[str, Any], trips: Sequence[int]) -> dict[str, Any]:
    """One program's work from a report row and the kernel's trip counts by depth: warp-instructions issued, executed
    MMA FLOPs split by opcode, and which loops were counted.

    A loop runs prod(trips[:depth + 1]) times; its own body excludes the loops nested in it; code outside every loop
    runs once. Counted: the report's main loop and every natural loop (the report marks a backward branch whose range
    holds an unconditional EXIT as not natural: an out-of-line block jumping back, not a loop). Reports without the
    `natural` key: loops closed by a conditional branch, and unconditional ones that nest cleanly with all others.
    Loops deeper than the trip table are not counted either (`skipped`)."""
    sass = row["sass"]
    warps = row["num_warps"]
    every = sass.get("loops") or []
    main_start = (sass.get("main_loop") or {}).get("start")

    def inside(inner: dict, outer: dict) -> bool:
        return inner is not outer and outer["start"] <= inner["start"] and inner["end"] <= outer["end"]

    def partial(a: dict, b: dict) -> bool:
        apart = a["end"] < b["start"] or b["end"] < a["start"]
        return a is not b and not apart and not inside(a, b) and not inside(b, a)

    def is_loop(lp: dict) -> bool:
        if lp["start"] == main_start:
            return True
        if "natural" in lp:
            return bool(lp["natural"])
        return lp.get("conditional", True) or not any(partial(lp, o) for o in every)

    loops = [lp for lp in every if is_loop(lp)]
    skipped = [lp for lp in every if not any(lp is x for x in loops)]

    instr = 0.0
    mma = 0.0
    counted = []
    top_instr = top_mma = 0
    for lp in loops:
        children = [c for c in loops if inside(c, lp) and c["depth"] == lp["depth"] + 1]
        own_instr = lp["instructions"] - sum(c["instructions"] for c in children)
        own_mma = lp["mma_flops_per_cta"] - sum(c["mma_flops_per_cta"] for c in children)
        if lp["depth"] == 0:
            top_instr += lp["instructions"]
            top_mma += lp["mma_flops_per_cta"]
        if lp["depth"] >= len(trips):
            skipped.append(lp)
            continue
        iters = _prod(trips[: lp["depth"] + 1])
        instr += own_instr * iters
        mma += own_mma * iters
        counted.append(dict(start=lp["start"], depth=lp["depth"], instructions=own_instr, iterations=iters))
    # whole-kernel MMA FLOPs per opcode (static) give the split by kind, and the straight-line part
    ops = {op: n * op_flops(op, warps) for op, n in (sass.get("shapes") or {}).items()}
    kernel_mma = sum(ops.values())
    if not ops and sass.get("main_loop") and sass["main_loop"].get("mma_kind") == "FFMA":
        ops = {"FFMA": 1}  # the FMA route: FFMA is the matrix work
        kernel_mma = top_mma
    straight_instr = max(0, sass["instructions"] - top_instr)
    straight_mma = max(0, kernel_mma - top_mma)
    instr += straight_instr
    mma += straight_mma
    total = sum(ops.values())
    split = {op: mma * f / total for op, f in ops.items()} if total else {}
    return dict(instructions=instr, mma_flops=mma, mma_by_op=split, loops=counted, skipped=len(skipped),
                straight_instructions=straight_instr)  # fmt: skip


def grid_programs(grid: Any, meta: dict[str, Any]) -> int:
    """Programs of a launch: its grid tuple, or triton's grid callable evaluated with the meta-parameters."""
    if callable(grid):
        grid = grid(meta)
    if not isinstance(grid, (tuple, list)) or not grid:
        raise ValueError(f"a grid must be a non-empty tuple, got {grid!r}")
    return _prod(grid)


def wave_time(
    programs: int,
    ctas_per_sm: int,
    per_program: dict[str, float],
    nbytes: float,
    dev: Device,
    asm: Assumptions,
) -> dict[str, Any]:
    """Modelled seconds of `programs` CTAs in waves of SMs x ctas_per_sm (see the module docstring).

    per_program: mma_cycles (at the assumed efficiencies), instructions (per warp), warps, waits_each_mma."""
    if programs < 1:
        raise ValueError(f"programs must be >= 1, got {programs}")
    if ctas_per_sm < 1:
        return dict(seconds=math.inf, bound="does not launch", waves=0, tail=0, terms={})
    hz = dev.clock_ghz * 1e9
    bw = dev.hbm_tb_s * 1e12 * asm.mem_eff
    warps = per_program["warps"]
    mma_c, instr = per_program["mma_cycles"], per_program["instructions"]
    own_issue = instr * max(1.0, warps / 4) / asm.issue_ipc  # one CTA alone, its warps over the 4 sub-partitions
    chain = (mma_c + own_issue) if per_program.get("waits_each_mma") else max(mma_c, own_issue)
    capacity = dev.sms * ctas_per_sm
    full, tail = divmod(programs, capacity)
    terms = dict(mma=0.0, issue=0.0, chain=0.0, memory=0.0)
    total = 0.0
    for n, count in ((capacity, full), (tail, 1 if tail else 0)):
        if not count:
            continue
        c = _cdiv(n, dev.sms)  # CTAs on the busiest SM
        t = dict(
            mma=c * mma_c / hz,
            issue=instr * max(1.0, c * warps / 4) / asm.issue_ipc / hz,
            chain=chain / hz,
            memory=nbytes * n / programs / bw,
        )
        worst = max(t, key=t.get)
        terms[worst] += t[worst] * count
        total += t[worst] * count
    return dict(seconds=total, bound=max(terms, key=terms.get), waves=full, tail=tail, terms=terms)


def triton_config_time(
    kernel: Any, row: dict[str, Any], dev: Device, asm: Assumptions, rates: dict[str, float]
) -> dict[str, Any]:
    """Modelled time of one Triton launch (a counting.Kernel with grid and args) in the config of report `row`."""
    if kernel.name not in KERNELS:
        raise KeyError(f"no trip-count model for Triton kernel {kernel.name}: add it to KERNELS")
    meta = {**row.get("constexprs", {}), **kernel.args, "num_warps": row["num_warps"], "num_stages": row["num_stages"]}
    for k, v in (row.get("constexprs") or {}).items():  # the config's tiles (the launch does not pass them)
        if k not in kernel.args or isinstance(v, bool):
            meta[k] = v
    programs = grid_programs(kernel.grid, meta)
    desc = KERNELS[kernel.name](meta)
    work = program_work(row, desc["trips"])
    mma_cycles = 0.0
    kinds: dict[str, float] = {}
    for op, flops in work["mma_by_op"].items():
        kind = op.split(".")[0]
        mma_cycles += flops / (rates[op_rate_key(op)] * asm.eff(kind))
        kinds[kind] = kinds.get(kind, 0.0) + flops
    main = row["sass"].get("main_loop") or {}
    per_program = dict(
        mma_cycles=mma_cycles,
        instructions=work["instructions"],
        warps=row["num_warps"],
        waits_each_mma=bool(main.get("waits_each_mma")),
    )
    w = wave_time(programs, row["occupancy"]["ctas_per_sm"], per_program, kernel.bytes, dev, asm)
    return dict(
        config=row.get("config") or "-",
        build=row.get("name"),
        num_warps=row["num_warps"],
        num_stages=row["num_stages"],
        tiles={k: v for k, v in (row.get("constexprs") or {}).items() if k.startswith("BLOCK")},
        programs=programs,
        ctas_per_sm=row["occupancy"]["ctas_per_sm"],
        limiter=row["occupancy"].get("limiter"),
        waves=w["waves"],
        tail=w["tail"],
        mma_kind="+".join(sorted(k for k, f in kinds.items() if f)) or "-",
        waits_each_mma=main.get("waits_each_mma"),
        useful_flops=desc["flops"],
        executed_flops=work["mma_flops"] * programs,
        instructions_per_program=work["instructions"],
        loops_counted=len(work["loops"]),
        loops_skipped=work["skipped"],
        bound=w["bound"],
        us=w["seconds"] * 1e6 + asm.launch_us,
        terms_us={k: v * 1e6 for k, v in w["terms"].items()},
    )


class MissingReportRow(LookupError):
    """A launched kernel has no usable build in the kernel report."""


def triton_launch_time(
    kernel: Any, report: dict[str, Any], dtype: str, shape: tuple[str, int, int], dev: Device, asm: Assumptions
) -> dict[str, Any]:
    """Every config of the report for this launch, modelled; the autotuner is assumed to keep the fastest. A batch-1
    launch with no batch-1 build in the report is modelled with the batch-256 builds (noted in `build_note`)."""
    rows = report_rows(report, kernel.name, dtype, shape, kernel.args)
    note = ""
    if not rows and shape[2] == 1:
        rows = report_rows(report, kernel.name, dtype, (shape[0], shape[1], 256), kernel.args)
        note = "batch-256 build (the report has no batch-1 build)" if rows else ""
    if not rows:
        raise MissingReportRow(
            f"{kernel.name} ({dtype}, shape {shape}) has no sm_{ARCH} build in {report.get('_path', 'the report')}"
        )
    rates = report["constants"][str(ARCH)]["mma_flop_per_cycle_per_sm"]
    cands = [triton_config_time(kernel, r, dev, asm, rates) for r in rows]
    best = min(cands, key=lambda c: c["us"])
    if math.isinf(best["us"]):
        best = dict(best, bound="no config launches")
    cands_out = [dict(config=c["config"], us=c["us"], bound=c["bound"]) for c in cands]
    return dict(best, build_note=note, candidates=cands_out)


# ------------------------------------------------------------------------------------------------ cuBLAS and memory
def gemm_us(M: int, N: int, K: int, nbytes: float, dev: Device, asm: Assumptions, batch: int = 1) -> dict[str, Any]:
    """Modelled cuBLAS GEMM (batch x [M, K] @ [K, N], bf16 in, fp32 accumulate): best tile / split-K, whole tiles per
    wave at cublas_eff, bounded below by its compulsory bytes (+ split-K's fp32 partials), + launch overhead."""
    if min(M, N, K, batch) < 1:
        raise ValueError(f"GEMM dims must be >= 1, got M={M} N={N} K={K} batch={batch}")
    hz = dev.clock_ghz * 1e9
    bw = dev.hbm_tb_s * 1e12 * asm.mem_eff
    rate = 4096 * asm.cublas_eff  # bf16 FLOP per cycle per SM (sm_90 dense)
    best: dict[str, Any] | None = None
    for tm, tn in asm.cublas_tiles:
        tiles = batch * _cdiv(M, tm) * _cdiv(N, tn)
        for s in asm.cublas_split_k:
            if s > 1 and K // s < 128:
                continue
            waves = _cdiv(tiles * s, dev.sms)
            t_mma = waves * 2 * tm * tn * _cdiv(K, s) / rate / hz
            extra = 2 * 4 * tiles * s * tm * tn if s > 1 else 0  # fp32 partials written and read back
            t_mem = (nbytes + extra) / bw
            t = max(t_mma, t_mem)
            if best is None or t < best["seconds"]:
                best = dict(seconds=t, tile=f"{tm}x{tn}", split_k=s, waves=waves,
                            bound="mma" if t_mma >= t_mem else "memory")  # fmt: skip
    assert best is not None
    return dict(us=best["seconds"] * 1e6 + asm.launch_us, flops=2 * M * N * K * batch, bytes=nbytes,
                tile=best["tile"], split_k=best["split_k"], waves=best["waves"], bound=best["bound"])  # fmt: skip


def memory_us(nbytes: float, dev: Device, asm: Assumptions) -> float:
    return nbytes / (dev.hbm_tb_s * 1e12 * asm.mem_eff) * 1e6 + asm.launch_us


def aten_gemm_dims(name: str, shapes: list[tuple[int, ...]], flops: int) -> list[tuple[int, int, int, int]] | None:
    """(M, N, K, batch) of the GEMMs an aten op runs, from its input shapes; None if not recognised (or if the
    recognised dims do not reproduce the op's counted FLOPs)."""
    dims: list[tuple[int, int, int, int]] = []
    op = name.removeprefix("aten.")
    try:
        if op == "mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            dims = [(m, n, k, 1)]
        elif op == "addmm":
            (m, k), (_, n) = shapes[1], shapes[2]
            dims = [(m, n, k, 1)]
        elif op == "bmm":
            (b, m, k), (_, _, n) = shapes[0], shapes[1]
            dims = [(m, n, k, b)]
        elif op == "convolution":  # patchify stem: stride = kernel size
            (b, cin, h, w), (cout, _, kh, kw) = shapes[0], shapes[1]
            dims = [(b * (h // kh) * (w // kw), cout, cin * kh * kw, 1)]
        elif op == "convolution_backward":  # grad_out, input, weight: weight grad (+ input grad if counted)
            (b, cout, h, w), (_, cin, _, _), (_, _, kh, kw) = shapes[0], shapes[1], shapes[2]
            dims = [(cout, cin * kh * kw, b * h * w, 1)]
            if flops == 2 * 2 * cout * cin * kh * kw * b * h * w:
                dims.append((b * h * w, cin * kh * kw, cout, 1))
        else:
            return None
    except (ValueError, IndexError, TypeError):
        return None
    return dims if sum(2 * m * n * k * bb for m, n, k, bb in dims) == flops else None


def aten_time(k: Any, dev: Device, asm: Assumptions) -> dict[str, Any]:
    """An aten op as a CUDA kernel: GEMM-like ops through the cuBLAS model, everything else a memory pass."""
    if k.flops:
        dims = aten_gemm_dims(k.name, (k.args or {}).get("shapes", []), k.flops)
        if dims is None:  # unrecognised: ideal rate, no tile effects
            us = max(k.flops / (dev.sms * 4096 * dev.clock_ghz * 1e9 * asm.cublas_eff),
                     k.bytes / (dev.hbm_tb_s * 1e12 * asm.mem_eff)) * 1e6 + asm.launch_us  # fmt: skip
            return dict(us=us, bound="gemm (ideal)", kind="cuBLAS")
        share = k.bytes / len(dims)
        parts = [gemm_us(m, n, kk, share, dev, asm, batch=b) for m, n, kk, b in dims]
        return dict(us=sum(p["us"] for p in parts), bound=parts[0]["bound"], kind="cuBLAS",
                    tile=parts[0]["tile"], split_k=parts[0]["split_k"])  # fmt: skip
    return dict(us=memory_us(k.bytes, dev, asm), bound="memory", kind="memory")


# ------------------------------------------------------------------------------------------------ counting launches
@contextlib.contextmanager
def gpu_launch_params() -> Iterator[None]:
    """While counting on CPU, make the kernel launchers choose what they choose on a GPU: every loaded
    fastmixer.kernels module's INTERPRET flag is False (row-kernel tiling, no interpreter-only bf16 workarounds)."""
    mods = [m for n, m in list(sys.modules.items()) if n.startswith("fastmixer.kernels") and hasattr(m, "INTERPRET")]
    saved = [(m, m.INTERPRET) for m in mods]
    try:
        for m in mods:
            m.INTERPRET = False
        yield
    finally:
        for m, v in saved:
            m.INTERPRET = v


def _dims(variant: str) -> dict[str, int]:
    from fastmixer.bench.harness import _dims as bench_dims

    return bench_dims(variant)


def count_case(variant: str, batch: int, dtype: Any, num_blocks: int | None = None) -> dict[str, Any]:
    """Counted kernels at real size (dry, nothing executes) for one variant, batch, dtype:
    block[provider] (one block: forward, backward), ops[provider][op] (token_mix / channel_mix, forward + backward),
    model[provider] (the whole model)."""
    import torch

    import fastmixer
    from fastmixer.bench import counting
    from fastmixer.kernels import channel_mix, channel_mix_bwd, norm_pool, token_mix, token_mix_bwd  # noqa: F401
    from fastmixer.registry import resolve_variant
    from fastmixer.timm_convert import to_timm

    d = dict(_dims(variant))
    torch.manual_seed(0)
    depth = {} if num_blocks is None else {"num_blocks": num_blocks}
    ours = fastmixer.create_model(resolve_variant(variant), **depth).to(dtype)
    d["L"] = len(ours.blocks)
    theirs = to_timm(ours, share=False)
    images = torch.randn(batch, 3, 224, 224, dtype=dtype)
    x = torch.randn(batch, d["S"], d["C"], dtype=dtype)
    out: dict[str, Any] = dict(variant=variant, batch=batch, dtype=short_dtype(dtype), dims=d, block={}, ops={},
                               model={})  # fmt: skip
    with gpu_launch_params():
        with fastmixer.use_backend("triton"):
            out["model"]["fastmixer"] = counting.count_kernels(ours, images, execute=False)
            blk = counting.count_call(ours.blocks[0], x, execute=False)
        out["block"]["fastmixer"] = blk
        out["ops"]["fastmixer"] = {
            op: [k for k in blk if k.op in (op, f"{op}_bwd")] for op in ("token_mix", "channel_mix")
        }
        out["model"]["timm eager"] = counting.count_kernels(theirs, images, execute=False)
        tb = theirs.blocks[0]
        out["block"]["timm eager"] = counting.count_call(tb, x, execute=False)
        halves = {
            "token_mix": lambda t: t + tb.mlp_tokens(tb.norm1(t).transpose(1, 2)).transpose(1, 2),
            "channel_mix": lambda t: t + tb.mlp_channels(tb.norm2(t)),
        }
        out["ops"]["timm eager"] = {op: counting.count_call(fn, x, execute=False) for op, fn in halves.items()}
    for p in ours.parameters():
        p.grad = None
    for p in theirs.parameters():
        p.grad = None
    out["params"] = sum(p.numel() for p in ours.parameters())
    out["num_blocks"] = num_blocks  # None: the variant's depth
    return out


# ------------------------------------------------------------------------------------------------ analytic providers
@dataclasses.dataclass
class PlanKernel:
    """One kernel of an analytic provider: a GEMM (M, N, K) or a memory pass; bytes and FLOPs; what it fuses."""

    name: str
    kind: str  # "gemm" | "memory"
    bytes: int
    flops: int = 0
    mnk: tuple[int, int, int] | None = None
    fuses: str = ""


def _gemm(name: str, M: int, N: int, K: int, w: int, extra: int = 0, fuses: str = "") -> PlanKernel:
    """A GEMM reading A [M, K] and B [K, N] once and writing C [M, N] once (w bytes per element), + extra bytes."""
    return PlanKernel(name, "gemm", w * (M * K + K * N + M * N) + extra, 2 * M * N * K, (M, N, K), fuses)


def _mlp_backward(which: str, R: int, n: int, D: int, w: int, fuses: tuple[str, str, str, str]) -> list[PlanKernel]:
    """The four backward GEMMs of one Mixer MLP over R rows of n features (hidden D), in order: fc2 dX (reads the
    saved pre-activation [R, D]), fc2 dW, fc1 dW, fc1 dX; `fuses` says what each one's epilogue does."""
    dx2, dw2, dw1, dx1 = fuses
    return [
        _gemm(f"{which} fc2 dX", R, D, n, w, R * D * w, dx2),
        _gemm(f"{which} fc2 dW", n, D, R, w, 0, dw2),
        _gemm(f"{which} fc1 dW", D, n, R, w, 0, dw1),
        _gemm(f"{which} fc1 dX", R, n, D, w, 0, dx1),
    ]


def compile_plan_block(B: int, S: int, C: int, Dt: int, Dc: int, w: int = 2) -> dict[str, list[PlanKernel]]:
    """What torch.compile (Inductor, max-autotune) can make of one timm Mixer block, constructed from the shapes:
    forward 6 kernels, backward 10. Activations in w bytes per element, LayerNorm statistics fp32 (8 B per row).

    Fused: LayerNorm1 with the [B, S, C] -> [B, C, S] transpose (one read of x, one write of the transposed LN output);
    every GEMM epilogue (fc1: + bias, GELU; fc2: + bias, + residual, stored back in [B, S, C] order); in the backward,
    GELU' into the dX GEMM of fc2 (reading the saved pre-activation), each LayerNorm backward with the residual-gradient
    add, and the bias/LN-parameter gradients as partial sums inside passes that already read their operand. The
    residual add rides the fc2 epilogue and the next LayerNorm is its own pass (a GEMM tile never holds a whole row):
    4 activation passes (fc2 reads x, writes u; LN reads u, writes LN(u)), one fewer than fusing the add into the next
    LayerNorm instead (fc2 writes its output; LN reads it and x, writes u and LN(u): 5), and two fewer than eager.
    Not fused (cannot be): the LayerNorm passes into GEMMs (row reductions across N tiles).
    Saved for the backward (training forward, not in these tables: its fc1 epilogues would also store the
    pre-activations a1 [B*C, Dt], a2 [B*S, Dc]): x, LN outputs, pre-activations, hidden activations, u, stats."""
    act, stats = B * S * C * w, B * S * 8
    fwd = [
        PlanKernel("LN1 + transpose", "memory", 2 * act + 2 * C * w,
                   fuses="LayerNorm1 and the transpose to [B, C, S]: read x, write LN1(x)^T"),
        _gemm("token fc1", B * C, Dt, S, w, Dt * w, "bias + GELU epilogue"),
        _gemm("token fc2", B * C, S, Dt, w, act + S * w, "bias + residual epilogue (reads x), stored as [B, S, C]"),
        PlanKernel("LN2", "memory", 2 * act + 2 * C * w, fuses="LayerNorm2: read u, write LN2(u)"),
        _gemm("channel fc1", B * S, Dc, C, w, Dc * w, "bias + GELU epilogue"),
        _gemm("channel fc2", B * S, C, Dc, w, act + C * w, "bias + residual epilogue (reads u)"),
    ]  # fmt: skip
    bwd = [
        *_mlp_backward("channel", B * S, C, Dc, w, (
            "x GELU'(a2) epilogue (reads a2), db1 partials", "dW2 = g^T h2", "dW1 = da2^T LN2(u)", "d LN2 = da2 W1")),
        PlanKernel("LN2 backward + residual", "memory", 4 * act + stats,
                   fuses="reads d LN2, u, g and the stats, writes du = g + LN2'(d LN2); dgamma, dbeta, db2 partials"),
        *_mlp_backward("token", B * C, S, Dt, w, (
            "du read transposed; x GELU'(a1) epilogue (reads a1)", "dW2 = du^T h1", "dW1 = da1^T LN1(x)^T",
            "d LN1 = da1 W1, stored as [B, S, C]")),
        PlanKernel("LN1 backward + residual", "memory", 4 * act + stats,
                   fuses="reads d LN1, x, du and the stats, writes dx = du + LN1'(d LN1); dgamma, dbeta, db2 partials"),
    ]  # fmt: skip
    return dict(forward=fwd, backward=bwd)


def compile_plan_rest(B: int, S: int, C: int, P: int, classes: int = 1000, w: int = 2) -> dict[str, list[PlanKernel]]:
    """The compile plan outside the blocks: stem (patchify conv as a GEMM), final LayerNorm + token mean, head."""
    img = B * 3 * 224 * 224 * w
    fwd = [
        PlanKernel("stem (patchify GEMM)", "gemm", img + 3 * P * P * C * w + B * S * C * w, 2 * B * S * C * 3 * P * P,
                   (B * S, C, 3 * P * P), "bias epilogue; output read strided by LN1 (no transposed copy)"),
        PlanKernel("final LN + mean", "memory", B * S * C * w + B * C * w, fuses="LayerNorm and the token mean"),
        _gemm("head", B, classes, C, w, 0, "bias epilogue"),
    ]  # fmt: skip
    bwd = [
        _gemm("head dW", classes, C, B, w),
        _gemm("head dX", B, C, classes, w),
        PlanKernel("final LN + mean backward", "memory", 2 * B * S * C * w + B * C * w + B * S * 8,
                   fuses="reads x, the pooled gradient, stats; writes dx"),
        PlanKernel("stem dW", "gemm", img + B * S * C * w + 3 * P * P * C * w, 2 * B * S * C * 3 * P * P,
                   (C, 3 * P * P, B * S), "weight gradient only (images need no gradient)"),
    ]  # fmt: skip
    return dict(forward=fwd, backward=bwd)


def bare_gemms(plan: dict[str, list[PlanKernel]]) -> dict[str, list[PlanKernel]]:
    """Only the GEMMs of a plan, each reading its operands and writing its output once, nothing fused (the limit)."""
    out = {}
    for phase, ks in plan.items():
        out[phase] = [_gemm(k.name, *k.mnk, 2) for k in ks if k.kind == "gemm"]  # type: ignore[misc]
    return out


def plan_time(k: PlanKernel, dev: Device, asm: Assumptions) -> dict[str, Any]:
    if k.kind == "gemm":
        assert k.mnk is not None
        g = gemm_us(*k.mnk, k.bytes, dev, asm)
        return dict(us=g["us"], bound=g["bound"], kind="cuBLAS", tile=g["tile"], split_k=g["split_k"])
    return dict(us=memory_us(k.bytes, dev, asm), bound="memory", kind="memory")


# ------------------------------------------------------------------------------------------------ the model
PROVIDERS = ("fastmixer", "timm eager", "compile plan", "bare GEMMs")


def _row(k: Any, t: dict[str, Any], source: str, phase: str, op: str | None = None) -> dict[str, Any]:
    return dict(kernel=k.name, source=source, phase=phase, op=op, bytes=int(k.bytes), flops=int(k.flops), **t)


def model_counted(kernels: Sequence[Any], ctx: dict[str, Any], dev: Device, asm: Assumptions) -> list[dict[str, Any]]:
    """Modelled rows of counted kernels (Triton launches through the report, aten ops through cuBLAS/memory)."""
    rows = []
    for k in kernels:
        if k.source == "triton":
            t = triton_launch_time(k, ctx["report"], ctx["dtype"], ctx["shape"], dev, asm)
            t["flops_counted"] = int(k.flops)
            rows.append(dict(kernel=k.name, source="triton", phase=k.phase, op=k.op, bytes=int(k.bytes),
                             flops=int(t["useful_flops"]), **t))  # fmt: skip
        else:
            rows.append(_row(k, aten_time(k, dev, asm), "aten", k.phase, k.op))
    return rows


def model_plan(ks: Sequence[PlanKernel], phase: str, dev: Device, asm: Assumptions) -> list[dict[str, Any]]:
    return [dict(kernel=k.name, source=k.kind, phase=phase, op=None, bytes=k.bytes, flops=k.flops, fuses=k.fuses,
                 **plan_time(k, dev, asm)) for k in ks]  # fmt: skip


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return dict(
        us=sum(r["us"] for r in rows),
        launches=len(rows),
        gflop=sum(r["flops"] for r in rows) / 1e9,
        gbytes=sum(r["bytes"] for r in rows) / 1e9,
    )


def model_case(counted: dict[str, Any], report: dict[str, Any], dev: Device, asm: Assumptions) -> dict[str, Any]:
    """Per block, per op and per model, forward and backward, for the four providers at one variant/batch/dtype."""
    d = counted["dims"]
    B, S, C, Dt, Dc, P, L = counted["batch"], d["S"], d["C"], d["Dt"], d["Dc"], d["P"], d["L"]
    ctx = dict(report=report, dtype=counted["dtype"], shape=(counted["variant"][0].upper(), S, B))
    plan_block = compile_plan_block(B, S, C, Dt, Dc)
    plan_rest = compile_plan_rest(B, S, C, P)
    plan_ops = {
        "token_mix": {ph: [k for k in ks if k.name.startswith(("LN1", "token"))] for ph, ks in plan_block.items()},
        "channel_mix": {ph: [k for k in ks if k.name.startswith(("LN2", "channel"))] for ph, ks in plan_block.items()},
    }
    analytic = {
        "compile plan": (plan_block, plan_rest, plan_ops),
        "bare GEMMs": (
            bare_gemms(plan_block),
            bare_gemms(plan_rest),
            {op: bare_gemms(v) for op, v in plan_ops.items()},
        ),
    }
    out: dict[str, Any] = dict(variant=counted["variant"], batch=B, dtype=counted["dtype"], dims=d, block={},
                               ops={}, model={}, kernels={}, num_blocks=counted.get("num_blocks"))  # fmt: skip
    for prov in ("fastmixer", "timm eager"):
        rows = model_counted(counted["block"][prov], ctx, dev, asm)
        out["kernels"][prov] = rows
        out["block"][prov] = {ph: summarize([r for r in rows if r["phase"] == ph]) for ph in ("forward", "backward")}
        out["ops"][prov] = {}
        for op, ks in counted["ops"][prov].items():
            orows = model_counted(ks, ctx, dev, asm)
            out["ops"][prov][op] = {ph: summarize([r for r in orows if r["phase"] == ph]) for ph in ("forward",
                                                                                               "backward")}  # fmt: skip
        mrows = model_counted(counted["model"][prov], ctx, dev, asm)
        out["model"][prov] = {ph: summarize([r for r in mrows if r["phase"] == ph]) for ph in ("forward", "backward")}
        if prov == "fastmixer":  # outside the blocks: stem, norm_pool, head and their backward
            block_ops = {"token_mix", "channel_mix", "token_mix_bwd", "channel_mix_bwd"}
            out["kernels"]["fastmixer rest"] = [r for r in mrows if r["op"] not in block_ops]
    for prov, (blk, rest, ops) in analytic.items():
        rows = [r for ph, ks in blk.items() for r in model_plan(ks, ph, dev, asm)]
        rest_rows = [r for ph, ks in rest.items() for r in model_plan(ks, ph, dev, asm)]
        out["kernels"][prov] = rows
        out["block"][prov] = {ph: summarize([r for r in rows if r["phase"] == ph]) for ph in ("forward", "backward")}
        out["ops"][prov] = {
            op: {ph: summarize(model_plan(ks, ph, dev, asm)) for ph, ks in v.items()} for op, v in ops.items()
        }
        out["model"][prov] = {}
        for ph in ("forward", "backward"):
            b, r = out["block"][prov][ph], summarize([x for x in rest_rows if x["phase"] == ph])
            out["model"][prov][ph] = {k: r[k] + L * b[k] for k in b}
        out["kernels"][f"{prov} rest"] = rest_rows
    return out


# ------------------------------------------------------------------------------------------------ measurement
def find_measured(results: Path = RESULTS) -> list[Path]:
    """GPU reports under bench/results: `fastmixer bench` JSON files whose env says CUDA."""
    found = []
    for p in sorted(results.glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("env", {}).get("device_kind") == "CUDA" and "results" in data:
            found.append(p)
    return found


_MEASURED_PROVIDER = {"fastmixer": "fastmixer", "fastmixer+compile": "fastmixer", "timm": "timm eager",
                      "timm+compile": "compile plan", "cublas": "bare GEMMs"}  # fmt: skip


def sgd_us(params: int, dev: Device, asm: Assumptions, w: int = 2) -> float:
    """SGD with momentum (foreach): reads weights, grads, momentum; writes weights, momentum: ~4 launches."""
    return 5 * params * w / (dev.hbm_tb_s * 1e12 * asm.mem_eff) * 1e6 + 4 * asm.launch_us


def modelled_ms(case: dict[str, Any], result: dict[str, Any], sgd: float) -> tuple[float | None, str]:
    """The modelled counterpart (ms) of one measured benchmark result, and how it was composed."""
    prov = _MEASURED_PROVIDER.get(result.get("provider", ""))
    if prov is None:
        return None, f"no model for provider {result.get('provider')!r}"
    level, mode = result.get("level"), result.get("mode")
    if level == "model":
        src = case["model"].get(prov)
    else:
        src = case["ops"].get(prov, {}).get(result.get("target"))
    if not src:
        return None, "not modelled"
    if mode in ("inference", "forward"):
        return src["forward"]["us"] / 1e3, "forward"
    if mode == "forward+backward":
        return (src["forward"]["us"] + src["backward"]["us"]) / 1e3, "forward + backward"
    if mode == "training":
        extra = 0.0 if prov == "bare GEMMs" else sgd
        how = "forward + backward" + ("" if prov == "bare GEMMs" else " + SGD step")
        return (src["forward"]["us"] + src["backward"]["us"] + extra) / 1e3, how
    return None, f"unknown mode {mode!r}"


def compare(measured: dict[str, Any], cases: dict[tuple[str, int], dict[str, Any]], dev: Device,
            asm: Assumptions, params: dict[str, int]) -> list[dict[str, Any]]:  # fmt: skip
    """Model vs measurement rows for every timed result of a GPU report (bf16 only; others are listed as not
    modelled)."""
    rows = []
    for r in measured.get("results", []):
        if "ms" not in r:
            continue
        variant = r.get("target") if r.get("level") == "model" else r.get("variant", "b16")
        case = cases.get((variant, r.get("batch")))
        if case is None or r.get("dtype") != case["dtype"] or r.get("num_blocks") != case.get("num_blocks"):
            rows.append(dict(label=r.get("label"), provider=r.get("provider"), measured_ms=r["ms"], model_ms=None,
                             how="not modelled (no case of this variant, batch, dtype and depth)"))  # fmt: skip
            continue
        ms, how = modelled_ms(case, r, sgd_us(params.get(variant, 0), dev, asm))
        rows.append(dict(label=r.get("label"), provider=r.get("provider"), measured_ms=r["ms"], model_ms=ms, how=how))
    return rows


def format_comparison(rows: Sequence[dict[str, Any]], source: str, device: str) -> str:
    lines = [
        f"### MODEL vs measurement ({device} model; measured: {source})",
        "",
        "| case | provider | measured ms | MODEL ms | MODEL / measured | model composed of |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        model = "-" if r["model_ms"] is None else f"{r['model_ms']:.3f}"
        ratio = "-" if r["model_ms"] is None or not r["measured_ms"] else f"{r['model_ms'] / r['measured_ms']:.2f}"
        lines.append(f"| {r['label']} | {r['provider']} | {r['measured_ms']:.3f} | {model} | {ratio} | {r['how']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ output
def assumption_lines(dev: Device, asm: Assumptions, report: dict[str, Any]) -> list[str]:
    rates = report["constants"][str(ARCH)]["mma_flop_per_cycle_per_sm"]
    return [
        f"- device: {dev.name}: {dev.sms} SMs at {dev.clock_ghz} GHz, HBM {dev.hbm_tb_s} TB/s ({dev.source})",
        f"- per-SM dense MMA rates (report constants, sm_90): bf16 {rates.get('bf16')}, tf32 {rates.get('tf32')}, "
        f"FFMA fp32 {rates.get('ffma_fp32')} FLOP/cycle; peak bf16 "
        f"{dev.sms * rates.get('bf16', 0) * dev.clock_ghz / 1e3:.0f} TFLOP/s",
        "- MMA efficiency by kind: " + ", ".join(f"{k} {v}" for k, v in asm.mma_eff) + f". {ASSUMPTION_NOTES['HGMMA']};"
        f" {ASSUMPTION_NOTES['HMMA']}; {ASSUMPTION_NOTES['FFMA']}",
        f"- {ASSUMPTION_NOTES['cublas']}",
        f"- {ASSUMPTION_NOTES['memory']}",
        f"- {ASSUMPTION_NOTES['launch']}",
        f"- {ASSUMPTION_NOTES['issue']}",
        f"- {ASSUMPTION_NOTES['bytes']}",
        "- Triton kernels: each config of the report for that kernel/dtype/shape is modelled and the fastest is taken "
        "(what the autotuner is assumed to keep); per wave max(MMA, issue, one CTA's chain, memory); CTAs/SM from the "
        "report's occupancy; every compiled loop x its trip count + straight-line code once (see bench/time_model.py)",
        "- timm eager: its aten ops as counted by a dispatch mode; GEMMs (mm/addmm/conv) through the cuBLAS model, the "
        "rest as memory passes. Compile plan: constructed (bench/time_model.py compile_plan_block), GEMMs at cuBLAS "
        "efficiency with fused epilogues. Bare GEMMs: the model's GEMMs alone (the limit)",
        f"- kernel report: {report.get('_path')} (schema {report.get('schema')}, triton {report.get('triton')})",
    ]


def _us(v: float) -> str:
    """A time for a table: 3 decimals below 10, 1 below 10^4, none above."""
    if math.isinf(v):
        return "does not launch"
    return f"{v:.3f}" if v < 10 else f"{v:,.1f}" if v < 1e4 else f"{v:,.0f}"


def markdown(result: dict[str, Any]) -> str:
    dev = result["device"]
    lines = [
        f"# {TITLE}: modelled time of MLP-Mixer on {dev['name']} (not a measurement)",
        "",
        f"Generated by `{result['command']}` at git {result['git_commit']} on {result['created']}. No GPU ran any of "
        "this: it is a model built from counted launches and the SASS kernel report. Assumptions:",
        "",
        *result["assumptions"],
        "",
    ]
    cases = result["cases"]
    lines += [f"## {TITLE}: per Mixer block (us), {cases[0]['dtype']}", ""]
    lines += _provider_table(cases, "block")
    lines += ["", f"## {TITLE}: per model (ms), {cases[0]['dtype']}", ""]
    lines += _provider_table(cases, "model", scale=1e-3)
    lines += ["", f"## {TITLE}: per fused op (us), {cases[0]['dtype']}", ""]
    lines += ["| model | batch | provider | token_mix fwd | token_mix bwd | channel_mix fwd | channel_mix bwd |",
              "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for c in cases:
        for prov in PROVIDERS:
            o = c["ops"][prov]
            cells = [_us(o[op][ph]["us"]) for op in ("token_mix", "channel_mix") for ph in ("forward", "backward")]
            lines.append(f"| {c['variant'].upper()} | {c['batch']} | {prov} | " + " | ".join(cells) + " |")
    for c in cases:
        lines += [
            "",
            f"## {TITLE}: fastmixer launches, one block + once per model, {c['variant'].upper()} batch {c['batch']}",
            "",
        ]
        lines += ["Each Triton row: the config the model picks among the report's (count in brackets); grid = "
                  "programs; executed GFLOP = the SASS's MMA work (tile padding and duplicated dots included). "
                  "Rows with op '-' or norm_pool run once per model, outside the blocks. [b256 build]: the report "
                  "has no batch-1 build of that kernel; its batch-256 build is modelled.", ""]  # fmt: skip
        lines += _kernel_table([*c["kernels"]["fastmixer"], *c["kernels"]["fastmixer rest"]])
    c0 = next((c for c in cases if c["batch"] != 1), cases[0])
    lines += ["", f"## {TITLE}: compile plan of one block, {c0['variant'].upper()} batch {c0['batch']}", ""]
    lines += [
        "| phase | kernel | kind | fuses | GFLOP | MB | bound | MODEL us |",
        "|---|---|---|---|---:|---:|---|---:|",
    ]
    for r in c0["kernels"]["compile plan"]:
        lines.append(f"| {r['phase']} | {r['kernel']} | {r['kind']} | {r['fuses']} | {r['flops'] / 1e9:.1f} | "
                     f"{r['bytes'] / 1e6:.1f} | {r['bound']} | {_us(r['us'])} |")  # fmt: skip
    for comp in result.get("comparisons", []):
        lines += ["", comp["markdown"]]
    return "\n".join(lines) + "\n"


def _provider_table(cases: Sequence[dict[str, Any]], level: str, scale: float = 1.0) -> list[str]:
    unit = "ms" if scale != 1.0 else "us"
    lines = [
        f"| model | batch | provider | forward {unit} | backward {unit} | fwd launches | bwd launches | fwd GB | "
        "bwd GB | fwd / timm eager | bwd / timm eager | fwd / bare GEMMs | bwd / bare GEMMs |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        t = c[level]
        for prov in PROVIDERS:
            f, b = t[prov]["forward"], t[prov]["backward"]
            tf, tb = t["timm eager"]["forward"]["us"], t["timm eager"]["backward"]["us"]
            gf, gb = t["bare GEMMs"]["forward"]["us"], t["bare GEMMs"]["backward"]["us"]
            lines.append(
                f"| {c['variant'].upper()} | {c['batch']} | {prov} | {_us(f['us'] * scale)} | {_us(b['us'] * scale)} "
                f"| {f['launches']:.0f} | {b['launches']:.0f} | {f['gbytes']:.2f} | {b['gbytes']:.2f} | "
                f"{f['us'] / tf:.2f} | {b['us'] / tb:.2f} | {f['us'] / gf:.2f} | {b['us'] / gb:.2f} |"
            )
    return lines


def _kernel_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| phase | op | kernel | config (of) | grid | waves + tail | CTAs/SM | MMA | useful GFLOP | executed GFLOP | "
        "MB | bound | MODEL us |",
        "|---|---|---|---|---:|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if r["source"] == "triton":
            cfg = f"{r['config']} w{r['num_warps']} s{r['num_stages']} ({len(r['candidates'])})"
            cfg += " [b256 build]" if r.get("build_note") else ""
            lines.append(
                f"| {r['phase']} | {r['op']} | {r['kernel']} | {cfg} | {r['programs']} | {r['waves']} + {r['tail']} | "
                f"{r['ctas_per_sm']} | {r['mma_kind']} | {r['useful_flops'] / 1e9:.1f} | "
                f"{r['executed_flops'] / 1e9:.1f} | {r['bytes'] / 1e6:.1f} | {r['bound']} | {_us(r['us'])} |"
            )
        else:
            what = r.get("kind", "")
            if r.get("tile"):
                what += f" {r['tile']}" + (f" split-K {r['split_k']}" if r.get("split_k", 1) > 1 else "")
            lines.append(
                f"| {r['phase']} | {r['op'] or '-'} | {r['kernel']} | {what} | | | | | {r['flops'] / 1e9:.1f} | | "
                f"{r['bytes'] / 1e6:.1f} | {r['bound']} | {_us(r['us'])} |"
            )
    return lines


def _git_commit() -> str | None:
    from fastmixer.bench.harness import git_describe

    return git_describe(ROOT)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return None
    return obj


def run(
    report: dict[str, Any],
    devices: Sequence[str] = ("h100", "h200"),
    models: Sequence[str] = ("b16", "l16"),
    batches: Sequence[int] = (256, 1),
    dtype: str = "bf16",
    measured: Sequence[Path] = (),
    asm: Assumptions = Assumptions(),
    command: str = "python bench/time_model.py",
    num_blocks: int | None = None,
    counted: dict[tuple[str, int], dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The model for each device: {device key: result dict (cases, assumptions, comparisons)}. `counted`: cases
    already counted by count_case, keyed (variant, batch) (the rest are counted here)."""
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"the model covers bf16 and fp16 (tensor-core routes), got {dtype!r}")
    for d in devices:
        if d not in DEVICES:
            raise ValueError(f"device must be one of {sorted(DEVICES)}, got {d!r}")
    reports = [(p, json.loads(Path(p).read_text())) for p in measured]
    wanted = {(m, b) for m in models for b in batches}
    for _, rep in reports:  # the measured cases the model must also cover
        for r in rep.get("results", []):
            if "ms" in r and r.get("dtype") == dtype and r.get("num_blocks") == num_blocks:
                v = r.get("target") if r.get("level") == "model" else r.get("variant", "b16")
                wanted.add((v, r.get("batch")))
    counted = dict(counted or {})
    for m, b in sorted(wanted, key=lambda k: (k[0], -k[1])):
        if (m, b) not in counted:
            counted[(m, b)] = count_case(m, b, torch_dtype, num_blocks)
    out = {}
    for dkey in devices:
        dev = DEVICES[dkey]
        cases = {k: model_case(c, report, dev, asm) for k, c in counted.items()}
        params = {m: counted[(m, b)]["params"] for m, b in counted}
        comparisons = []
        for path, rep in reports:
            rows = compare(rep, cases, dev, asm, params)
            src = f"{Path(path).name} ({rep.get('env', {}).get('device')})"
            comparisons.append(dict(source=str(path), rows=rows, markdown=format_comparison(rows, src, dev.name)))
        shown = [cases[(m, b)] for m in models for b in batches]
        extra = [c for k, c in cases.items() if k not in {(m, b) for m in models for b in batches}]
        out[dkey] = dict(
            title=f"{TITLE}: modelled time of MLP-Mixer on {dev.name}, not a measurement",
            device=dataclasses.asdict(dev),
            assumptions=assumption_lines(dev, asm, report),
            assumption_values=dataclasses.asdict(asm),
            report=report.get("_path"),
            created=datetime.datetime.now().isoformat(timespec="seconds"),
            git_commit=_git_commit(),
            command=command,
            cases=shown + extra,
            comparisons=comparisons,
        )
    return out


def write(results: dict[str, dict[str, Any]], out_dir: Path, stem_date: str | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    date = stem_date or datetime.date.today().isoformat()
    paths = []
    for dkey, res in results.items():
        stem = out_dir / f"{date}-time-model-{dkey}"
        Path(f"{stem}.json").write_text(json.dumps(_jsonable(res), indent=1) + "\n")
        Path(f"{stem}.md").write_text(markdown(res))
        paths += [Path(f"{stem}.json"), Path(f"{stem}.md")]
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", help="kernel report JSON (default: the newest bench/results/*kernel-report*.json)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for <date>-time-model-<device>.{md,json}")
    parser.add_argument("--device", default="h100,h200", help="h100, h200 or both")
    parser.add_argument("--models", default="b16,l16")
    parser.add_argument("--batch", default="256,1")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument(
        "--measured", action="append", default=None, help="GPU report JSON of fastmixer bench on CUDA (repeatable); "
        "default: every such file in bench/results"
    )  # fmt: skip
    parser.add_argument("--date", default=None, help="date in the output file names (default: today)")
    args = parser.parse_args(argv)
    path = args.report or default_report()
    if path is None:
        parser.error("no kernel report found under bench/results; run bench/kernel_resources.py or pass --report")
    report = load_report(path)
    measured = [Path(p) for p in args.measured] if args.measured is not None else find_measured()
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU counting (launches are recorded dry, never run)
    results = run(
        report,
        devices=[d.strip() for d in args.device.split(",") if d.strip()],
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        batches=[int(b) for b in args.batch.split(",") if b.strip()],
        dtype=args.dtype,
        measured=measured,
        command="python bench/time_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    for path_ in write(results, Path(args.out), args.date):
        print(f"wrote {path_}")
    for res in results.values():
        print(markdown(res).split("\n## ")[0])
        for section in markdown(res).split("\n## ")[1:3]:
            print("## " + section)
        for comp in res["comparisons"]:
            print(comp["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
