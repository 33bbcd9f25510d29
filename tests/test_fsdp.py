"""FSDP2 (torch.distributed.fsdp.fully_shard, gloo, 2 CPU processes on 127.0.0.1): every block and the root sharded,
each rank trains on half of the global batch; the first step's gradients and the parameters after a few SGD steps equal
one process training on the whole batch (fp32), on the reference and on the fused Triton path.

Each worker first runs a plain nn.Linear through FSDP2 (a probe): when that fails, this torch cannot run FSDP2 on CPU
and the test is skipped with the probe's exact error; a failure of fastmixer's model after a passing probe fails it.
One spawn serves both backends; the parent waits at most _TIMEOUT_S before it terminates the workers it started.
"""

import os
import traceback

import dist
import pytest
import torch
import torch.nn.functional as F
from conftest import INTERPRET
from helpers import one_thread

try:
    from torch.distributed.fsdp import fully_shard
except ImportError as e:  # torch < 2.6 has FSDP2 under torch.distributed._composable.fsdp only
    try:
        from torch.distributed._composable.fsdp import fully_shard
    except ImportError:
        pytest.skip(f"this torch has no FSDP2 fully_shard: {e}", allow_module_level=True)

WORLD = 2
GLOBAL_BATCH = 6  # 3 images per rank
STEPS = 2
# CPU tensors reach the Triton kernels only under the interpreter (conftest sets it on machines without CUDA).
BACKENDS = ("reference", "triton") if INTERPRET else ("reference",)
pytestmark = pytest.mark.usefixtures(one_thread.__name__)
_TIMEOUT_S = 300


def _full(t: torch.Tensor) -> torch.Tensor:
    # a DTensor shard -> the whole tensor (a collective: every rank calls it in the same order)
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _train(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS
) -> dict[str, dict[str, torch.Tensor]]:
    """`steps` of SGD with momentum on mean cross-entropy; first-step gradients and final parameters by name."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads: dict[str, torch.Tensor] = {}
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if step == 0:
            grads = {n: _full(p.grad) for n, p in model.named_parameters()}
        opt.step()
    return {"grads": grads, "params": {n: _full(p) for n, p in model.named_parameters()}}


def _shard(model: torch.nn.Module) -> torch.nn.Module:
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def _worker(rank: int, port: int, out_dir: str) -> None:
    with dist.group(rank, port, WORLD, 120):
        try:  # can this torch run FSDP2 on CPU/gloo at all?
            probe = fully_shard(torch.nn.Linear(4, 4))
            probe(torch.randn(2, 4)).sum().backward()
            torch.save("ok", os.path.join(out_dir, f"probe_rank{rank}.pt"))
        except Exception:
            torch.save(traceback.format_exc(), os.path.join(out_dir, f"probe_rank{rank}.pt"))
            return
        dist.save_rank_results(
            rank, out_dir, BACKENDS, WORLD, GLOBAL_BATCH, lambda x, y: _train(_shard(dist.model()), x, y)
        )


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    """Spawn the 2 ranks once; {backend: [rank 0 result, rank 1 result]} (dicts or traceback strings)."""
    out_dir = tmp_path_factory.mktemp("fsdp")
    dist.run_ranks(_worker, out_dir, WORLD, _TIMEOUT_S, "FSDP")
    probe = torch.load(out_dir / "probe_rank0.pt", weights_only=False)
    if probe != "ok":
        last = probe.strip().splitlines()[-1]
        pytest.skip(f"this torch ({torch.__version__}) cannot run FSDP2 on CPU with gloo: {last}")
    return dist.load_rank_results(out_dir, BACKENDS, WORLD)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fsdp2_training_equals_single_process(fsdp_results, backend):
    ranks = dist.rank_results(fsdp_results, backend, "FSDP")
    one_step = lambda model, x, y: _train(model, x, y, steps=1)
    single, local = dist.single_and_local(backend, GLOBAL_BATCH, WORLD, _train, one_step)
    worst = {w: dist.assert_ranks_match([r[w] for r in ranks], single[w], f"{w} ") for w in ("grads", "params")}
    # Not vacuous: training moved the weights, and one rank's half batch alone gives other gradients.
    start = dict(dist.model().named_parameters())
    moved = max((single["params"][n] - start[n].detach()).abs().max().item() for n in start)
    assert moved > 1e-3
    gap = max((local["grads"][n] - single["grads"][n]).abs().max().item() for n in single["grads"])
    assert gap > 1e-3
    print(
        f"\n[{backend}] FSDP2 {WORLD} x {GLOBAL_BATCH // WORLD} vs 1 x {GLOBAL_BATCH}, {STEPS} SGD steps: "
        f"max |grad diff| = {worst['grads']:.3g}, max |param diff| = {worst['params']:.3g} (weights moved "
        f"{moved:.3g}; local-only gradient differs by {gap:.3g})"
    )
