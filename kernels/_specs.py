"""Ahead-of-time build specs that are the code the JIT runs: one builder for every kernel module's gpu_build_specs().

A spec names a kernel, example argument values at a model shape, and one autotune config. The signature, constexprs
and ASTSource attrs are not written by hand: they come from Triton's own launch-time specialisation (the binder that
`JITFunction.run` builds with `create_function_from_signature`, then `JITFunction._pack_args`), applied to the example
values. So a spec gets exactly what a real launch at that shape gets:
  * pointer arguments: element type from the tensor's dtype, `tt.divisibility 16` when data_ptr() % 16 == 0 (every
    torch allocation; `Ptr(dtype, offset=...)` models a view that starts mid-allocation);
  * integer arguments: `tt.divisibility 16` when the value is a multiple of 16, and an int equal to 1 becomes a
    constexpr (Triton specialises it away), so batch 1 and batch 256 can be different builds;
  * float arguments: never specialised; constexprs: the config's kwargs, the caller's, and the kernel's defaults.
Builds whose specialisation is identical (a Mixer-B/16 and an L/16 launch that differ only in multiples of 16) are
merged into one spec named after all the shapes it serves (`SpecSet`).

The tests check this against the JIT itself: tests/jit_capture.py runs the real launchers at the same shapes through
`JITFunction.run` with a stand-in driver and compares what reaches the compiler with these specs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import triton

# Mixer widths: C channels, DT token-MLP hidden, DC channel-MLP hidden (timm's mixer_{s,b,l}*, the paper's H/14).
WIDTHS = {
    "S": dict(C=512, DT=256, DC=2048),
    "B": dict(C=768, DT=384, DC=3072),
    "L": dict(C=1024, DT=512, DC=4096),
    "H": dict(C=1280, DT=640, DC=5120),
}
# Token counts S of the supported image sizes: (image px, patch) -> S = (px / patch)^2.
TOKEN_COUNTS = {
    49: "224px/32",
    196: "224px/16",
    256: "224px/14",
    576: "384px/16",
    784: "448px/16",
    1024: "448px/14",
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """One model shape a spec is built for: width family, token count and batch (M = batch * S rows)."""

    width: str  # key of WIDTHS
    S: int
    batch: int

    @property
    def C(self) -> int:
        return WIDTHS[self.width]["C"]

    @property
    def DT(self) -> int:
        return WIDTHS[self.width]["DT"]

    @property
    def DC(self) -> int:
        return WIDTHS[self.width]["DC"]

    @property
    def M(self) -> int:
        return self.batch * self.S

    @property
    def label(self) -> str:
        return f"{self.width}:S{self.S}:b{self.batch}"


# The shapes every kernel is built at: Mixer-B/16, L/16 (S = 196) and H/14 (S = 256) at 224 px, batch 256 (the
# benchmark's) and batch 1 (latency; M = S is then not a multiple of 16 at S = 196).
MODEL_SHAPES = tuple(Shape(w, s, b) for w, s in (("B", 196), ("L", 196), ("H", 256)) for b in (256, 1))
# Training launches (the backward kernels): the model shapes at batch 256.
TRAIN_SHAPES = tuple(s for s in MODEL_SHAPES if s.batch == 256)
# Small-batch training (batch 1: M = S rows, not a multiple of 16 at S = 196): the backward kernels' other builds.
SMALL_TRAIN_SHAPES = tuple(s for s in MODEL_SHAPES if s.batch == 1)
# Every token count the token-mixing kernels must serve (they take S as a constexpr): 224/384/448 px at patches
# 32/16/14, at the widths that have those sizes (S/B/L at patch 32 and 16, H at 14), batch 256.
TOKEN_SHAPES = (Shape("B", 49, 256), Shape("B", 576, 256), Shape("B", 784, 256), Shape("H", 1024, 256))


# dtype routes as fastmixer.ops hands tensors to the launchers: (x, LayerNorm params, GEMM weights/biases, tf32).
ROUTE_DTYPES = {
    "fp32": (torch.float32, torch.float32, torch.float32, False),
    "fp32-tf32": (torch.float32, torch.float32, torch.float32, True),
    "fp16": (torch.float16, torch.float16, torch.float16, False),
    "bf16": (torch.bfloat16, torch.bfloat16, torch.bfloat16, False),
    "fp32+bf16": (torch.float32, torch.float32, torch.bfloat16, False),  # autocast(bf16) on an fp32 model
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One launcher call the AOT builds cover: dtype route (ROUTE_DTYPES key), shape, drop-path branch scale or not,
    activation ("gelu" exact erf, "gelu_tanh" the tanh approximation of JAX/Flax checkpoints), and a forced route
    where a launcher's choice depends on the GPU (split)."""

    route: str
    shape: Shape
    scale: bool = False
    act: str = "gelu"
    split: bool | None = None  # token_mix_bwd's split= (True: the token GEMMs' split route, what sm_80 runs)

    @property
    def tag(self) -> str:
        return self.route + ("-tanh" if self.act == "gelu_tanh" else "")

    @property
    def label(self) -> str:
        return f"{self.tag},{self.shape.label}" + (",scale" if self.scale else "") + (",split" if self.split else "")


@dataclasses.dataclass(frozen=True)
class Ptr:
    """Example tensor argument. The JIT reads only its dtype and whether data_ptr() is a multiple of 16; torch's
    allocators return 256-byte (CUDA) / 64-byte (CPU) aligned storage, so offset 0 is any freshly allocated tensor."""

    dtype: torch.dtype
    offset: int = 0  # bytes from an aligned allocation's start (a view that starts mid-buffer)

    def data_ptr(self) -> int:
        return (1 << 32) + self.offset


def jit_kernel(kernel: Any) -> triton.runtime.jit.JITFunction:
    """The JITFunction under @autotune / @heuristics wrappers."""
    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        if not hasattr(fn, "fn"):
            raise TypeError(f"{kernel!r} is not a @triton.jit kernel")
        fn = fn.fn
    return fn


def _cuda_backend():
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    # Pointer/int specialisation is the same for every CUDA target; the options it parses (num_warps, num_stages)
    # are passed to each build again by the builder.
    return make_backend(GPUTarget("cuda", 90, 32))


def jit_specialisation(kernel: Any, args: dict[str, Any], config: triton.Config | None = None) -> dict[str, Any]:
    """What `kernel[grid](**args)` under `config` hands the compiler: {signature, constexprs (by name), attrs
    ({(arg_index,): [[attr, value]]}), num_warps, num_stages}, computed by Triton's own launch-time binder."""
    from triton.runtime.jit import create_function_from_signature

    fn = jit_kernel(kernel)
    kwargs = dict(args)
    if config is not None:
        clash = set(config.all_kwargs()) & set(args)
        if clash:
            raise ValueError(f"{fn.__name__}: the config sets {sorted(clash)}, which the example args also give")
        kwargs.update(config.all_kwargs())
    missing = [p.name for p in fn.params if p.name not in kwargs and not p.has_default]
    if missing:
        raise ValueError(f"{fn.__name__}: no example value for {missing}")
    backend = _cuda_backend()
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    names = fn.arg_names
    return dict(
        signature=dict(signature),
        constexprs={names[path[0]]: value for path, value in constexprs.items()},
        attrs={path: [list(a) for a in value] for path, value in attrs.items()},
        num_warps=options.num_warps,
        num_stages=options.num_stages,
    )


def spec_key(kernel_name: str, spec: dict[str, Any]) -> tuple:
    """Identity of a build of the kernel named `kernel_name`: two specs with equal keys compile to the same binary."""
    attrs = tuple(sorted((path, tuple(map(tuple, value))) for path, value in spec["attrs"].items() if value))
    return (
        kernel_name,
        tuple(spec["signature"].items()),
        tuple(sorted((k, repr(v)) for k, v in spec["constexprs"].items())),
        attrs,
        spec["num_warps"],
        spec["num_stages"],
    )


class SpecSet:
    """Collects specs for one module; launches that specialise identically are one build, named after every shape."""

    def __init__(self, module: str) -> None:
        self.module = module
        self._specs: dict[tuple, dict[str, Any]] = {}

    def add(
        self,
        kernel: Any,
        route: str,
        shape: Shape,
        args: dict[str, Any],
        config: triton.Config | None = None,
        *,
        config_index: int | None = None,
        must_fit: bool = True,
        role: str = "",
        archs: tuple[int, ...] = (90, 80),
    ) -> None:
        """One launch of `kernel` at `shape` with `args` (names -> example values, Ptr for tensors) under `config`.

        route: the dtype route's tag ("bf16", "fp32-tf32", ...); must_fit=False marks sizes the current kernels are
        known not to fit (reported by the build tests and the kernel report, not failed); role names one of several
        launches of the same kernel in one call (e.g. "dW1" / "dW2"); archs: the GPUs whose launchers can pick this
        build (a kernel the launcher runs on sm_90 only is built and checked for sm_90 only).
        """
        fn = jit_kernel(kernel)
        spec = jit_specialisation(fn, args, config)
        key = spec_key(fn.__name__, spec)
        entry = self._specs.get(key)
        if entry is None:
            tag = ",".join(p for p in (route, role, f"cfg{config_index}" if config_index is not None else "") if p)
            entry = self._specs[key] = dict(
                kernel=fn.__name__.lstrip("_"), tag=tag, fn=fn, shapes=[], must_fit=must_fit, archs=(), **spec
            )
        entry["must_fit"] = entry["must_fit"] or must_fit
        entry["archs"] = tuple(sorted({*entry["archs"], *archs}, reverse=True))
        if shape.label not in entry["shapes"]:
            entry["shapes"].append(shape.label)

    def specs(self) -> list[dict[str, Any]]:
        """The specs, each named `module.kernel[route,role,cfgN,shapes]`; names are unique (distinct builds that
        would share a name are an error of the caller: give them a role)."""
        out = []
        for s in self._specs.values():
            shapes = "/".join(s["shapes"])
            out.append(
                dict(
                    name=f"{self.module}.{s['kernel']}[{s['tag']},{shapes}]",
                    shapes=list(s["shapes"]),
                    **{k: s[k] for k in ("fn", "signature", "constexprs", "attrs", "num_warps", "num_stages")},
                    must_fit=s["must_fit"],
                    archs=s["archs"],
                )
            )
        names = [s["name"] for s in out]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{self.module}: distinct builds share the names {repeated}; give them roles")
        return out
