"""bench/kernel_resources.py's report, rendered from hand-made build rows (no builds): every row is kept, the ones that
do not fit or do not build are listed with their reason, and the per-kernel summary comes first."""

from __future__ import annotations

import importlib.util
import json
import os

import sass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("kernel_resources", os.path.join(ROOT, "bench", "kernel_resources.py"))
kr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kr)

LOOP = """
        /*0000*/                   MOV R1, R2 ;
        /*0010*/                   LDGSTS.E.BYPASS.128 [R7+0x8000], desc[UR14][R8.64], P3 ;
        /*0020*/                   HMMA.16816.F32.BF16 R24, R12, R16, R24 ;
        /*0030*/                   WARPGROUP.ARRIVE ;
        /*0040*/                   HGMMA.64x32x16.F32.BF16 R40, R12, gdesc[UR4], R40, gsb0 ;
        /*0050*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0060*/              @P0 BRA 0x10 ;
        /*0070*/                   EXIT ;
"""


def _row(name: str, arch: int, status: str, **extra) -> dict:
    row = dict(module="fastmixer.kernels.k", name=name, kernel="_k", dtype="bf16+fp32", constexprs={"BLOCK_M": 64},
               num_warps=4, num_stages=2, must_fit=True, arch=arch, status=status, problems=[], error=None)  # fmt: skip
    route, config, shape = kr._labels(row)
    row.update(route=route, config=config, shape=shape)
    if status in ("ok", "does_not_fit"):
        row.update(registers=128, stack_bytes=0, local_bytes=0, spill_stores=0, spill_loads=0, shared_bytes=40960,
                   static_shared_bytes=1024 if arch == 90 else 0, build_s=1.0)  # fmt: skip
        row["occupancy"] = sass.occupancy(arch, 128, 4, 40960, row["static_shared_bytes"])
        row["sass"] = {**sass.analyze(LOOP, arch, 4), "ir_dots": 2}
    row.update(extra)
    return row


TOO_BIG = ["spills 1852 B stores / 1712 B loads", "shared 259.0 KB > 227 KB (sm_90)"]


def test_report_keeps_every_row_and_lists_what_does_not_fit():
    rows = [
        _row("k.k[bf16,cfg0,B:S196:b256]", 90, "ok"),
        _row("k.k[bf16,cfg0,B:S196:b256]", 80, "ok"),
        _row("k.k[bf16,cfg0,B:S576:b256]", 90, "does_not_fit", must_fit=False, spill_stores=1852, problems=TOO_BIG),
        _row("k.k[bf16,cfg1,B:S196:b256]", 90, "build_failed", error="k.k[...] does not build for sm_90: boom"),
    ]
    assert kr._labels(rows[0]) == ("bf16", "cfg0", "B:S196:b256")
    summary = kr.summarize(rows)
    s90 = next(s for s in summary if s["arch"] == 90)
    assert (s90["builds"], s90["fit"], s90["route"]) == (3, 1, "bf16")
    assert sorted(s90["not_fitting"]) == sorted(r["name"] for r in rows[2:])
    assert s90["main_loop_mma"] == {"HGMMA+HMMA": 2} and s90["hmma_flop_share"] == [0.2, 0.2]
    assert s90["waits_each_mma"] == 2 and s90["hgmma_loops"] == 2
    report = dict(schema=kr.SCHEMA, created="2026-12-02T00:00:00", triton="3.8.0", host="test", seconds=1.0,
                  constants={str(a): sass.ARCH[a] for a in sass.ARCH}, assumptions=kr.ASSUMPTIONS, summary=summary,
                  builds=rows)  # fmt: skip
    json.dumps(report)
    md = kr.render_markdown(report)
    sections = [md.index(h) for h in ("## Summary per kernel", "## Builds that do not fit", "## fastmixer.kernels.k")]
    assert sections == sorted(sections)
    bad = md[md.index("## Builds that do not fit") : md.index("## Assumptions")]
    assert "k.k[bf16,cfg0,B:S576:b256]" in bad and "NO (known): spills 1852" in bad and "259.0 KB" in bad
    assert "BUILD FAILED" in bad and "boom" in bad
    body = md[md.index("## fastmixer.kernels.k") :]
    assert body.count("\n| _k |") == 4  # every build is a row, the failed one too
    assert "HMMA 20% of MMA FLOPs" in md  # the HGMMA/HMMA split of the mixed loop


def test_update_reuses_only_matching_rows_of_the_same_triton(tmp_path):
    rows = [
        dict(_row("a", 90, "ok"), build_id="id-a"),
        dict(_row("b", 80, "does_not_fit"), build_id="id-b"),
        dict(_row("c", 90, "build_failed"), build_id="id-c"),  # failed builds are tried again
        _row("d", 90, "ok"),  # a row without a build_id cannot stand for any build
    ]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"triton": "3.8.0", "builds": rows}))
    assert set(kr.reusable_rows(str(path), "3.8.0")) == {("id-a", 90), ("id-b", 80)}
    assert kr.reusable_rows(str(path), "3.6.0") == {}


# ------------------------------------------------------------------------------------------------ build identity
_SCALE = None  # a tl.constexpr global of _fingerprint_probe, set below (triton is imported by conftest first)


def _fingerprint_probe(X):
    return X * _SCALE


def test_source_fingerprint_sees_constexpr_globals(monkeypatch):
    """A kernel's build id (tests/aot.build_id) changes with the value of a tl.constexpr global it reads (the GELU's
    fitted coefficients are such globals): otherwise a report row would still pass as current after such an edit."""
    import aot
    import triton
    import triton.language as tl

    fn = triton.runtime.jit.JITFunction(_fingerprint_probe)  # a real JITFunction, also under the interpreter
    monkeypatch.setitem(globals(), "_SCALE", tl.constexpr(0.5))
    before = aot.source_fingerprint(fn)
    assert any(line.endswith("_SCALE\n0.5") for line in before), before
    monkeypatch.setitem(globals(), "_SCALE", tl.constexpr(0.25))
    assert aot.source_fingerprint(fn) != before


_cspec = importlib.util.spec_from_file_location("compare_reports", os.path.join(ROOT, "bench", "compare_reports.py"))
cr = importlib.util.module_from_spec(_cspec)
_cspec.loader.exec_module(cr)


def test_compare_reports_lists_what_changed():
    """bench/compare_reports.py: per (kernel, route) at one arch, "before / after" only in the cells that differ;
    unchanged kernels are left out unless asked for; a kernel in one report only shows "(none)" on the other side."""
    k, j, n = "k.k[bf16,cfg0,B:S196:b256]", "k.j[bf16,cfg0,B:S196:b256]", "k.n[fp16,cfg0,B:S196:b256]"
    old_rows = [_row(k, 90, "ok"), _row(k, 80, "ok"), dict(_row(j, 90, "ok"), kernel="_j")]
    new_rows = [_row(k, 90, "ok", registers=160), _row(k, 80, "ok"), dict(_row(j, 90, "ok"), kernel="_j"),
                dict(_row(n, 90, "ok"), kernel="_n")]  # fmt: skip
    old, new = dict(builds=old_rows, triton="3.8.0"), dict(builds=new_rows, triton="3.8.0")
    md = cr.compare(old, new, arch=90)
    row_k = next(line for line in md.splitlines() if line.startswith("| `_k` |"))
    assert "| 128 / 160 |" in row_k and "| HGMMA+HMMA |" in row_k  # changed cell vs unchanged cell
    assert "`_j`" not in md and "`_j`" in cr.compare(old, new, arch=90, show_all=True)
    assert "| `_n` | fp16 | (none) / 1 |" in md
    assert "`_k`" not in cr.compare(old, new, arch=80)  # sm_80 rows did not change
