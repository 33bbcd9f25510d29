"""Every AOT build of every kernel x autotune config x dtype route x shape, for sm_90 (H100) and sm_80 (A100), without
a GPU: the committed kernel report stands for the full matrix, verified here.

The full matrix (~700 builds, ~30 CPU-minutes) is built by `python bench/kernel_resources.py`, which writes
bench/results/<date>-kernel-report.json. CI does not rebuild it; it checks that the newest committed report
  * covers the current specs exactly: every (spec, arch) has a row with the spec's build_id (tests/aot.build_id: triton
    version, the kernel's source and callees, the specialisation), so a kernel or spec change without a new report
    fails here, naming the command to run;
  * says every required build fits (no spills, no stack, shared memory and register file within the block limits),
    and reports the sizes not yet required (must_fit=False) with their reason;
  * is reproducible: a sample of rows (one per kernel and arch, chosen by build_id, so it moves as the code changes) is
    rebuilt now and must match the committed row (registers, spills, shared memory, MMA mix, main-loop counts).
Under another triton than the report's (the GPU machines' 3.6), coverage cannot be checked: the sample is built and
checked for fit instead.
"""

from __future__ import annotations

import glob
import json
import os

import aot
import pytest

pytestmark = pytest.mark.gpu_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGENERATE = "python bench/kernel_resources.py  (writes bench/results/<date>-kernel-report.{md,json})"


def _newest_report() -> tuple[str | None, dict | None]:
    paths = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*-kernel-report.json")))
    if not paths:
        return None, None
    with open(paths[-1]) as f:
        return paths[-1], json.load(f)


REPORT_PATH, REPORT = _newest_report()


def _triton_version() -> str:
    import triton  # the worker runs this interpreter, so the same triton

    return triton.__version__


def _specs() -> list[dict]:
    return [s for module in aot.KERNEL_MODULES for s in aot.list_specs(module)]


def _rows() -> dict[tuple[str, int], dict]:
    return {(r["build_id"], r["arch"]): r for r in REPORT["builds"] if r.get("build_id")}


def _same_triton() -> bool:
    return REPORT is not None and REPORT.get("triton") == _triton_version()


def test_a_report_is_committed():
    assert REPORT is not None, f"no bench/results/*-kernel-report.json; run {REGENERATE}"
    assert REPORT["schema"].startswith("fastmixer.kernel_report/")


def test_report_covers_the_current_specs():
    if not _same_triton():
        built_with = REPORT and REPORT.get("triton")
        pytest.skip(f"{REPORT_PATH} was built with triton {built_with}, this is triton {_triton_version()}: its build "
                    "ids cannot match (the sample test builds here instead)")  # fmt: skip
    rows = _rows()
    missing = [f"{s['name']} sm_{a}" for s in _specs() for a in aot.spec_archs(s) if (s["build_id"], a) not in rows]
    assert not missing, (
        f"{len(missing)} current builds are not in {os.path.basename(REPORT_PATH)} (kernels or specs changed since): "
        f"{missing[:5]} ...; run {REGENERATE} and commit it"
    )


def test_required_builds_fit():
    if not _same_triton():
        pytest.skip("report from another triton version (see test_report_covers_the_current_specs)")
    rows = _rows()
    bad, known = [], []
    for spec in _specs():
        for arch in aot.spec_archs(spec):
            row = rows.get((spec["build_id"], arch))
            if row is None or row["status"] == "ok":
                continue
            why = row.get("error") or "; ".join(row["problems"])
            (bad if spec["must_fit"] else known).append(f"{spec['name']} sm_{arch}: {row['status']}: {why}")
    print(f"{len(known)} builds of sizes not yet required do not fit:", *known[:20], sep="\n  ")
    assert not bad, "required builds do not fit:\n" + "\n".join(bad)


def _sample() -> list[tuple[dict, int]]:
    # One spec per (kernel function, arch): the one with the smallest build_id, so the sample moves when code does.
    best: dict[tuple[str, int], dict] = {}
    for spec in _specs():
        for arch in aot.spec_archs(spec):
            key = (spec["kernel"], arch)
            if key not in best or spec["build_id"] < best[key]["build_id"]:
                best[key] = spec
    return [(spec, arch) for (_, arch), spec in sorted(best.items())]


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ != "test_sample_rebuild_matches_the_report":
        return
    if "not gpu_build" in (metafunc.config.getoption("markexpr", "") or ""):
        params = [pytest.param(None, None, id="deselected")]  # do not start the build worker just to list specs
    else:
        params = [pytest.param(s, a, id=f"{s['kernel']}-sm{a}") for s, a in _sample()]
    metafunc.parametrize(("spec", "arch"), params)


COMPARED = ("registers", "stack_bytes", "local_bytes", "spill_stores", "spill_loads", "shared_bytes")


def test_sample_rebuild_matches_the_report(spec, arch):
    res = aot.build(spec, arch)
    where = f"{spec['name']} on sm_{arch}"
    if not _same_triton():
        if spec["must_fit"]:
            assert res["ok"], f"{where}: {res['problems']}"
        return
    row = _rows().get((spec["build_id"], arch))
    assert row is not None, f"{where} is not in the report; run {REGENERATE}"
    assert {k: res[k] for k in COMPARED} == {k: row[k] for k in COMPARED}, where
    assert res["ok"] == (row["status"] == "ok"), where
    ours, theirs = res["sass"], row["sass"]
    assert ours["counts"] == theirs["counts"] and ours["shapes"] == theirs["shapes"], where
    assert (ours["main_loop"] or {}).get("instructions") == (theirs["main_loop"] or {}).get("instructions"), where
    assert res["occupancy"] == row["occupancy"], where


def test_report_rows_are_consistent():
    """Every committed row carries a complete, self-consistent SASS and occupancy report (what the time model reads)."""
    if REPORT is None:
        pytest.skip("no report")
    import sass

    for row in REPORT["builds"]:
        if row["status"] not in ("ok", "does_not_fit"):
            continue
        where = f"{row['name']} sm_{row['arch']}"
        rep, occ = row["sass"], row["occupancy"]
        assert rep and "error" not in rep, where
        counts = rep["counts"]
        tensor = sum(counts[k] for k in sass.TENSOR_MMA)
        if row["arch"] < 90:
            assert counts["HGMMA"] == 0, f"{where}: wgmma on sm_{row['arch']}"
        ml = rep["main_loop"]
        if rep.get("ir_dots"):
            assert tensor or counts["FFMA"], f"{where}: tl.dot but no MMA/FFMA in the SASS"
            if ml is None:  # a K loop of constant trip count (a constexpr bound, e.g. S = 49 or 256 in the token
                # backward GEMMs) run once or fully unrolled: all matrix work is straight-line, none inside any loop
                assert "S" in (row.get("constexprs") or {}), f"{where}: no main loop with matrix work"
                assert not any(lp.get("mma_flops_per_cta") for lp in rep.get("loops") or []), where
            else:
                assert ml["mma_kind"] is not None, f"{where}: no main loop with matrix work"
                assert ml["mma_flops_per_cta"] > 0 and ml["mma_cycles"] > 0 and ml["issue_over_mma"] > 0, where
        else:
            assert tensor == 0, f"{where}: tensor MMA without a tt.dot"
        if ml is not None:
            assert 0 < ml["instructions"] <= rep["instructions"], where
            assert ml["issue_cycles"] == ml["instructions"] * max(row["num_warps"], 4) / 4, where
        assert occ["warps_per_sm"] == occ["ctas_per_sm"] * row["num_warps"], where
        if row["status"] == "ok":
            assert occ["ctas_per_sm"] >= 1, where


FORWARD_MODULES = ("channel_mix", "token_mix", "layernorm", "norm_pool")
BACKWARD_MODULES = ("channel_mix_bwd", "token_mix_bwd")
# The MMA kernels each direction must contain (so that a renamed or dropped kernel cannot pass by absence).
MMA_KERNELS = {
    "forward": {"_fc1_gelu_kernel", "_fc2_residual_kernel", "_token_mix_fwd_kernel", "_token_fc1_kernel"},
    "backward": {
        "_dual_gemm_kernel",
        "_wgrad_kernel",
        "_token_dgrad_kernel",
        "_token_dy_kernel",
        "_token_dgrad_dy_kernel",
    },
}


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_matrix_work_is_wgmma_on_sm90(direction):
    """Every kernel with a tl.dot of that direction, at every config, dtype route and shape the launchers can pick
    (every token count from 49 to 1024 included), built for sm_90: all its MMA on HGMMA (no mma.sync HMMA), fitting,
    no spills. The fp32 "ieee" route (FMA units) is exempt: torch's own fp32 matmul does not use tensor cores there
    either."""
    if REPORT is None:
        pytest.skip("no report")
    modules = FORWARD_MODULES if direction == "forward" else BACKWARD_MODULES
    rows = [
        r
        for r in REPORT["builds"]
        if r["arch"] == 90 and r["module"].rsplit(".", 1)[-1] in modules and (r["sass"] or {}).get("ir_dots")
    ]
    kernels = {r["kernel"] for r in rows if r["route"] != "fp32"}
    assert MMA_KERNELS[direction] <= kernels, sorted(kernels)
    for r in rows:
        where = f"{r['name']} sm_90"
        assert r["status"] == "ok" and r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{where}: {r['problems']}"
        counts = r["sass"]["counts"]
        if r["route"] == "fp32":
            assert counts["HGMMA"] == counts["HMMA"] == 0 and counts["FFMA"] > 0, where
        else:
            assert counts["HMMA"] == 0 and counts["HGMMA"] > 0, f"{where}: {counts}"


# ------------------------------------------------------------------------------------------------ the checker itself
# Real builds of the small GEMM in aot._selftest_specs: the checks must pass a fitting kernel and catch a spilling one
# and one that overflows shared memory (otherwise the tests above could not fail).
def _selftest_spec(name: str) -> dict:
    return next(s for s in aot.list_specs(aot.SELFTEST_MODULE) if s["name"] == name)


def _selftest(name: str, arch: int) -> dict:
    return aot.build(_selftest_spec(name), arch)


def test_checker_passes_a_fitting_kernel():
    res = _selftest("fits", 90)
    assert res["ok"], res["problems"]
    assert 0 < res["registers"] <= 255
    assert res["shared_bytes"] > 0  # a pipelined dot stages its operands in shared memory
    assert aot.build(_selftest_spec("fits"), 90) is res  # cached per process


def test_checker_catches_spills():
    res = _selftest("spills", 80)
    assert res["spill_stores"] > 0 and res["stack_bytes"] > 0
    assert not res["ok"] and any("spill" in p for p in res["problems"])


def test_checker_catches_shared_overflow():
    res = _selftest("big_smem", 80)
    assert res["shared_bytes"] > aot.SHARED_LIMIT[80]
    assert not res["ok"] and any("shared" in p for p in res["problems"])


def test_build_errors_name_the_spec():
    with pytest.raises(RuntimeError, match="no spec 'nope'"):
        aot.build({"module": aot.SELFTEST_MODULE, "name": "nope"}, 90)
    with pytest.raises(ValueError, match="arch must be one of"):
        aot.build(_selftest_spec("fits"), 75)


# ------------------------------------------------------------------------------------------------ parsing and limits
CUOBJDUMP = """
Resource usage:
 Common:
  GLOBAL:0
 Function other_kernel:
  REG:40 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:544 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function mm:
  REG:255 STACK:104 SHARED:1024 LOCAL:8 CONSTANT[0]:584 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
PTXAS = """ptxas info    : Compiling entry function 'mm' for 'sm_90a'
ptxas info    : Function properties for mm
    104 bytes stack frame, 112 bytes spill stores, 96 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 104 bytes cumulative stack size
"""


def test_parsers():
    assert aot.parse_resource_usage(CUOBJDUMP, "mm") == dict(
        registers=255, stack_bytes=104, static_shared_bytes=1024, local_bytes=8
    )
    assert aot.parse_resource_usage(CUOBJDUMP, "other_kernel")["registers"] == 40
    assert aot.parse_ptxas_log(PTXAS, "mm") == dict(spill_stores=112, spill_loads=96)
    with pytest.raises(ValueError, match="no function 'absent'"):
        aot.parse_resource_usage(CUOBJDUMP, "absent")
    with pytest.raises(ValueError, match="Function properties for absent"):
        aot.parse_ptxas_log(PTXAS, "absent")


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_limits(arch):
    limit = aot.SHARED_LIMIT[arch]
    clean = dict(arch=arch, registers=128, num_warps=4, spill_stores=0, spill_loads=0, stack_bytes=0, local_bytes=0)
    clean.update(shared_bytes=0, static_shared_bytes=0)
    assert aot.check_limits(clean) == []
    assert aot.check_limits({**clean, "shared_bytes": limit - 1024, "static_shared_bytes": 1024}) == []
    (over,) = aot.check_limits({**clean, "shared_bytes": limit - 1023, "static_shared_bytes": 1024})
    assert "shared" in over
    (regs,) = aot.check_limits({**clean, "registers": 255, "num_warps": 16})  # 255 x 512 threads > 64 K registers
    assert "registers" in regs
    assert len(aot.check_limits({**clean, "spill_stores": 4, "stack_bytes": 8})) == 2
