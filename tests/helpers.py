"""Shared test helpers (import as `from helpers import ...`; tests/ is on sys.path)."""

import contextlib
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch


def randomize_(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Give every parameter non-trivial values (timm zero-inits the head and LN; a zero head hides any error)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(
                    std * torch.randn(p.shape, generator=g) if p.dim() > 1 else 0.1 * torch.randn(p.shape, generator=g)
                )
    return model


def timm_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A plain timm MlpMixer with the same architecture and weights as a fastmixer model (copied: fastmixer.to_timm)."""
    from fastmixer.timm_convert import to_timm

    return to_timm(model, share=False)


# ------------------------------------------------------------------------------------------------ the three-way rule
def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|, in fp32 (or fp64 when either is fp64)."""
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return (a.to(dtype) - b.to(dtype)).abs().max().item()


# The three-way rule's absolute term, one row per kind of comparison (DESIGN.md): each dtype test names its row.
# atol(dtype, oracle) -> float. The values are those the tests were written with; none is loosened here.
THREE_WAY_ATOL: dict[str, Callable[[torch.dtype, torch.Tensor], float]] = {
    # one fused op's output vs fp32 math on the same rounded inputs: one rounding of the output dtype
    "op_eps": lambda dtype, oracle: torch.finfo(dtype).eps,
    # whole-model logits and gradients (errors compound over blocks): relative to the fp32 magnitude
    "model_rel": lambda dtype, oracle: 1e-3 * oracle.abs().max().item(),
    # backward kernels' gradients: fp16 relative 1e-3; bf16 (and fp32 x with bf16 weights) relative 1e-2, as the
    # interpreter rounds fp32 -> bf16 toward zero (see test_backward_kernels.test_bf16_three_way)
    "bwd_rel": lambda dtype, oracle: (1e-3 if dtype == torch.float16 else 1e-2) * oracle.abs().max().item(),
    # absolute terms of op-level checks at unit-scale outputs
    "op_abs_1e-2": lambda dtype, oracle: 1e-2,
    "op_abs_1e-4": lambda dtype, oracle: 1e-4,
    "op_abs_1e-5": lambda dtype, oracle: 1e-5,
    "tiny_model_abs": lambda dtype, oracle: 1e-3,  # tiny Mixer logits, fp16
    "fp32_vs_fp64": lambda dtype, oracle: 1e-7,  # fp32 kernels against an fp64 oracle
}


def assert_three_way(
    ours: torch.Tensor,
    oracle: torch.Tensor,
    torch_same: torch.Tensor,
    row: str,
    dtype: torch.dtype | None = None,
    *,
    what: str = "",
    differs: bool = False,
) -> tuple[float, float]:
    """err(ours vs oracle) <= 2 * err(torch in the same dtype vs oracle) + THREE_WAY_ATOL[row](dtype, oracle).

    dtype: the low precision under test (default ours.dtype). differs: also require err(torch) > 0, so that the rule
    compares something. Returns (err ours, err torch)."""
    err, err_torch = max_err(ours, oracle), max_err(torch_same, oracle)
    if differs:
        assert err_torch > 0, f"{what}: the same-dtype torch run equals the oracle: the rule would compare nothing"
    atol = THREE_WAY_ATOL[row](dtype or ours.dtype, oracle)
    assert err <= 2 * err_torch + atol, f"{what}: err {err:.3g} > 2 * torch err {err_torch:.3g} + {atol:.3g}"
    return err, err_torch


def run_ranks(worker: Callable, out_dir, world: int, timeout_s: float, what: str) -> None:
    """Spawn `world` processes running worker(rank, port, str(out_dir)) on a free loopback port and wait for them;
    fail the test after timeout_s, and never leave a worker behind. Workers report through files in out_dir."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch.multiprocessing as mp

    ctx = mp.start_processes(worker, args=(port, str(out_dir)), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} workers did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:  # only the workers started above
            if p.is_alive():
                p.terminate()
                p.join(10)


# The distributed tests' model and data (tests/test_ddp.py, tests/test_fsdp.py): S = 36 tokens, C = 40 channels.
DIST_ARCH = dict(num_classes=5, img_size=42, patch_size=7, num_blocks=2, embed_dim=40)


def dist_model() -> torch.nn.Module:
    """The distributed tests' Mixer, in train mode; the same weights in every process (randomize_ is seeded)."""
    import fastmixer

    return randomize_(fastmixer.MlpMixer(**DIST_ARCH)).train()


@contextlib.contextmanager
def dist_group(rank: int, port: int, world: int, timeout_s: float) -> Iterator[None]:
    """A distributed test's worker inside the gloo process group on 127.0.0.1:port (one intra-op thread); the group
    is destroyed on exit, whatever happened."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def save_rank_results(
    rank: int, out_dir: str, backends: tuple[str, ...], world: int, global_batch: int, run: Callable
) -> None:
    """Per backend: run(x, y) on this rank's share of dist_batch(global_batch); its result, or the traceback of its
    error, saved as out_dir/<backend>_rank<rank>.pt (load_rank_results reads them back)."""
    import fastmixer

    x, y = dist_batch(global_batch)
    shard = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    for backend in backends:
        try:
            with fastmixer.use_backend(backend):
                result = run(x[shard], y[shard])
        except Exception:
            result = traceback.format_exc()
        torch.save(result, os.path.join(out_dir, f"{backend}_rank{rank}.pt"))


def load_rank_results(out_dir, backends: tuple[str, ...], world: int) -> dict[str, list]:
    """{backend: [rank 0 result, rank 1 result, ...]} as save_rank_results wrote them (results or traceback strings)."""
    return {
        b: [torch.load(Path(out_dir) / f"{b}_rank{r}.pt", weights_only=False) for r in range(world)] for b in backends
    }


def rank_results(results: dict[str, list], backend: str, what: str) -> list[dict]:
    """The ranks' results on `backend`, each checked to be a result (not a worker's traceback); skips a backend the
    workers did not run (triton on CPU without TRITON_INTERPRET=1)."""
    if backend not in results:
        pytest.skip(
            f"CPU {what} through the triton backend needs TRITON_INTERPRET=1 (conftest sets it only without CUDA)"
        )
    for r, result in enumerate(results[backend]):
        assert isinstance(result, dict), f"rank {r} failed on the {backend} backend:\n{result}"
    return results[backend]


def dist_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images [n, 3, 42, 42] and labels, the same in every process."""
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, 42, 42, generator=g), torch.arange(n) % 5


@pytest.fixture
def one_thread():
    """Tiny shapes: one intra-op thread (two spinning threads per process crawl on a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
