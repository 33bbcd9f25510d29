"""Shared test helpers (import as `from helpers import ...`; tests/ is on sys.path)."""

import socket
import time
from collections.abc import Callable
from functools import partial

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
    """A plain timm MlpMixer with the same architecture and weights as a fastmixer model."""
    from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

    blk = model.blocks[0]
    t = TimmMlpMixer(
        num_classes=model.num_classes,
        img_size=model.stem.img_size,
        in_chans=model.in_chans,
        patch_size=model.stem.patch_size[0],
        num_blocks=len(model.blocks),
        embed_dim=model.embed_dim,
        mlp_ratio=(
            blk.mlp_tokens.fc1.out_features / model.embed_dim,
            blk.mlp_channels.fc1.out_features / model.embed_dim,
        ),
        norm_layer=partial(torch.nn.LayerNorm, eps=blk.norm1.eps),
        global_pool=model.global_pool,
    )
    t.load_state_dict(model.state_dict(), strict=True)
    return t.to(next(model.parameters()).device).train(model.training)


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
