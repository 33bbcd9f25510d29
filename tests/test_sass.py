"""The SASS reader and occupancy arithmetic of tests/sass.py, and the report fields tests/aot.py attaches to every
ahead-of-time build.

Unmarked tests read committed SASS excerpts (tests/data/sass/, cut from real builds of this repository; each file's
header says which) and hand-checked numbers. The `gpu_build` tests read the builds the gpu_build suite already makes
(aot.build caches per process, and this file runs after test_gpu_build.py): no second build per spec."""

from __future__ import annotations

import os

import aot
import pytest
import sass

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sass")


def _fixture(name: str) -> str:
    with open(os.path.join(DATA, name)) as f:
        return f.read()


# ------------------------------------------------------------------------------------------------ real SASS excerpts
def test_fc1_main_loop_matches_the_issue():
    # _ln_fc1_gelu_kernel bf16, 128x128 tile, BLOCK_K=64, 8 warps, sm_90, as of commit b40010c (LayerNorm applied to
    # the A tile inside the main loop). Issue 8 read ~660 issued instructions against ~512 MMA cycles per step.
    ml = sass.analyze(_fixture("fc1_bf16_128x128x64_w8_sm90.nvdisasm.txt"), 90, 8)["main_loop"]
    assert ml["instructions"] == 331
    assert ml["shapes"] == {"HGMMA.64x128x16.F32.BF16": 4} and ml["mma_kind"] == "HGMMA" and ml["mma_dtype"] == "bf16"
    # 4 wgmma per warpgroup x 2 warpgroups x 2*64*128*16 = the tile's 2*128*128*64
    assert ml["mma_flops_per_cta"] == 2 * 128 * 128 * 64
    assert ml["mma_cycles"] == 512.0  # / 4096 FLOP per SM per cycle (H100 dense bf16)
    assert ml["issue_cycles"] == 662.0  # 331 x 8 warps / 4 sub-partitions
    assert ml["issue_over_mma"] == pytest.approx(662 / 512, abs=1e-3)
    assert ml["wgmma_waits"] == [1, 1] and ml["waits_each_mma"] is False  # one wgmma group stays in flight
    ops = ml["operands"]
    assert ops["LDGSTS"] == 10 and ops["LDGSTS_widths"] == {"128": 8, "32": 2} and ops["LDG"] == 0
    assert ops["UTMALDG"] == 0 and ops["LDSM"] == 6 and ops["STS"] == 8
    assert ml["operand_paths"][0] == "cp.async(128b x8, 32b x2)"
    # the same loop on A100 rates: 2048 FLOP per SM per cycle
    assert sass.analyze(_fixture("fc1_bf16_128x128x64_w8_sm90.nvdisasm.txt"), 80, 8)["main_loop"]["mma_cycles"] == 1024


def test_both_disassembler_formats_read_alike():
    # aot self-test GEMM "fits" (64x64x32, 4 warps) for sm_90: whole function from nvdisasm -c (labels) and its main
    # loop from cuobjdump -sass (hex targets, encoding lines).
    whole = sass.analyze(_fixture("selftest_fits_sm90.nvdisasm.txt"), 90, 4)
    cut = sass.analyze(_fixture("selftest_fits_sm90_loop.cuobjdump.txt"), 90, 4)
    a, b = whole["main_loop"], cut["main_loop"]
    for key in ("start", "end", "instructions", "counts", "shapes", "operands", "wgmma_waits", "mma_flops_per_cta"):
        assert a[key] == b[key], key
    assert a["shapes"] == {"HGMMA.64x64x16.F32": 2} and a["mma_dtype"] == "fp16"
    assert a["mma_flops_per_cta"] == 2 * 64 * 64 * 32
    # the function also waits with "gsb0, 0x0" after the loop: outside the main loop, so it does not count
    assert a["wgmma_waits"] == [1] and a["waits_each_mma"] is False
    # whole function: one loop; the `BRA self` after EXIT is no loop; the tail NOPs are not counted
    assert len(whole["loops"]) == 1 and whole["counts"]["HGMMA"] == 2
    assert whole["instructions"] < len(sass.parse(_fixture("selftest_fits_sm90.nvdisasm.txt")))


def test_hmma_loop_sm80():
    # the same self-test GEMM built for sm_80: mma.sync, m16n8k16, per warp
    ml = sass.analyze(_fixture("selftest_fits_sm80_loop.cuobjdump.txt"), 80, 4)["main_loop"]
    assert ml["shapes"] == {"HMMA.16816.F32": 16} and ml["counts"]["HGMMA"] == 0
    assert ml["mma_flops_per_cta"] == 16 * 4096 * 4 == 2 * 64 * 64 * 32
    assert ml["mma_cycles"] == 128.0  # 262144 / 2048
    assert ml["waits_each_mma"] is None and ml["wgmma_waits"] == []  # n/a for mma.sync
    assert ml["operands"]["LDSM"] > 0 and ml["operands"]["LDGSTS_widths"] == {"128": 4}
    assert ml["issue_cycles"] == ml["instructions"]  # 4 warps: one per sub-partition


def test_loop_that_drains_every_wgmma():
    # aot self-test GEMM "spills" (128x256x32, 4 warps, sm_90), main loop only: each wgmma followed by gsb0, 0x0
    ml = sass.analyze(_fixture("selftest_spills_sm90_loop.nvdisasm.txt"), 90, 4)["main_loop"]
    assert ml["shapes"] == {"HGMMA.64x256x16.F32": 4}
    assert ml["wgmma_waits"] == [0, 0, 0, 0] and ml["waits_each_mma"] is True
    assert ml["mma_flops_per_cta"] == 2 * 128 * 256 * 32


def test_ffma_route_and_kernels_without_dot():
    # aot self-test "fma": fp32 "ieee" tl.dot (FMA units), 32x32x16 tile, 4 warps, sm_80; plain LDG operands (1 stage)
    text = _fixture("selftest_fma_sm80_loop.cuobjdump.txt")
    ml = sass.analyze(text, 80, 4)["main_loop"]
    assert ml["mma_kind"] == "FFMA" and ml["mma_dtype"] == "ffma_fp32" and ml["shapes"] == {}
    assert ml["counts"]["FFMA"] == 32 * 32 * 16 // 128  # one FMA per output per k, spread over 128 threads
    assert ml["mma_flops_per_cta"] == 2 * 32 * 32 * 16
    assert ml["mma_cycles"] == 2 * 32 * 32 * 16 / 256
    assert ml["issue_over_mma"] >= 1.0  # one FFMA per sub-partition per cycle: an FFMA loop is never MMA-bound
    assert ml["operands"]["LDG"] > 0 and ml["operands"]["LDGSTS"] == 0 and ml["waits_each_mma"] is None
    # the same text read as a kernel without tl.dot: the loop is still found, with no matrix work
    ml = sass.analyze(text, 80, 4, ffma_is_mma=False)["main_loop"]
    assert ml["mma_kind"] is None and ml["mma_flops_per_cta"] == 0 and ml["issue_over_mma"] is None


# ------------------------------------------------------------------------------------------------ loop structure
# Hand-written SASS in cuobjdump's layout (synthetic, not from a build): an outer loop [0x10, 0x90] holding an inner
# mma.sync loop [0x30, 0x60], and an out-of-line block after EXIT that jumps back into the outer loop.
SYNTHETIC = """
\t\tFunction : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   LDG.E.U16 R8, desc[UR4][R2.64] ;
        /*0030*/                   LDSM.16.M88.4 R12, [R20] ;
        /*0040*/                   HMMA.16816.F32.BF16 R24, R12, R16, R24 ;
        /*0050*/                   HMMA.16816.F32.BF16 R28, R12, R18, R28 ;
        /*0060*/              @P0 BRA 0x30 ;
        /*0070*/                   FFMA R1, R2, R3, R1 ;
        /*0080*/              @P1 BRA 0xb0 ;
        /*0090*/              @P2 BRA 0x10 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   STS [R1], R2 ;
        /*00c0*/                   BRA 0x70 ;
        /*00d0*/                   BRA 0xd0 ;
        /*00e0*/                   NOP ;
"""


def test_loops_nesting_and_out_of_line_blocks():
    rep = sass.analyze(SYNTHETIC, 80, 8)
    loops = {(lp["start"], lp["end"]): lp for lp in rep["loops"]}
    assert set(loops) == {(0x10, 0x90), (0x30, 0x60), (0x70, 0xC0)}  # BRA 0xd0 at 0xd0 is the trap, not a loop
    assert loops[(0x30, 0x60)]["depth"] == 1 and loops[(0x10, 0x90)]["depth"] == 0
    assert loops[(0x70, 0xC0)]["natural"] is False  # spans the EXIT: an out-of-line block jumping back
    ml = rep["main_loop"]
    assert (ml["start"], ml["end"], ml["instructions"]) == (0x30, 0x60, 4)  # innermost loop with MMA
    assert ml["counts"]["HMMA"] == 2 and ml["counts"]["FFMA"] == 0
    assert ml["mma_flops_per_cta"] == 2 * 4096 * 8
    whole = rep["counts"]
    assert whole["HMMA"] == 2 and whole["FFMA"] == 1 and rep["instructions"] == 14  # the NOP is not counted
    outer = sass.operand_paths(sass.parse(SYNTHETIC)[1:10])
    assert outer["LDG"] == 2 and outer["LDG_widths"] == {"128": 1, "16": 1} and outer["LDSM"] == 1


def test_nvdisasm_labels_and_function_choice():
    text = """
.text.other:
        /*0000*/                   EXIT ;
.text.k:
        /*0000*/                   MOV R1, R2 ;
.L_x_0:
        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, R92, gdesc[UR4], R24, gsb0 ;
        /*0020*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0030*/              @!P2 BRA `(.L_x_0) ;
        /*0040*/                   EXIT ;
"""
    ml = sass.analyze(text, 90, 8, kernel="k")["main_loop"]
    assert (ml["start"], ml["instructions"]) == (0x10, 3) and ml["waits_each_mma"] is True
    assert ml["mma_flops_per_cta"] == 2 * 2 * 64 * 128 * 16  # 2 warpgroups
    assert sass.analyze(text, 90, 8, kernel="other")["main_loop"] is None
    with pytest.raises(ValueError, match="no function 'absent'"):
        sass.parse(text, "absent")
    with pytest.raises(ValueError, match="no SASS instructions"):
        sass.parse("Function : k\n")
    with pytest.raises(TypeError, match="must be a str"):
        sass.parse(b"bytes")
    with pytest.raises(ValueError, match="arch must be one of"):
        sass.analyze(text, 75, 8)


def test_loop_with_both_mma_kinds():
    # synthetic: one loop issuing mma.sync (a dot with M < 64) and wgmma, as token_mix's BLOCK_D=32 configs do on sm_90
    text = """
        /*0000*/                   MOV R1, R2 ;
        /*0010*/                   HMMA.16816.F32.BF16 R24, R12, R16, R24 ;
        /*0020*/                   WARPGROUP.ARRIVE ;
        /*0030*/                   HGMMA.64x32x16.F32.BF16 R40, R12, gdesc[UR4], R40, gsb0 ;
        /*0040*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0050*/              @P0 BRA 0x10 ;
"""
    ml = sass.analyze(text, 90, 4)["main_loop"]
    assert ml["mma_kind"] == "HGMMA+HMMA" and ml["waits_each_mma"] is True
    assert ml["mma_flops_by_kind"] == {"HGMMA": 2 * 64 * 32 * 16, "HMMA": 4096 * 4}
    assert ml["mma_cycles_by_kind"] == {"HGMMA": 16.0, "HMMA": 4.0} and ml["mma_cycles"] == 20.0


def test_mma_shapes_flops_and_types():
    assert sass.mma_shape("HGMMA.64x256x16.F32.BF16") == ("HGMMA", 64, 256, 16)
    assert sass.mma_shape("HMMA.16816.F32.BF16") == ("HMMA", 16, 8, 16)
    assert sass.mma_shape("HMMA.1688.F32.TF32") == ("HMMA", 16, 8, 8)
    assert sass.mma_shape("FFMA") is None and sass.mma_shape("LDG.E.128") is None
    assert sass.mma_flops("HMMA.16816.F32", 1) == 4096 and sass.mma_flops("HMMA.1688.F32.TF32", 1) == 2048
    assert sass.mma_flops("HGMMA.64x128x16.F32.BF16", 4) == 2 * 64 * 128 * 16  # one warpgroup
    assert sass.mma_flops("FFMA.FTZ", 2) == 128
    with pytest.raises(ValueError, match="whole warpgroups"):
        sass.mma_flops("HGMMA.64x64x16.F32", 2)
    types = {op: sass.mma_dtype(op) for op in ("HGMMA.64x64x8.F32.TF32", "HMMA.16816.F32", "HMMA.16816.F32.BF16")}
    assert types == {"HGMMA.64x64x8.F32.TF32": "tf32", "HMMA.16816.F32": "fp16", "HMMA.16816.F32.BF16": "bf16"}
    assert sass.mma_dtype("IMMA.16832.S8.S8") == "int8" and sass.mma_dtype("DMMA.884") == "fp64"


# ------------------------------------------------------------------------------------------------ occupancy
def test_occupancy_limiters():
    # 170 regs -> 176/thread -> 5632/warp -> 2 warps per 16 K sub-partition -> 8 warps/SM -> one 8-warp CTA
    o = sass.occupancy(90, 170, 8, 66048, 1024)
    assert (o["ctas_per_sm"], o["warps_per_sm"], o["limiter"]) == (1, 8, "registers")
    assert o["regs_per_warp"] == 5632 and o["limits"]["registers"] == 1
    # sm_90 cubins count the 1 KB reservation as static shared: 64.5 KB + 1 KB per CTA, 228 KB / 65.5 KB -> 3
    assert o["shared_per_cta_bytes"] == 66048 + 1024 and o["limits"]["shared"] == 3
    # sm_80: no static shared in the cubin, the reservation is added: 164 KB / 65.5 KB -> 2
    assert sass.occupancy(80, 170, 8, 66048, 0)["limits"]["shared"] == 2
    # 96 regs, 4 warps, 8 KB: 3072/warp -> 5 warps per sub-partition -> 20 warps -> 5 CTAs (registers)
    o = sass.occupancy(80, 96, 4, 8192)
    assert (o["ctas_per_sm"], o["warps_per_sm"], o["limiter"]) == (5, 20, "registers")
    # shared-bound: 100 KB per CTA on sm_90 -> 2 CTAs (228 / 101)
    o = sass.occupancy(90, 64, 4, 100 * 1024, 1024)
    assert (o["ctas_per_sm"], o["limiter"]) == (2, "shared")
    # 32 regs x 16 warps: registers allow 64 warps, the 64-warp cap too -> a tie
    o = sass.occupancy(90, 32, 16, 0, 1024)
    assert (o["ctas_per_sm"], o["warps_per_sm"], o["limiter"]) == (4, 64, "registers+warps")
    # tiny one-warp CTAs stop at 32 CTAs per SM
    o = sass.occupancy(80, 16, 1, 256)
    assert (o["ctas_per_sm"], o["warps_per_sm"], o["limiter"]) == (32, 32, "ctas")
    # register allocation granularity: 161..168 registers take the same 168 x 32 = 5376 per warp
    assert sass.occupancy(90, 161, 4, 0)["regs_per_warp"] == sass.occupancy(90, 168, 4, 0)["regs_per_warp"] == 5376


def test_occupancy_does_not_launch():
    o = sass.occupancy(90, 128, 8, 232448 + 1, 1024)  # one byte over 227 KB of user shared memory
    assert o["ctas_per_sm"] == 0 and o["limiter"] == "does_not_launch" and "shared" in o["problems"][0]
    assert sass.occupancy(90, 128, 8, 232448, 1024)["ctas_per_sm"] == 1
    assert sass.occupancy(80, 0, 4, 163 * 1024 + 1)["ctas_per_sm"] == 0
    o = sass.occupancy(80, 255, 16, 0)  # 256 x 32 x 16 = 131072 registers > 65536 per block
    assert o["ctas_per_sm"] == 0 and "per block" in o["problems"][0]
    with pytest.raises(ValueError, match="registers must be"):
        sass.occupancy(90, -1, 4, 0)
    with pytest.raises(ValueError, match="arch must be one of"):
        sass.occupancy(70, 32, 4, 0)


# ------------------------------------------------------------------------------------------------ real builds
@pytest.mark.gpu_build
@pytest.mark.parametrize(("arch", "kind", "absent"), [(90, "HGMMA", "HMMA"), (80, "HMMA", "HGMMA")])
def test_selftest_gemm_mma_kind(arch, kind, absent):
    spec = next(s for s in aot.list_specs(aot.SELFTEST_MODULE) if s["name"] == "fits")
    res = aot.build(spec, arch)
    rep = res["sass"]
    assert rep["ir_dots"] == 1 and rep["counts"][kind] > 0 and rep["counts"][absent] == 0
    ml = rep["main_loop"]
    assert ml["mma_kind"] == kind and ml["mma_flops_per_cta"] == 2 * 64 * 64 * 32  # one BMxBNxBK step
    assert res["occupancy"]["ctas_per_sm"] >= 1


@pytest.mark.gpu_build
@pytest.mark.parametrize("arch", aot.ARCHS)
def test_selftest_fma_route_counts_ffma(arch):
    spec = next(s for s in aot.list_specs(aot.SELFTEST_MODULE) if s["name"] == "fma")
    rep = aot.build(spec, arch)["sass"]
    assert rep["ir_dots"] == 1 and sum(rep["counts"][k] for k in sass.TENSOR_MMA) == 0
    ml = rep["main_loop"]
    assert ml["mma_kind"] == "FFMA" and ml["mma_flops_per_cta"] == 2 * 32 * 32 * 16


# Every committed kernel-report row's SASS and occupancy fields are checked for consistency by
# tests/test_gpu_build.py::test_report_rows_are_consistent (no build per spec in CI; see that file).
