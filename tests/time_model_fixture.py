"""A small kernel report in the shape of bench/kernel_resources.py's JSON (schema fastmixer.kernel_report/1), for
tests of bench/time_model.py before (and besides) a real report. TEST FIXTURE: invented numbers, not measurements."""

from __future__ import annotations

import copy
from typing import Any

RATES = {"fp16": 4096, "bf16": 4096, "tf32": 2048, "fp8": 8192, "int8": 8192, "fp64": 256, "ffma_fp32": 256}
SHAPES = "B:S196:b256/L:S196:b256/B:S196:b1/L:S196:b1"


def loop(start: int, end: int, instructions: int, depth: int = 0, mma: int = 0, hgmma: int = 0) -> dict[str, Any]:
    counts = {"HGMMA": hgmma, "HMMA": 0, "IMMA": 0, "DMMA": 0, "FFMA": 0}
    return dict(start=start, end=end, instructions=instructions, depth=depth, natural=True, counts=counts,
                mma_flops_per_cta=mma)  # fmt: skip


def row(
    kernel: str,
    constexprs: dict[str, Any] | None = None,
    *,
    config: str = "cfg0",
    warps: int = 8,
    stages: int = 2,
    ctas: int = 1,
    loops: list[dict[str, Any]] | None = None,
    shapes: dict[str, int] | None = None,
    instructions: int = 1000,
    waits: bool | None = False,
    dtype: str = "bf16",
    shape: str = SHAPES,
) -> dict[str, Any]:
    """One build row; `loops` default: one depth-0 main loop of 300 instructions and 4 HGMMA.64x128x16 per warpgroup
    (shapes default accordingly: 2 * 64 * 128 * 16 * 4 * warps / 4 FLOPs per CTA and iteration)."""
    if shapes is None:
        shapes = {"HGMMA.64x128x16.F32.BF16": 4}
    mma = sum(n * 2 * 64 * 128 * 16 * warps // 4 for op, n in shapes.items() if op.startswith("HGMMA.64x128x16"))
    if loops is None:
        loops = [loop(1000, 6000, 300, 0, mma, 4)]
    main = max(loops, key=lambda lp: (lp["mma_flops_per_cta"], lp["instructions"]))
    return dict(
        module="fixture",
        name=f"{kernel}[{dtype},{config},{shape}]",
        kernel=kernel,
        dtype=f"{dtype}+fp32" if "+" not in dtype else dtype,  # pointer element types
        route=dtype,
        config=config,
        shape=shape,
        constexprs=dict(constexprs or {}),
        num_warps=warps,
        num_stages=stages,
        arch=90,
        status="ok" if ctas else "does_not_fit",
        problems=[] if ctas else ["fixture: does not fit"],
        error=None,
        registers=128,
        occupancy=dict(ctas_per_sm=ctas, warps_per_sm=ctas * warps, limiter="registers"),
        sass=dict(
            instructions=instructions,
            counts={"HGMMA": sum(shapes.values())},
            shapes=dict(shapes),
            loops=loops,
            main_loop=dict(
                start=main["start"],
                end=main["end"],
                instructions=main["instructions"],
                mma_kind="HGMMA" if shapes else None,
                mma_dtype="bf16",
                waits_each_mma=waits,
                mma_flops_per_cta=main["mma_flops_per_cta"],
                shapes=dict(shapes),
            ),
        ),
    )


def memory_row(kernel: str, constexprs: dict[str, Any] | None = None, warps: int = 4, ctas: int = 4) -> dict:
    """A row-wise (no MMA) kernel: one depth-0 loop of 60 instructions."""
    return row(kernel, constexprs, config="", warps=warps, ctas=ctas, shapes={}, loops=[loop(500, 1500, 60)],
               instructions=200, waits=None)  # fmt: skip


# Every fastmixer Triton kernel a bf16 Mixer-B/16 or L/16 forward + backward launches at batch 1 or 256 (tiles of the
# configs only; kernels launched without autotuning get their tiles from the launch itself).
def kernel_rows() -> list[dict[str, Any]]:
    gemm = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8)
    return [
        memory_row("_token_stats_kernel"),
        row("_token_mix_fwd_kernel", dict(BLOCK_C=32, BLOCK_D=32, BLOCK_K=1024), warps=4, ctas=1),
        row("_token_mix_fwd_kernel", dict(BLOCK_C=64, BLOCK_D=64, BLOCK_K=1024), config="cfg3", ctas=1),
        memory_row("_layernorm_fwd_kernel", warps=8, ctas=4),
        memory_row("_ln_fold_kernel", warps=1, ctas=16),
        row("_fc1_gelu_kernel", gemm),
        row("_fc2_residual_kernel", gemm),
        row("_fc2_residual_kernel", dict(gemm, BLOCK_M=64, BLOCK_N=64), config="cfg4", warps=4, ctas=3,
            shapes={"HGMMA.64x64x16.F32.BF16": 4}, loops=[loop(1000, 6000, 200, 0, 2 * 64 * 64 * 16 * 4, 4)]),
        row("_norm_pool_kernel", dict(BLOCK_S=32, BLOCK_C=64, BLOCK_K=128), warps=4, ctas=8, shapes={},
            loops=[loop(100, 2000, 120), loop(300, 900, 40, 1)], waits=None),
        memory_row("_ln_prep_kernel", warps=8, ctas=2),
        row("_dual_gemm_kernel", dict(BLOCK_N=64, BLOCK_K=32), warps=4, ctas=2),
        memory_row("_ln_bwd_kernel", warps=8, ctas=2),
        row("_token_dgrad_kernel", dict(BLOCK_D=64, BLOCK_C=128, BLOCK_K=32), warps=4, ctas=2),
        row("_token_dy_kernel", dict(BLOCK_S=64, BLOCK_C=128, BLOCK_K=64), warps=4, ctas=3),
        row("_token_dgrad_dy_kernel", dict(BLOCK_C=64, BLOCK_D=16), warps=4, ctas=2),
        row("_wgrad_kernel", dict(BLOCK_P=64, BLOCK_Q=64, BLOCK_K=32), warps=4, ctas=2),
        memory_row("_reduce_partials_kernel", warps=4, ctas=5),
    ]  # fmt: skip


def report(rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "schema": "fastmixer.kernel_report/1",
        "created": "fixture",
        "triton": "fixture",
        "constants": {"90": {"name": "H100/H200 (sm_90)", "mma_flop_per_cycle_per_sm": dict(RATES)}},
        "builds": copy.deepcopy(kernel_rows() if rows is None else rows),
        "_path": "tests/time_model_fixture.py (TEST FIXTURE)",
    }
