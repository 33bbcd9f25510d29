"""Counting without a GPU (fastmixer.bench.counting): aten-op and Triton-launch bytes against hand formulas, timm's
per-block kernels as a dispatch mode sees them, fastmixer's launch budget, dry-run = executed counts."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE
from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

import fastmixer
from fastmixer.bench import counting, harness

TINY = dict(num_classes=5, img_size=32, patch_size=8, num_blocks=2, embed_dim=24)  # S = 16 tokens, C = 24


def test_distinct_bytes_counts_expanded_dims_once():
    x = torch.randn(3, 1, 5).expand(3, 7, 5)
    assert counting.distinct_bytes(x) == 3 * 5 * 4
    assert counting.distinct_bytes(torch.randn(2, 3, dtype=torch.bfloat16)) == 12


def test_aten_op_bytes_and_flops_equal_formulas():
    x, w, b = torch.randn(4, 7, 12), torch.randn(12), torch.randn(12)
    a, m = torch.randn(10, 6), torch.randn(6, 9)
    with counting.KernelCounter() as counter:
        F.layer_norm(x, (12,), w, b)
        torch.addmm(torch.randn(9), a, m)
        x.view(28, 12).t()  # views: no kernel
    ln, mm = counter.kernels[0], counter.kernels[-1]
    # native_layer_norm reads x, w, b and writes out, mean [4, 7, 1], rstd [4, 7, 1]
    assert ln.name == "aten.native_layer_norm"
    assert ln.bytes == 4 * (336 + 12 + 12 + 336 + 28 + 28) and ln.flops == 0
    # randn is a kernel too (it writes the bias); addmm reads bias, a, m and writes [10, 9]
    assert [k.name for k in counter.kernels] == ["aten.native_layer_norm", "aten.randn", "aten.addmm"]
    assert mm.bytes == 4 * (9 + 60 + 54 + 90) and mm.flops == 2 * 10 * 9 * 6


def test_timm_block_kernels_as_dispatch_mode_sees_them():
    model = TimmMlpMixer(**TINY)
    kernels = counting.count_kernels(model, torch.randn(2, 3, 32, 32), backward=False)
    block = [k.name for k in kernels if k.block == 0]
    # token mixing: LN, copy of the transposed [B, C, S] input, GEMM, bias add, GELU, GEMM+bias, residual add;
    # channel mixing: LN, GEMM+bias, GELU, GEMM+bias, residual add
    assert block == [
        "aten.native_layer_norm",
        "aten.clone",
        "aten.mm",
        "aten.add",
        "aten.gelu",
        "aten.addmm",
        "aten.add",
        "aten.native_layer_norm",
        "aten.addmm",
        "aten.gelu",
        "aten.addmm",
        "aten.add",
    ]
    assert [k.block for k in kernels].count(1) == 12


@pytest.fixture
def tiny_pair():
    ours = fastmixer.MlpMixer(**TINY)
    theirs = TimmMlpMixer(**TINY)
    theirs.load_state_dict(ours.state_dict())
    return ours.to(DEVICE), theirs.to(DEVICE)  # the triton backend runs CUDA tensors, or CPU ones when interpreting


def test_fastmixer_forward_launch_budget_and_bytes(tiny_pair, triton_backend):
    ours, theirs = tiny_pair
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    fm = counting.count_kernels(ours, x, backward=False)
    with fastmixer.use_backend("reference"):
        tm = counting.count_kernels(theirs, x, backward=False)
    per_block = [k for k in fm if k.block == 0]
    assert all(k.source == "triton" for k in per_block)
    assert 2 <= len(per_block) <= 5, [k.name for k in per_block]  # the fused budget (timm: 12)
    assert sum(k.bytes for k in fm) < sum(k.bytes for k in tm)
    # FLOPs: the fused GEMMs are all attributed, so both models do the same GEMM work
    assert sum(k.flops for k in fm) == sum(k.flops for k in tm)
    # the final LayerNorm + mean is one launch reading x [2, 16, 24], ln weight/bias [24] and writing [2, 24]
    pool = [k for k in fm if k.op == "norm_pool"]
    assert len(pool) == 1 and pool[0].bytes == 4 * (2 * 16 * 24 + 2 * 24 + 2 * 24)


def test_launch_names_match_launches_module(tiny_pair, triton_backend):
    launches = pytest.importorskip("fastmixer.bench.launches", reason="fastmixer/bench/launches.py not present")
    ours, _ = tiny_pair
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    fm = counting.count_kernels(ours.eval(), x, backward=False)
    with torch.no_grad():
        _, names = launches.count_launches(ours, x)
    assert [k.name for k in fm if k.source == "triton"] == names


def test_dry_run_counts_equal_executed_counts(tiny_pair, triton_backend):
    ours, _ = tiny_pair
    x = torch.randn(3, 3, 32, 32, device=DEVICE)
    real = counting.count_kernels(ours, x)
    dry = counting.count_kernels(ours, x, execute=False)
    assert [(k.name, k.phase, k.bytes, k.flops) for k in real] == [(k.name, k.phase, k.bytes, k.flops) for k in dry]
    assert any(k.phase == "backward" for k in real)


def test_roofline_model_formula():
    ks = [
        counting.Kernel("gemm", "aten", "forward", bytes=10**6, flops=989 * 10**9),  # compute-bound: 1 ms
        counting.Kernel("ln", "aten", "forward", bytes=335 * 10**7, flops=0),  # memory-bound: 1 ms
    ]
    assert counting.roofline_us(ks, torch.bfloat16) == pytest.approx(2000 + 2 * counting.H100_SXM.launch_us)
    s = counting.summarize(ks, "bfloat16")["forward"]
    assert s["launches"] == 2 and s["gflops"] == 989


def test_count_variant_b16_fastmixer_beats_timm(triton_backend):
    # two of the twelve B/16 blocks, at real B/16 block shapes, dry (nothing executes): fast on CPU
    r = counting.count_variant("b16", batch=64, num_blocks=2, backward=False)
    fm, tm = r["fastmixer"]["forward"], r["timm eager"]["forward"]
    assert fm["launches_per_block"] <= 5 and tm["launches_per_block"] == 12
    assert fm["gbytes"] < 0.6 * tm["gbytes"] and fm["model_us"] < tm["model_us"]
    # GEMM FLOPs per image: blocks 2*(2*S*C*Dt) + 2*(2*S*C*Dc), plus the stem and head GEMMs
    S, C = 196, 768
    per_image = 2 * (2 * (2 * S * C * C // 2) + 2 * (2 * S * C * 4 * C)) + 2 * S * C * 768 + 2 * C * 1000
    assert fm["gflops"] == pytest.approx(64 * per_image / 1e9, rel=1e-9)
    with pytest.raises(ValueError, match="batch"):
        counting.count_variant("b16", batch=0)
    assert "roofline MODEL" in harness.counts_markdown(r)  # the one Markdown form of a count


def test_triton_launches_keep_grid_and_arguments(tiny_pair, triton_backend):
    # what bench/time_model.py needs: each launch's grid (tuple or triton's callable of the meta-parameters) and its
    # named arguments, so the grid can be evaluated for any autotune config
    ours, _ = tiny_pair
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    ks = counting.count_kernels(ours, x, backward=False, execute=False)
    triton_ks = [k for k in ks if k.source == "triton"]
    assert triton_ks and all(k.grid is not None and isinstance(k.args, dict) for k in triton_ks)
    stats = next(k for k in triton_ks if k.name == "_token_stats_kernel")
    assert stats.grid == (-(-2 * 16 // stats.args["BLOCK_R"]),)
    assert stats.args["X"] == counting.TensorArg((2, 16, 24), (16 * 24, 24, 1), "float32")
    fc1 = next(k for k in triton_ks if k.name == "_fc1_gelu_kernel")  # rows M = 2 * 16, N = 4 * 24 hidden
    assert callable(fc1.grid) and fc1.grid({**fc1.args, "BLOCK_M": 16, "BLOCK_N": 32}) == (2 * 3,)
    conv = next(k for k in ks if k.name == "aten.convolution")
    assert conv.args["shapes"][:2] == [(2, 3, 32, 32), (24, 3, 8, 8)]
    assert "grid" not in counting._as_dict(fc1) and "args" not in counting._as_dict(fc1)  # JSON rows stay plain


def test_count_call_of_a_block_equals_the_models_block(tiny_pair, triton_backend):
    ours, _ = tiny_pair
    x = torch.randn(3, 3, 32, 32, device=DEVICE)
    model_block = [k for k in counting.count_kernels(ours, x, backward=False, execute=False) if k.block == 0]
    tokens = torch.randn(3, 16, 24, device=DEVICE)
    call = counting.count_call(ours.blocks[0], tokens, execute=False)
    fwd = [k for k in call if k.phase == "forward"]
    assert [(k.name, k.bytes, k.flops) for k in fwd] == [(k.name, k.bytes, k.flops) for k in model_block]
    ops = {k.op for k in call if k.phase == "backward" and k.source == "triton"}
    assert ops == {"token_mix_bwd", "channel_mix_bwd"}


# Launch budget of one Mixer block's backward (issue 10): Triton + cuBLAS + aten, as fastmixer.bench.counting counts.
BLOCK_BWD_BUDGET = 13


@pytest.mark.parametrize("drop_path", [0.0, 0.25], ids=["plain", "drop_path"])
def test_block_backward_launch_budget(triton_backend, drop_path):
    # One block's share of a model's backward = backward launches of a 3-block model minus those of a 2-block one (the
    # stem, head and norm_pool backward cancel), counted dry; and a lone block's backward, counted the same way.
    per_model = {}
    for n in (2, 3):
        torch.manual_seed(0)
        model = fastmixer.MlpMixer(**dict(TINY, num_blocks=n), drop_path_rate=drop_path).to(DEVICE)
        ks = counting.count_kernels(model, torch.randn(2, 3, 32, 32, device=DEVICE), execute=False)
        per_model[n] = [k.name for k in ks if k.phase == "backward"]
    per_block = len(per_model[3]) - len(per_model[2])
    block = fastmixer.MlpMixer(**TINY, drop_path_rate=drop_path).blocks[1].to(DEVICE)  # drop_path > 0 in block 1
    call = counting.count_call(block.train(), torch.randn(3, 16, 24, device=DEVICE), execute=False)
    bwd = [k for k in call if k.phase == "backward"]
    names = [k.name for k in bwd]
    print(f"block backward: {per_block} launches in a model, {len(bwd)} alone: {names}")
    assert 0 < per_block <= BLOCK_BWD_BUDGET, per_block
    assert len(bwd) <= BLOCK_BWD_BUDGET, names
    # inside the backward ops: Triton kernels and the channel mix's 3 cuBLAS GEMMs only (no host sums, no casts)
    inside = [k.name for k in bwd if k.op in ("token_mix_bwd", "channel_mix_bwd")]
    assert [n for n in inside if n.startswith("aten.")] == ["aten.mm"] * 3, inside
    assert inside.count("_reduce_partials_kernel") == 2, inside  # one deterministic reduction per op
    # The LN prep passes read dout only where they write do (branch scale; fp32 here, so dout is already in W
    # otherwise): x, ln weight/bias -> y, mean, rstd is all they touch without drop-path (db2's column sums then come
    # from the LN backward, which reads dout anyway).
    M, C = 3 * 16, 24
    preps = [k.bytes for k in bwd if k.name == "_ln_prep_kernel"]
    bare = 4 * (2 * M * C + 2 * C + 2 * M)
    assert len(preps) == 2 and all(b == bare if drop_path == 0 else b >= bare + 4 * 2 * M * C for b in preps), preps
