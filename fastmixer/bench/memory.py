"""Bytes an autograd graph keeps alive for backward, measured with torch.autograd.graph.saved_tensors_hooks.

Every tensor that a forward saves for backward passes through the pack hook. The measurement counts each underlying
storage once (a tensor saved by two nodes, or two views of one buffer, are one allocation) and at its full size (a saved
view keeps its whole storage alive). Storages that belong to parameters (nn.Parameter objects, or tensors passed in
`params`) are not activation memory: the model holds them anyway. They are reported separately.

    from fastmixer.bench.memory import saved_bytes, saved_tensors_report
    n = saved_bytes(block, x)                  # activation bytes saved by block(x) for backward
    print(saved_tensors_report(block, x).table())
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SavedReport", "SavedTensor", "saved_bytes", "saved_tensors_report"]


@dataclasses.dataclass(frozen=True)
class SavedTensor:
    """One unique storage saved for backward: the first tensor seen on it, and the storage's size in bytes."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    nbytes: int  # bytes of the whole storage (what the graph keeps alive), not of the view
    is_parameter: bool
    times_saved: int  # how many pack-hook calls hit this storage


@dataclasses.dataclass(frozen=True)
class SavedReport:
    """What one call saved for backward. `activation_bytes` is the number to compare between implementations."""

    activation_bytes: int
    parameter_bytes: int
    num_packed: int  # pack-hook calls, duplicates included
    tensors: tuple[SavedTensor, ...]  # unique storages, in the order first saved

    def table(self) -> str:
        """Human-readable per-storage breakdown (one line each, parameters marked)."""
        lines = [f"{'shape':<24} {'dtype':<15} {'bytes':>12} {'saves':>5}  kind"]
        for t in self.tensors:
            kind = "parameter" if t.is_parameter else "activation"
            lines.append(f"{t.shape!s:<24} {t.dtype!s:<15} {t.nbytes:>12,} {t.times_saved:>5}  {kind}")
        lines.append(
            f"activations: {self.activation_bytes:,} B in {sum(not t.is_parameter for t in self.tensors)} storages; "
            f"parameters: {self.parameter_bytes:,} B; {self.num_packed} tensors packed"
        )
        return "\n".join(lines)


def _storage_key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def _parameter_keys(fn: Any, args: tuple[Any, ...], params: Iterable[Tensor] | None) -> set[tuple[str, int]]:
    # Parameters of fn (a module or a module's bound method), of module arguments, Parameter arguments, and `params`.
    tensors: list[Tensor] = list(params) if params is not None else []
    for owner in (fn, getattr(fn, "__self__", None), *args):
        if isinstance(owner, nn.Module):
            tensors.extend(owner.parameters())
        elif isinstance(owner, nn.Parameter):
            tensors.append(owner)
    return {_storage_key(t) for t in tensors}


def saved_tensors_report(
    fn: Callable[..., Any], *args: Any, params: Iterable[Tensor] | None = None, **kwargs: Any
) -> SavedReport:
    """Run `fn(*args, **kwargs)` with grad enabled and report every storage it saved for backward.

    Parameter storages: those of `fn` (if it is an nn.Module or a bound method of one), of nn.Module/nn.Parameter
    positional arguments, of any saved nn.Parameter, and of the tensors in `params` (e.g. cached derived weights that
    outlive the call). Inputs that should get gradients must have requires_grad set by the caller.
    """
    if not callable(fn):
        raise TypeError(f"saved_tensors_report: fn must be callable, got {type(fn).__name__}")
    param_keys = _parameter_keys(fn, args, params)
    order: list[tuple[str, int]] = []
    first: dict[tuple[str, int], Tensor] = {}
    count: dict[tuple[str, int], int] = {}
    is_param: dict[tuple[str, int], bool] = {}

    def pack(t: Tensor) -> Tensor:
        # Holding `t` keeps its storage alive for the whole call, so a data_ptr cannot be reused by another tensor.
        key = _storage_key(t)
        if key not in first:
            order.append(key)
            first[key] = t
            count[key] = 0
            is_param[key] = False
        count[key] += 1
        is_param[key] = is_param[key] or isinstance(t, nn.Parameter) or key in param_keys
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    entries = tuple(
        SavedTensor(
            shape=tuple(first[k].shape),
            dtype=first[k].dtype,
            device=k[0],
            nbytes=first[k].untyped_storage().nbytes(),
            is_parameter=is_param[k],
            times_saved=count[k],
        )
        for k in order
    )
    del out
    return SavedReport(
        activation_bytes=sum(e.nbytes for e in entries if not e.is_parameter),
        parameter_bytes=sum(e.nbytes for e in entries if e.is_parameter),
        num_packed=sum(count.values()),
        tensors=entries,
    )


def saved_bytes(fn: Callable[..., Any], *args: Any, params: Iterable[Tensor] | None = None, **kwargs: Any) -> int:
    """Activation bytes `fn(*args, **kwargs)` saves for backward: unique storages, parameters excluded (see
    saved_tensors_report for the breakdown)."""
    return saved_tensors_report(fn, *args, params=params, **kwargs).activation_bytes
