"""bench/time_model.py, the H100/H200 time MODEL: wave/tail arithmetic, the max-of-bounds rule, loop accounting from the
SASS report, config choice, cuBLAS and compile-plan construction, report coverage of every launched kernel, and the
model-vs-measurement table. Report rows come from tests/time_model_fixture.py (a TEST FIXTURE in the report's schema)
unless a committed kernel report is named."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import time_model as tm  # noqa: E402
import time_model_fixture as fx  # noqa: E402

from fastmixer.bench import counting  # noqa: E402

H100 = tm.DEVICES["h100"]
ASM = tm.Assumptions()
HZ = H100.clock_ghz * 1e9
BW = H100.hbm_tb_s * 1e12 * ASM.mem_eff


def _per_program(mma=0.0, instr=0.0, warps=4, waits=False):
    return dict(mma_cycles=mma, instructions=instr, warps=warps, waits_each_mma=waits)


def test_wave_and_tail_arithmetic():
    # 300 programs, 2 CTAs/SM on 132 SMs: one full wave of 264 (2 per SM), a tail of 36 (1 per SM)
    w = tm.wave_time(300, 2, _per_program(mma=1000.0), 0, H100, ASM)
    assert (w["waves"], w["tail"]) == (1, 36)
    assert w["seconds"] == pytest.approx((2 * 1000 + 1 * 1000) / HZ)
    # exactly full waves: no tail
    w = tm.wave_time(264 * 3, 2, _per_program(mma=1000.0), 0, H100, ASM)
    assert (w["waves"], w["tail"]) == (3, 0) and w["seconds"] == pytest.approx(3 * 2000 / HZ)
    # a grid smaller than the SMs: one partial wave, one CTA on the busiest SM
    w = tm.wave_time(10, 4, _per_program(mma=500.0), 0, H100, ASM)
    assert (w["waves"], w["tail"]) == (0, 10) and w["seconds"] == pytest.approx(500 / HZ)
    # a tail of 133 CTAs at 4/SM puts 2 on the busiest SM
    w = tm.wave_time(528 + 133, 4, _per_program(mma=100.0), 0, H100, ASM)
    assert w["seconds"] == pytest.approx((4 * 100 + 2 * 100) / HZ)
    # a build that does not fit never launches
    assert math.isinf(tm.wave_time(10, 0, _per_program(mma=1.0), 0, H100, ASM)["seconds"])
    with pytest.raises(ValueError, match="programs"):
        tm.wave_time(0, 1, _per_program(), 0, H100, ASM)


def test_each_wave_takes_the_largest_bound():
    n = 132 * 2  # one full wave, 2 CTAs per SM, 8 warps each
    # MMA: 2 x 1000 cycles beats issue 2 x 100 x 8/4 = 400 and no bytes
    w = tm.wave_time(n, 2, _per_program(mma=1000, instr=100, warps=8), 0, H100, ASM)
    assert w["bound"] == "mma" and w["seconds"] == pytest.approx(2000 / HZ)
    # issue: 300 instructions per warp, 16 warps on 4 sub-partitions -> 1200 cycles > 2 x 500 MMA
    w = tm.wave_time(n, 2, _per_program(mma=500, instr=300, warps=8), 0, H100, ASM)
    assert w["bound"] == "issue" and w["seconds"] == pytest.approx(1200 / HZ)
    # chain: one CTA per SM that waits for each MMA serialises MMA and its own issue (1000 + 300 x 8/4 = 1600)
    w = tm.wave_time(132, 2, _per_program(mma=1000, instr=300, warps=8, waits=True), 0, H100, ASM)
    assert w["bound"] == "chain" and w["seconds"] == pytest.approx(1600 / HZ)
    # the same without the wait: issue overlaps the MMA, MMA-bound
    w = tm.wave_time(132, 2, _per_program(mma=1000, instr=300, warps=8), 0, H100, ASM)
    assert w["bound"] == "mma" and w["seconds"] == pytest.approx(1000 / HZ)
    # memory: 1 GB over one wave
    w = tm.wave_time(n, 2, _per_program(mma=1000, instr=100, warps=8), 1e9, H100, ASM)
    assert w["bound"] == "memory" and w["seconds"] == pytest.approx(1e9 / BW)


def test_program_work_counts_every_loop_by_its_depth():
    row = fx.row("k", shapes={"HGMMA.64x128x16.F32.BF16": 4}, warps=8, instructions=1000, loops=[
        fx.loop(100, 900, 50),  # depth 0: a prologue loop
        fx.loop(1000, 6000, 300, 0, 4 * 2 * 64 * 128 * 16 * 2, 4),  # depth 0 main loop holding ...
        fx.loop(2000, 3000, 40, 1),  # ... a depth-1 loop
        dict(fx.loop(2500, 7000, 99), natural=False),  # out-of-line block jumping back (an EXIT in its range)
    ])  # fmt: skip
    w = tm.program_work(row, trips=[12, 3])
    assert w["skipped"] == 1
    straight = 1000 - 50 - 300  # code outside the counted loops runs once (the skipped block's included)
    assert w["instructions"] == 50 * 12 + (300 - 40) * 12 + 40 * 36 + straight
    assert w["mma_flops"] == 12 * 4 * 2 * 64 * 128 * 16 * 2
    assert sum(w["mma_by_op"].values()) == pytest.approx(w["mma_flops"])
    # the main loop always counts
    row = fx.row("k", loops=[dict(fx.loop(1000, 6000, 300, 0, 2097152, 4), natural=False)])
    assert tm.program_work(row, trips=[5])["mma_flops"] == 5 * 2097152
    # an older report without `natural`: loops closed by a conditional branch, or nesting cleanly with all others
    old = [{k: v for k, v in lp.items() if k != "natural"} for lp in fx.row("k")["sass"]["loops"]]
    old += [dict(fx.loop(100, 900, 50), conditional=False), dict(fx.loop(2500, 7000, 99), conditional=False)]
    for lp in old:
        lp.pop("natural", None)
    row = fx.row("k", loops=old)
    assert tm.program_work(row, trips=[2])["skipped"] == 1  # the one overlapping the main loop partly
    # FLOPs of one opcode issue for a CTA (the report's rule)
    assert tm.op_flops("HGMMA.64x128x16.F32.BF16", 8) == 2 * 64 * 128 * 16 * 2
    assert tm.op_flops("HMMA.16816.F32.BF16", 4) == 2 * 16 * 8 * 16 * 4
    assert tm.op_rate_key("HMMA.16816.F32.BF16") == "bf16" and tm.op_rate_key("FFMA") == "ffma_fp32"


class _Launch:
    """A stand-in for counting.Kernel: one Triton launch with its grid callable and arguments."""

    def __init__(self, name, args, grid, nbytes=0, flops=0):
        self.name, self.args, self.grid, self.bytes, self.flops = name, args, grid, nbytes, flops
        self.source, self.phase, self.op = "triton", "forward", "channel_mix"


def _fc2_launch(M=50176, N=768, K=3072):
    def grid(meta):
        return (-(-M // meta["BLOCK_M"]) * -(-N // meta["BLOCK_N"]),)

    args = dict(M=M, N=N, K=K, S=196, HAS_SCALE=False, PRECISION="ieee")
    return _Launch("_fc2_residual_kernel", args, grid, nbytes=2 * (M * K + N * K + 2 * M * N))


def test_config_choice_takes_the_fastest_config_and_lists_all():
    gemm = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8)
    rows = [
        fx.row("_fc2_residual_kernel", gemm, config="cfg0", ctas=1),
        fx.row("_fc2_residual_kernel", gemm, config="cfg1", ctas=2),  # same work, twice the CTAs per SM
        fx.row("_fc2_residual_kernel", dict(gemm, BLOCK_M=256), config="cfg2", ctas=0),  # does not fit
        fx.row("_fc2_residual_kernel", gemm, config="cfg9", dtype="fp16"),  # another dtype route
        fx.row("_fc2_residual_kernel", gemm, config="cfg8", shape="H:S256:b256"),  # another shape
    ]
    rep = fx.report(rows)
    t = tm.triton_launch_time(_fc2_launch(), rep, "bf16", ("B", 196, 256), H100, ASM)
    assert sorted(c["config"] for c in t["candidates"]) == ["cfg0", "cfg1", "cfg2"]
    by = {c["config"]: c for c in t["candidates"]}
    assert math.isinf(by["cfg2"]["us"]) and by["cfg2"]["bound"] == "does not launch"
    assert t["config"] == min(by, key=lambda c: by[c]["us"])
    assert t["programs"] == 392 * 6 and t["useful_flops"] == 2 * 50176 * 768 * 3072
    # per program: 4 HGMMA.64x128x16 x 8 warps / 4 per step, K / 64 = 48 steps
    assert t["executed_flops"] == t["programs"] * 48 * 4 * 2 * 64 * 128 * 16 * 2
    # a launch whose own constexpr differs from every build finds no row
    with pytest.raises(tm.MissingReportRow):
        rows2 = [fx.row("_token_stats_kernel", dict(BLOCK_R=8, BLOCK_K=256))]
        k = _Launch("_token_stats_kernel", dict(C=768, N_ROWS=100, BLOCK_R=8, BLOCK_K=512), (13,))
        tm.triton_launch_time(k, fx.report(rows2), "bf16", ("B", 196, 256), H100, ASM)


def test_report_rows_match_dtype_shape_and_batch():
    rows = [
        fx.row("_token_mix_fwd_kernel", dict(S=196, S_PAD=256, BLOCK_C=32), shape="B:S196:b256/L:S196:b256"),
        fx.row("_token_mix_fwd_kernel", dict(S=196, S_PAD=256, BLOCK_C=32), config="cfg1", shape="B:S196:b1"),
        fx.row("_token_mix_fwd_kernel", dict(S=576, S_PAD=1024, BLOCK_C=32), shape="B:S576:b256"),
        fx.row("_token_mix_fwd_kernel", dict(S=196, S_PAD=256, BLOCK_C=32), dtype="fp32+bf16"),
    ]
    rep = fx.report(rows)
    args = dict(S=196, S_PAD=256, HAS_SCALE=False)
    assert [r["config"] for r in tm.report_rows(rep, "_token_mix_fwd_kernel", "bf16", ("B", 196, 256), args)] == [
        "cfg0"
    ]
    assert [r["config"] for r in tm.report_rows(rep, "_token_mix_fwd_kernel", "bf16", ("B", 196, 1), args)] == ["cfg1"]
    # batch 64 specialises like batch 256 (every int a multiple of 16 stays so)
    assert len(tm.report_rows(rep, "_token_mix_fwd_kernel", "bf16", ("L", 196, 64), args)) == 1
    assert tm.report_rows(rep, "_token_mix_fwd_kernel", "bf16", ("H", 196, 256), args) == []
    assert len(tm.report_rows(rep, "_token_mix_fwd_kernel", "fp32+bf16", ("B", 196, 256), args)) == 1  # autocast
    assert tm.report_rows(rep, "_token_mix_fwd_kernel", "fp32", ("B", 196, 256), args) == []
    # boolean flags: the build with the launch's flags is preferred; without one, flags are not compared
    flagged = fx.report([
        fx.row("_ln_prep_kernel", dict(BLOCK_R=2, COL_SUM=True, ROW_SUM=False), config="col"),
        fx.row("_ln_prep_kernel", dict(BLOCK_R=2, COL_SUM=False, ROW_SUM=True), config="row"),
    ])  # fmt: skip
    launch = dict(BLOCK_R=2, COL_SUM=False, ROW_SUM=True)
    assert [r["config"] for r in tm.report_rows(flagged, "_ln_prep_kernel", "bf16", None, launch)] == ["row"]
    launch = dict(BLOCK_R=2, COL_SUM=True, ROW_SUM=True)
    assert len(tm.report_rows(flagged, "_ln_prep_kernel", "bf16", None, launch)) == 2
    assert tm.report_rows(flagged, "_ln_prep_kernel", "bf16", None, dict(launch, BLOCK_R=4)) == []


def test_gemm_model_big_gemm_near_assumed_efficiency_small_one_memory_bound():
    M, N, K = 50176, 3072, 768
    g = tm.gemm_us(M, N, K, 2 * (M * K + K * N + M * N), H100, ASM)
    ideal = 2 * M * N * K / (H100.sms * 4096 * HZ * ASM.cublas_eff) * 1e6
    assert ideal <= g["us"] - ASM.launch_us <= 1.05 * ideal and g["bound"] == "mma"
    g = tm.gemm_us(256, 768, 16, 2 * (256 * 16 + 16 * 768 + 256 * 768), H100, ASM)  # K = 16: all traffic
    assert g["bound"] == "memory"
    with pytest.raises(ValueError):
        tm.gemm_us(0, 1, 1, 0, H100, ASM)
    assert tm.aten_gemm_dims("aten.addmm", [(9,), (10, 6), (6, 9)], 2 * 10 * 9 * 6) == [(10, 9, 6, 1)]
    conv = [(4, 3, 224, 224), (768, 3, 16, 16), (768,)]
    assert tm.aten_gemm_dims("aten.convolution", conv, 2 * 4 * 196 * 768 * 768) == [(4 * 196, 768, 768, 1)]
    assert tm.aten_gemm_dims("aten.mm", [(10, 6), (6, 9)], 1) is None  # FLOPs disagree: not trusted


def _timm_block_kernels(B, S, C):
    from timm.models.mlp_mixer import MixerBlock

    blk = MixerBlock(C, S, mlp_ratio=(0.5, 4.0)).to(torch.bfloat16)
    return counting.count_call(blk, torch.randn(B, S, C, dtype=torch.bfloat16), execute=False)


def test_compile_plan_flops_equal_bare_gemms_and_move_fewer_bytes_than_timm():
    from fastmixer.bench.harness import _dims, model_gemms, with_backward

    d = _dims("b16")
    B, S, C, Dt, Dc = 4, d["S"], d["C"], d["Dt"], d["Dc"]
    plan = tm.compile_plan_block(B, S, C, Dt, Dc)
    bare = tm.bare_gemms(plan)
    assert [len(plan["forward"]), len(plan["backward"])] == [6, 10] and [len(bare["forward"]),
                                                                          len(bare["backward"])] == [4, 8]  # fmt: skip
    block_gemms = model_gemms("b16", B, num_blocks=1)[1:-1]  # the benchmark's per-block GEMMs (no stem/head)
    fwd_flops = sum(2 * m * n * k for m, n, k in block_gemms)
    bwd_flops = sum(2 * m * n * k for m, n, k in with_backward(block_gemms)) - fwd_flops
    for phase, flops in (("forward", fwd_flops), ("backward", bwd_flops)):
        assert sum(k.flops for k in plan[phase]) == sum(k.flops for k in bare[phase]) == flops
    timm = _timm_block_kernels(B, S, C)
    for phase in ("forward", "backward"):
        timm_bytes = sum(k.bytes for k in timm if k.phase == phase)
        plan_bytes = sum(k.bytes for k in plan[phase])
        assert sum(k.bytes for k in bare[phase]) < plan_bytes < timm_bytes, phase
        assert sum(k.flops for k in timm if k.phase == phase) == sum(k.flops for k in plan[phase])
    rest = tm.compile_plan_rest(B, S, C, d["P"])
    stem_head = (model_gemms("b16", B)[0], model_gemms("b16", B)[-1])
    assert sum(k.flops for k in rest["forward"]) == sum(2 * m * n * k for m, n, k in stem_head)


def _launched_triton(counted):
    ks = [*counted["block"]["fastmixer"], *counted["model"]["fastmixer"]]
    return {k.name: k for k in ks if k.source == "triton"}


@pytest.fixture(scope="module")
def b16_counted():
    """B/16 (one block, the kernels are the same in all twelve) at batch 256 and 1, bf16, counted dry."""
    return {b: tm.count_case("b16", b, torch.bfloat16, num_blocks=1) for b in (256, 1)}


def test_counted_launches_carry_gpu_grids_and_useful_flops(b16_counted):
    c = b16_counted[256]
    ks = _launched_triton(c)
    assert set(ks) <= set(tm.KERNELS), set(ks) - set(tm.KERNELS)
    # the row-wise kernels got their GPU tiling (the interpreter's is 8 fat programs)
    assert tm.grid_programs(ks["_ln_prep_kernel"].grid, ks["_ln_prep_kernel"].args) > 8
    # useful FLOPs per fused op equal the op's counted GEMM FLOPs
    for op in ("token_mix", "channel_mix", "token_mix_bwd", "channel_mix_bwd"):
        mine = 0
        for k in (k for k in c["block"]["fastmixer"] if k.op == op):
            if k.source == "triton":
                meta = {**k.args, "BLOCK_K": 64, "BLOCK_D": 32, "BLOCK_S": 32, "BLOCK_P": 64}  # tiles: any
                mine += tm.KERNELS[k.name](meta)["flops"]
            else:
                mine += k.flops
        assert mine == sum(k.flops for k in c["block"]["fastmixer"] if k.op == op), op


def test_every_kernel_launched_needs_a_report_row(b16_counted):
    c = b16_counted[256]
    rep = fx.report()
    case = tm.model_case(c, rep, H100, ASM)  # the fixture covers every kernel
    assert case["block"]["fastmixer"]["forward"]["launches"] == 5
    missing = fx.report([r for r in fx.kernel_rows() if r["kernel"] != "_dual_gemm_kernel"])
    with pytest.raises(tm.MissingReportRow, match="_dual_gemm_kernel"):
        tm.model_case(c, missing, H100, ASM)


def test_committed_report_covers_every_kernel_launched_at_b16(b16_counted):
    path = tm.default_report()
    if path is None:
        pytest.skip("no kernel report committed under bench/results yet (bench/kernel_resources.py writes it)")
    rep = tm.load_report(path)
    missing = []
    for name, k in _launched_triton(b16_counted[256]).items():
        if not tm.report_rows(rep, name, "bf16", ("B", 196, 256), k.args):
            missing.append(name)
    assert not missing, f"kernels launched at B/16 bf16 batch 256 with no sm_90 build in {path}: {missing}"
    # batch 1: a kernel without a batch-1 build is modelled with its batch-256 build, and says so
    case = tm.model_case(b16_counted[1], rep, H100, ASM)
    rows = [r for r in [*case["kernels"]["fastmixer"], *case["kernels"]["fastmixer rest"]] if r["source"] == "triton"]
    for r in rows:
        has_b1 = tm.report_rows(
            rep, r["kernel"], "bf16", ("B", 196, 1), _launched_triton(b16_counted[1])[r["kernel"]].args
        )
        assert bool(r["build_note"]) == (not has_b1), r["kernel"]


def _measured_fixture(batch, num_blocks):
    """A GPU report in `fastmixer bench`'s JSON shape. TEST FIXTURE: invented times, not measurements."""
    base = dict(batch=batch, dtype="bf16", variant="b16", num_blocks=num_blocks)
    return {
        "env": {"device": "NVIDIA H100 80GB HBM3 (TEST FIXTURE)", "device_kind": "CUDA"},
        "results": [
            dict(base, level="model", target="b16", mode="inference", provider="fastmixer", ms=10.0,
                 label="b16 inference (fixture)"),
            dict(base, level="model", target="b16", mode="training", provider="timm", ms=40.0,
                 label="b16 training (fixture)"),
            dict(base, level="op", target="channel_mix", mode="forward+backward", provider="cublas", ms=1.0,
                 label="channel_mix fwd+bwd (fixture)"),
            dict(base, level="model", target="b16", mode="inference", provider="timm", label="skipped one",
                 skipped="time budget"),
            dict(base, level="model", target="b16", mode="inference", provider="timm", dtype="fp32", ms=3.0,
                 label="fp32 (fixture)"),
        ],
    }  # fmt: skip


def test_model_vs_measurement_side_by_side(tmp_path, b16_counted):
    measured = tmp_path / "gpu.json"
    measured.write_text(json.dumps(_measured_fixture(256, 1)))
    res = tm.run(fx.report(), devices=["h100"], models=["b16"], batches=[256], measured=[measured], num_blocks=1,
                 counted={("b16", 256): b16_counted[256]})  # fmt: skip
    rows = res["h100"]["comparisons"][0]["rows"]
    assert [r["label"] for r in rows] == [
        "b16 inference (fixture)", "b16 training (fixture)", "channel_mix fwd+bwd (fixture)", "fp32 (fixture)"
    ]  # fmt: skip
    case = res["h100"]["cases"][0]
    assert rows[0]["model_ms"] == pytest.approx(case["model"]["fastmixer"]["forward"]["us"] / 1e3)
    train = case["model"]["timm eager"]
    sgd = tm.sgd_us(b16_counted[256]["params"], H100, ASM)
    assert rows[1]["model_ms"] == pytest.approx((train["forward"]["us"] + train["backward"]["us"] + sgd) / 1e3)
    op = case["ops"]["bare GEMMs"]["channel_mix"]
    assert rows[2]["model_ms"] == pytest.approx((op["forward"]["us"] + op["backward"]["us"]) / 1e3)
    assert rows[3]["model_ms"] is None and "not modelled" in rows[3]["how"]
    md = res["h100"]["comparisons"][0]["markdown"]
    assert md.startswith("### MODEL vs measurement") and "TEST FIXTURE" in md
    line = next(x for x in md.splitlines() if x.startswith("| b16 inference"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "10.000" and cells[3] == f"{rows[0]['model_ms']:.3f}"
    assert cells[4] == f"{rows[0]['model_ms'] / 10.0:.2f}"
    # the whole output: every table sits under a heading that says MODEL, and the files are written
    text = tm.markdown(res["h100"])
    heading = ""
    for x in text.splitlines():
        if x.startswith("#"):
            heading = x
        if x.startswith("|---"):
            assert "MODEL" in heading, heading
    paths = tm.write(res, tmp_path, "2000-01-01")
    assert sorted(p.name for p in paths) == ["2000-01-01-time-model-h100.json", "2000-01-01-time-model-h100.md"]
    data = json.loads(paths[0].read_text())
    assert data["title"].startswith("MODEL") and data["assumptions"]
    # analytic providers: per model = outside the blocks + L x per block
    for prov in ("compile plan", "bare GEMMs"):
        rest = sum(r["us"] for r in case["kernels"][f"{prov} rest"] if r["phase"] == "forward")
        assert case["model"][prov]["forward"]["us"] == pytest.approx(rest + case["block"][prov]["forward"]["us"])


def test_find_measured_only_takes_cuda_reports(tmp_path):
    (tmp_path / "cpu.json").write_text(json.dumps({"env": {"device_kind": "CPU"}, "results": []}))
    (tmp_path / "gpu.json").write_text(json.dumps(_measured_fixture(256, None)))
    (tmp_path / "x-kernel-report.json").write_text(json.dumps({"schema": "fastmixer.kernel_report/1"}))
    assert [p.name for p in tm.find_measured(tmp_path)] == ["gpu.json"]
    assert tm.default_report(tmp_path).name == "x-kernel-report.json"
    with pytest.raises(ValueError, match="kernel report"):
        tm.load_report(tmp_path / "gpu.json")
