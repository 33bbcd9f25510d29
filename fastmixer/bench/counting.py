"""Counting without a GPU: kernel launches, compulsory HBM bytes and FLOPs per forward / backward; a roofline MODEL.

What is counted, for a model run once on real (CPU or CUDA) tensors:
  * aten ops (timm eager, and fastmixer's own aten work: stem, head, casts, norm_pool's backward) are seen by a
    TorchDispatchMode. Every op that would be a CUDA kernel counts as one launch; views and metadata ops (is_view ops,
    `_unsafe_view`, `detach`, `empty*`, ...) count as none. Compulsory bytes of an op = every tensor input read once +
    every tensor output written once (an expanded input counts its distinct elements only). FLOPs of GEMMs and
    convolutions come from torch.utils.flop_counter's formulas (2 per multiply-add); other ops count 0 (memory-bound).
  * Triton launches (fastmixer's fused kernels) are recorded at the launch call itself (`kernel[grid](...)`, through
    any @autotune / @heuristics wrapper, by fastmixer.bench.launches; autotuning's benchmark launches are not
    counted). Compulsory bytes of a launch = the sizes of its distinct tensor arguments (each pointer read or written
    once; an in-place buffer counts once, so this is a lower bound for such kernels). The GEMM FLOPs of a fused
    `fastmixer::` op (2 GEMMs of 2*M*N*K each) go to the launch that receives the GEMM's weight or a derived copy of
    it (same shape and dtype), the one moving the most bytes if several do; if none does, to the op's launch that
    moves the most bytes. The backward ops (`*_mix_bwd`) get the 5
    GEMMs they do (see `_fused_gemm_flops`).
A `fastmixer::` custom op is seen by the dispatch mode as one op and replaced by the Triton launches and aten ops made
inside it (channel_mix_bwd's cuBLAS GEMMs, host sums of partials);
Triton launches made outside such an op (a backward calling its launchers directly) count too, with bytes but no FLOPs
(their GEMM work is not known here, so the roofline model under-costs them if they are compute-bound).

Each Triton launch also keeps its grid (a tuple, or the callable triton evaluates with the launch's meta-parameters)
and its named arguments, so a model of its cost can evaluate the grid for any autotune config (bench/time_model.py);
each aten op keeps the shapes of its tensor inputs.

Launches can be recorded without executing them (`execute=False`): the launch is logged and skipped, so outputs hold
garbage, which no count depends on. That makes real-size counts (B/16, L/16) cheap on a CPU with no GPU, at the
real batch itself (count_variant: the launch sequence depends on the batch, e.g. channel_mix's LN-fold threshold).

The roofline time is a MODEL, not a measurement: each kernel takes max(flops / peak_flops, bytes / peak_bw) plus a
fixed launch overhead, with the H100 SXM figures of `H100_SXM`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from fastmixer.bench.launches import Launch, LaunchRecorder, TensorArg, launching

__all__ = [
    "H100_SXM",
    "Kernel",
    "KernelCounter",
    "Roofline",
    "TensorArg",
    "count_call",
    "count_kernels",
    "count_variant",
    "distinct_bytes",
    "roofline_us",
    "summarize",
]


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Peak figures of one device, for the roofline model."""

    name: str
    tflops: dict[str, float]  # dense tensor-core peak per dtype name
    hbm_tb_s: float  # HBM bandwidth, TB/s (1e12 B/s)
    launch_us: float  # fixed cost per kernel launch (back-to-back launches, no CUDA graph)


# H100 SXM5 datasheet: bf16/fp16 dense 989 TFLOP/s, tf32 dense 494, HBM3 3.35 TB/s. fp32 is costed at the tf32 rate
# (torch's matmul with allow_tf32; with "highest" precision fp32 GEMMs would run at ~67 TFLOP/s).
H100_SXM = Roofline(
    name="H100 SXM (model)",
    tflops={"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},
    hbm_tb_s=3.35,
    launch_us=2.0,
)

# Ops the dispatch mode sees that move no data on a GPU: allocation and metadata.
_NO_KERNEL = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "_unsafe_view",
    "_reshape_alias",
    "detach",
    "alias",
    "lift_fresh",
    "lift_fresh_copy",
    "_local_scalar_dense",
    "set_",
    "resize_",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "is_same_size",
    "_to_copy_noop",
}


@dataclasses.dataclass
class Kernel:
    """One (would-be) GPU kernel launch."""

    name: str  # "aten.addmm" or the Triton kernel's function name
    source: str  # "aten" | "triton"
    phase: str  # "forward" | "backward"
    bytes: int  # compulsory HBM bytes
    flops: int
    block: int | None = None  # index of the Mixer block whose forward issued it (forward only)
    op: str | None = None  # the fastmixer:: op that made this Triton launch
    launch: Launch | None = dataclasses.field(default=None, repr=False, compare=False)  # while being attributed
    # Triton launches: the grid (tuple or callable of the meta-parameters) and the named arguments (ints, floats,
    # constexprs as passed; tensors as TensorArg), so a grid can be evaluated for any autotune config. aten ops: args
    # holds "shapes", the shapes of the op's tensor inputs.
    grid: Any = dataclasses.field(default=None, repr=False, compare=False)
    args: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)


def distinct_bytes(t: Tensor) -> int:
    """Bytes of the distinct elements of `t` (a broadcast/expanded dimension with stride 0 counts once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return 0 if t.numel() == 0 else n * t.element_size()


def _tensors(obj: Any) -> list[Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, Tensor)]


# ------------------------------------------------------------------------------------------------ the dispatch mode
def _fused_gemm_flops(op: str, args: tuple) -> list[tuple[Tensor, int]]:
    """(weight, GEMM flops) of the GEMMs inside a fastmixer:: op; x [B, S, C], fc1_weight [D, n], fc2_weight [n, D].

    Forward (token_mix / channel_mix): fc1 and fc2, one GEMM each. Backward (*_mix_bwd, which recomputes LN, fc1 and
    GELU from x): fc1 recompute + d fc1_weight + d LN-output (3 GEMMs), d hidden + d fc2_weight (2 GEMMs).
    """
    if op in ("token_mix", "channel_mix"):
        x, fc1_weight, fc2_weight, mult = args[0], args[3], args[5], (1, 1)
    elif op in ("token_mix_bwd", "channel_mix_bwd"):
        x, fc1_weight, fc2_weight, mult = args[1], args[4], args[6], (3, 2)
    else:
        return []
    rows = x.numel() // fc1_weight.shape[1]  # B*C (token mix) or B*S (channel mix)
    flops = 2 * rows * fc1_weight.shape[0] * fc1_weight.shape[1]
    return [(fc1_weight, mult[0] * flops), (fc2_weight, mult[1] * flops)]


class KernelCounter(TorchDispatchMode):
    """Records the kernels a model issues: aten ops (as would-be CUDA kernels) and Triton launches inside
    `fastmixer::` ops. Set `phase` and `block` from outside to tag what follows."""

    def __init__(self, execute: bool = True) -> None:
        super().__init__()
        self.kernels: list[Kernel] = []
        self.phase = "forward"
        self.block: int | None = None
        self.execute = execute
        self.recording = True  # False: run (dry or not) without recording, e.g. the forward that builds the graph

    def _add(self, name: str, source: str, nbytes: int, flops: int, op: str | None = None) -> Kernel:
        k = Kernel(name, source, self.phase, int(nbytes), int(flops), self.block if self.phase == "forward" else None)
        k.op = op
        if self.recording:
            self.kernels.append(k)
        return k

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        namespace = func.namespace
        name = func._schema.name.split("::")[-1]
        if namespace == "fastmixer":
            return self._fused(func, name, args, kwargs)
        if launching():  # inside a running Triton launch: the interpreter's host copies, not kernels
            return func(*args, **kwargs)
        out = func(*args, **kwargs) if self.execute else _dry_run(func, name, args, kwargs)
        if namespace != "aten" or func.is_view or name in _NO_KERNEL or not _tensors(out):
            return out  # views, metadata and scalar-valued ops (promote_types, ...) are no kernels
        nbytes = sum(distinct_bytes(t) for t in (*_tensors((args, kwargs)), *_tensors(out)))
        k = self._add(f"aten.{name}", "aten", nbytes, _aten_flops(func, args, kwargs, out))
        k.args = {"shapes": [tuple(t.shape) for t in _tensors((args, kwargs))]}
        return out

    def __enter__(self) -> KernelCounter:
        # Triton launches are recorded for the whole span: inside fastmixer:: ops and outside them (a backward that
        # calls its launchers from the autograd function).
        self._launches = LaunchRecorder(execute=self.execute, on_launch=self._on_launch).__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._launches.__exit__(*exc)

    def _on_launch(self, launch: Launch) -> None:
        seen: dict[tuple[int, tuple, tuple], Tensor] = {}
        for t in launch.tensors:
            seen.setdefault((t.data_ptr(), tuple(t.shape), tuple(t.stride())), t)
        nbytes = sum(distinct_bytes(t) for t in seen.values())
        k = self._add(launch.name, "triton", nbytes, 0, op=self._op)
        k.launch = launch if self._op else None
        k.grid, k.args = launch.grid, launch.args

    _op: str | None = None

    def _fused(self, func, name: str, args: tuple, kwargs: dict) -> Any:
        first = len(self.kernels)
        self._op = name
        # Dispatch pops this mode while __torch_dispatch__ runs; re-entering it around the op's Python implementation
        # makes the aten work inside the op count too: channel_mix_bwd's cuBLAS GEMMs, host sums of fp32 partials.
        from fastmixer.ops import fused_impl

        impl = fused_impl(name)
        if impl is None:
            try:
                out = func(*args, **kwargs)
            finally:
                self._op = None
        else:
            TorchDispatchMode.__enter__(self)  # the op's Python implementation, run under this mode again
            try:
                out = impl(*args, **kwargs)
            finally:
                TorchDispatchMode.__exit__(self, None, None, None)
                self._op = None
        kernels = self.kernels[first:]
        launches = [k for k in kernels if k.source == "triton"]
        if self.recording and not launches:
            raise RuntimeError(
                f"fastmixer::{name} made no Triton launch; count with the triton backend (use_backend('triton'))"
            )
        gemms = _fused_gemm_flops(name, args) if launches else []
        # The op's GEMM FLOPs not already counted on its aten ops (cuBLAS) go to its Triton launches, each GEMM to the
        # launch that receives its weight or a derived copy of it (same shape and dtype: channel_mix's folded W1g), of
        # several the one moving the most bytes (the LN-fold pass reads W1 and writes W1g; the GEMM moves far more),
        # scaled so the op's total stays exact.
        total = sum(f for _, f in gemms)
        share = max(0.0, 1.0 - sum(k.flops for k in kernels if k.source == "aten") / total) if total else 0.0
        for weight, flops in gemms:
            owner = [k for k in launches if any(_like(weight, t) for t in k.launch.tensors)]
            max(owner or launches, key=lambda k: k.bytes).flops += round(flops * share)
        for k in kernels:
            k.op = name
            k.launch = None  # drop the tensor references
        return out


def _dry_run(func, name: str, args: tuple, kwargs: dict) -> Any:
    """Outputs of `func` with the right shapes, strides and dtypes but uninitialised data, computed on the meta device
    (no arithmetic). Views, in-place/out= ops and ops meta cannot shape run for real (they are cheap or rare)."""
    if func.is_view or func._schema.is_mutable or name in _NO_KERNEL:
        return func(*args, **kwargs)
    inputs = _tensors((args, kwargs))
    device = inputs[0].device if inputs else torch.device("cpu")

    def to_meta(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")

    def from_meta(t: Any) -> Any:
        if not isinstance(t, Tensor) or t.device.type != "meta":
            return t
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)

    try:
        meta_args, meta_kwargs = tree_map(to_meta, (args, kwargs))
        return tree_map(from_meta, func(*meta_args, **meta_kwargs))
    except (NotImplementedError, RuntimeError):  # no meta kernel, or a data-dependent output shape
        return func(*args, **kwargs)


def _like(weight: Tensor, t: Tensor) -> bool:
    """t is the weight or a copy derived from it: same shape and dtype."""
    return t.shape == weight.shape and t.dtype == weight.dtype


def _aten_flops(func, args: tuple, kwargs: dict, out: Any) -> int:
    from torch.utils.flop_counter import flop_registry

    fn = flop_registry.get(func._overloadpacket)
    if fn is None:
        return 0
    return int(fn(*args, **kwargs, out_val=out))


# ------------------------------------------------------------------------------------------------ model counts
def _count_backward(counter: KernelCounter, fn: Callable[[], Tensor]) -> None:
    # The forward that builds the graph runs unrecorded (dry too, when the counter is); then its backward, recorded,
    # from a random upstream gradient.
    counter.recording = False
    with counter:
        out = fn()
    grad = torch.randn_like(out)
    counter.phase, counter.recording = "backward", True
    with counter:
        out.backward(grad)


def _host_launches(images: Tensor) -> contextlib.AbstractContextManager:
    # The triton backend takes CPU tensors only where asked: CPU counts are dry or interpreted (also on a CUDA
    # machine, where CPU tensors are counted dry).
    from fastmixer.ops import host_launches

    return host_launches() if images.device.type == "cpu" else contextlib.nullcontext()


def count_kernels(model: nn.Module, images: Tensor, *, backward: bool = True, execute: bool = True) -> list[Kernel]:
    """Kernels of one forward (eval, no_grad) and, if `backward`, of one backward (train mode; the forward that builds
    the graph is not counted). A fastmixer model must be on the triton backend for its fused ops to be launches.

    images [B, 3, H, W] on the model's device and dtype.
    """
    blocks = getattr(model, "blocks", None)
    counter = KernelCounter(execute=execute)
    handles = []
    if isinstance(blocks, nn.Sequential):
        for i, blk in enumerate(blocks):
            handles.append(blk.register_forward_pre_hook(lambda m, a, i=i: setattr(counter, "block", i)))
            handles.append(blk.register_forward_hook(lambda m, a, o: setattr(counter, "block", None)))
    was_training = model.training
    try:
        with _host_launches(images):
            model.eval()
            with torch.no_grad(), counter:
                model(images)
            if backward:
                model.train()
                for p in model.parameters():
                    p.grad = None
                _count_backward(counter, lambda: model(images))
                for p in model.parameters():
                    p.grad = None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counter.kernels


def count_call(
    fn: Callable[[Tensor], Tensor], x: Tensor, *, backward: bool = True, execute: bool = True
) -> list[Kernel]:
    """Kernels of one call `fn(x)` (no_grad) and, if `backward`, of the backward of `fn(x)` with x requiring grad and
    a random upstream gradient (the forward that builds the graph is not counted). For one block or one op; a
    fastmixer module must be on the triton backend for its fused ops to be launches. x on fn's device and dtype."""
    counter = KernelCounter(execute=execute)
    with _host_launches(x):
        with torch.no_grad(), counter:
            fn(x)
        if backward:
            xg = x.detach().requires_grad_()
            _count_backward(counter, lambda: fn(xg))
    return counter.kernels


def roofline_us(kernels: list[Kernel], dtype: torch.dtype | str, device: Roofline = H100_SXM) -> float:
    """Modelled time in microseconds: sum over kernels of max(flops / peak, bytes / bandwidth) + launch overhead."""
    key = str(dtype).replace("torch.", "")
    peak = device.tflops[key] * 1e12
    bw = device.hbm_tb_s * 1e12
    return sum(max(k.flops / peak, k.bytes / bw) * 1e6 + device.launch_us for k in kernels)


def summarize(kernels: list[Kernel], dtype: torch.dtype | str, device: Roofline = H100_SXM) -> dict[str, Any]:
    """Per phase: launches, launches in block 0, GB moved, GFLOPs and the roofline-modelled time."""
    out: dict[str, Any] = {}
    for phase in ("forward", "backward"):
        ks = [k for k in kernels if k.phase == phase]
        if not ks:
            continue
        out[phase] = {
            "launches": len(ks),
            "launches_per_block": sum(1 for k in ks if k.block == 0) if phase == "forward" else None,
            "triton_launches": sum(1 for k in ks if k.source == "triton"),
            "gbytes": sum(k.bytes for k in ks) / 1e9,
            "gflops": sum(k.flops for k in ks) / 1e9,
            "model_us": roofline_us(ks, dtype, device),
        }
    return out


def count_variant(
    variant: str = "b16",
    *,
    batch: int = 256,
    dtype: torch.dtype = torch.bfloat16,
    backward: bool = True,
    num_blocks: int | None = None,
    device: Roofline = H100_SXM,
) -> dict[str, Any]:
    """fastmixer (triton backend, launches recorded dry) vs timm eager (aten ops) for a Mixer variant ("b16", "l16",
    ...) at `batch`, `dtype`: launches per forward / backward, per block, GB moved, GFLOPs, roofline-modelled us.

    Counted dry on CPU tensors at `batch` itself (launches logged, not run): the launch sequence can depend on the
    batch (channel_mix folds LN into its first GEMM only with rows >= 2 x hidden), so no extrapolation from small
    batches. Weights are random.
    """
    import fastmixer
    from fastmixer.registry import resolve_variant
    from fastmixer.timm_convert import to_timm

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    arch = resolve_variant(variant)
    kwargs = {} if num_blocks is None else {"num_blocks": num_blocks}
    ours = fastmixer.create_model(arch, **kwargs).to(dtype)
    theirs = to_timm(ours, share=False)  # plain timm MlpMixer, same architecture and weights
    img = ours.pretrained_cfg.get("input_size", (3, 224, 224))[-1] if num_blocks is None else ours.stem.img_size[0]
    results: dict[str, Any] = {
        "variant": arch,
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "num_blocks": len(ours.blocks),
        "roofline": dataclasses.asdict(device),
    }
    counts = {}
    for name, model, backend in (("fastmixer", ours, "triton"), ("timm eager", theirs, None)):
        x = torch.randn(batch, 3, img, img, dtype=dtype)
        with fastmixer.use_backend(backend) if backend else contextlib.nullcontext():
            counts[name] = count_kernels(model, x, backward=backward, execute=False)
        results[name] = summarize(counts[name], dtype, device)
    # the kernels of one block's forward, per provider
    results["kernels"] = {n: [_as_dict(k) for k in ks if k.block == 0] for n, ks in counts.items()}
    return results


def _as_dict(k: Kernel) -> dict[str, Any]:
    return {f.name: getattr(k, f.name) for f in dataclasses.fields(k) if f.name not in ("launch", "grid", "args")}
