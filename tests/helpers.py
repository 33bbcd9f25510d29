"""Shared test helpers (import as `from helpers import ...`; tests/ is on sys.path)."""

from collections.abc import Callable

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


def launch_reference(kind: str, *args, eps: float, act: str = "gelu", **_) -> torch.Tensor:
    """Stand-in for the Triton launchers (monkeypatched over fastmixer.ops._launch): the reference forward with the
    launchers' arguments (a MixArgs for "token"/"channel"; x, ln_weight, ln_bias for "pool"); allow_tf32 ignored."""
    from fastmixer import reference

    if kind == "pool":
        return reference.norm_pool_ref(*args, eps=eps)
    return reference.mix_ref(kind, *args, eps=eps, act=act)


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


@pytest.fixture
def one_thread():
    """Tiny shapes: one intra-op thread (two spinning threads per process crawl on a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
