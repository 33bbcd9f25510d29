"""What Triton's JIT hands the compiler when the real launchers run, recorded without a GPU.

`capture()` makes `kernel[grid](...)` go through the real `JITFunction.run` (its binder, its specialisation of every
argument, `_pack_args`) with a stand-in driver that reports an sm_90 device, and records the (signature, constexprs,
attrs, num_warps, num_stages) that `run` passes to `_do_compile` instead of compiling. An @autotune kernel is expanded
the way its autotuner would benchmark it: every config left after its early prune, each through `JITFunction.run`.
Aten work inside a launcher (cuBLAS GEMMs, host sums) runs on the meta device (shapes only), so real-size launches cost
milliseconds on a CPU. Must run with TRITON_INTERPRET unset (the aot worker, tests/aot.py).

`launch_cases()` lists the launcher calls the faithfulness test makes, at the shapes of kernels/_specs.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from fastmixer.mix_args import MixArgs


@dataclasses.dataclass
class Compile:
    """One specialisation the JIT would compile."""

    kernel: str  # the @triton.jit function's name
    signature: dict[str, str]
    constexprs: dict[str, Any]  # by argument name
    attrs: dict[tuple, list]  # {(arg_index,): [[attr, value], ...]}
    num_warps: int
    num_stages: int


class _StandInDriver:
    """Just enough of a triton driver for JITFunction.run to reach _do_compile: one sm_90 device, stream 0."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


class _MetaAten(TorchDispatchMode):
    """Runs non-view aten ops on the meta device and returns uninitialised CPU tensors of the result's layout."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.is_view or func._schema.is_mutable or "empty" in func.__name__:
            return func(*args, **kwargs)

        def to_meta(t):
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") if torch.is_tensor(t) else t

        def back(t):
            if torch.is_tensor(t) and t.device.type == "meta":
                return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
            return t

        try:
            meta_args, meta_kwargs = tree_map(to_meta, (args, kwargs))
            return tree_map(back, func(*meta_args, **meta_kwargs))
        except (NotImplementedError, RuntimeError):
            return func(*args, **kwargs)


@contextlib.contextmanager
def capture() -> Iterator[list[Compile]]:
    """Record every specialisation the launchers called inside would compile; nothing is compiled or launched."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    records: list[Compile] = []

    def do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        names = self.arg_names
        records.append(
            Compile(
                kernel=self.__name__,
                signature=dict(signature),
                constexprs={names[path[0]]: value for path, value in constexprs.items()},
                attrs={path: [list(a) for a in value] for path, value in attrs.items()},
                num_warps=options.num_warps,
                num_stages=options.num_stages,
            )
        )
        return None  # JITFunction.run then returns without launching

    def autotune_run(self, *args, **kwargs):
        # What Autotuner.run benchmarks: every config its early prune keeps, each a JIT launch.
        self.nargs = dict(zip(self.arg_names, args))
        try:
            for config in self.prune_configs(kwargs):
                self.fn.run(*args, **kwargs, **config.all_kwargs())
        finally:
            self.nargs = None

    def heuristics_run(self, *args, **kwargs):
        raise NotImplementedError("@triton.heuristics kernels are not expanded by jit_capture yet")

    saved = (JITFunction._do_compile, Autotuner.run, Heuristics.run, driver._active)
    JITFunction._do_compile = do_compile
    Autotuner.run = autotune_run
    Heuristics.run = heuristics_run
    driver.set_active(_StandInDriver())
    try:
        with _MetaAten():
            yield records
    finally:
        JITFunction._do_compile, Autotuner.run, Heuristics.run, driver._active = saved


# ------------------------------------------------------------------------------------------------ launcher calls
def mix_args(kind: str, route: str, shape, *, scale: bool = False) -> tuple[tuple, dict]:
    """Arguments of the {token,channel}_mix launchers at `shape` (a kernels._specs.Shape) for `route`:
    x [B, S, C]; token mixing mixes over S with hidden DT, channel mixing over C with hidden DC."""
    from fastmixer.kernels._specs import ROUTE_DTYPES

    x_dt, ln_dt, w_dt, tf32 = ROUTE_DTYPES[route]
    B, S, C = shape.batch, shape.S, shape.C
    n, hidden = (S, shape.DT) if kind == "token" else (C, shape.DC)
    x = torch.empty(B, S, C, dtype=x_dt)
    tensors = (
        torch.empty(C, dtype=ln_dt),
        torch.empty(C, dtype=ln_dt),
        torch.empty(hidden, n, dtype=w_dt),
        torch.empty(hidden, dtype=w_dt),
        torch.empty(n, hidden, dtype=w_dt),
        torch.empty(n, dtype=w_dt),
        torch.empty(B, dtype=x_dt) if scale else None,
    )
    return (x, *tensors), dict(eps=1e-6, allow_tf32=tf32)


def launch_cases(module: str) -> list[tuple[str, Callable[[], Any]]]:
    """(label, call) for every launcher call of `module` at the shapes and routes its specs name."""
    import importlib

    from fastmixer.kernels import _specs

    mod = importlib.import_module(f"fastmixer.kernels.{module}")
    cases = []
    for case in mod.spec_cases():
        route, shape, scale, label = case.route, case.shape, case.scale, case.label
        if module in ("token_mix", "channel_mix"):
            args, kw = mix_args(module.split("_")[0], route, shape, scale=scale)
            launcher = getattr(mod, f"{module}_fwd")
            kw["act"] = case.act
            cases.append((label, lambda launcher=launcher, args=args, kw=kw: launcher(MixArgs(*args), **kw)))
        elif module in ("token_mix_bwd", "channel_mix_bwd"):
            args, kw = mix_args(module.split("_")[0], route, shape, scale=scale)
            dout = torch.empty(args[0].shape, dtype=args[0].dtype)
            launcher = getattr(mod, module)
            kw["act"] = case.act
            if case.split is not None:
                kw["split"] = case.split
            cases.append((label, lambda launcher=launcher, args=args, kw=kw, d=dout: launcher(d, MixArgs(*args), **kw)))
        elif module == "norm_pool":
            x_dt, ln_dt, _, _ = _specs.ROUTE_DTYPES[route]
            x = torch.empty(shape.batch, shape.S, shape.C, dtype=x_dt)
            ln = torch.empty(shape.C, dtype=ln_dt)
            cases.append((label, lambda x=x, ln=ln: mod.norm_pool_fwd(x, ln, ln, eps=1e-6)))
        elif module == "layernorm":
            x_dt, ln_dt, w_dt, _ = _specs.ROUTE_DTYPES[route]
            x = torch.empty(shape.batch, shape.S, shape.C, dtype=x_dt)
            ln = torch.empty(shape.C, dtype=ln_dt)
            cases.append((label, lambda x=x, ln=ln, w=w_dt: mod.layernorm_fwd(x, ln, ln, eps=1e-6, out_dtype=w)))
        else:
            raise ValueError(f"no launcher calls known for kernel module {module!r}")
    del _specs
    return cases


def check_module(module: str, drop_hint: str | None = None) -> dict[str, Any]:
    """Run every launcher call of `module` through the JIT (captured) and match each specialisation against the
    module's gpu_build_specs(). Returns {"cases": n, "compiles": n, "missing": [...], "unused": [...]}: a captured
    specialisation with no identical spec is "missing" (the AOT builds would not be the code that runs).

    drop_hint: for testing the check itself, remove the divisibility hint of this argument from every spec first (as
    a hand-kept spec that forgot it would be)."""
    import importlib

    from fastmixer.kernels._specs import spec_key

    mod = importlib.import_module(f"fastmixer.kernels.{module}")
    specs = mod.gpu_build_specs()
    if drop_hint is not None:
        for s in specs:
            names = s["fn"].arg_names
            if drop_hint in names:
                s["attrs"] = {**s["attrs"], (names.index(drop_hint),): []}
    by_key = {spec_key(s["fn"].__name__, s): s["name"] for s in specs}
    seen: set[str] = set()
    missing = []
    n = 0
    for label, call in launch_cases(module):
        with capture() as records:
            call()
        if not records:
            missing.append(f"{label}: the launcher made no launch")
        for rec in records:
            n += 1
            key = spec_key(rec.kernel, dataclasses.asdict(rec))
            if key in by_key:
                seen.add(by_key[key])
                continue
            near = [s for s in specs if s["fn"].__name__ == rec.kernel and s["constexprs"] == rec.constexprs]
            missing.append(
                f"{label}: {rec.kernel} w{rec.num_warps} s{rec.num_stages} signature={rec.signature} "
                f"constexprs={rec.constexprs} attrs={_hinted(rec.attrs)}; "
                + (f"closest spec {near[0]['name']} has signature={near[0]['signature']} attrs="
                   f"{_hinted(near[0]['attrs'])}, w{near[0]['num_warps']} s{near[0]['num_stages']}"
                   if near else "no spec with these constexprs")
            )  # fmt: skip
    unused = sorted(s["name"] for s in specs if s["name"] not in seen)
    return {"cases": len(launch_cases(module)), "compiles": n, "missing": missing, "unused": unused}


def _hinted(attrs: dict) -> list[int]:
    return sorted(path[0] for path, value in attrs.items() if value)
