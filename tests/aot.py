"""Ahead-of-time GPU builds of the Triton kernels, no GPU needed (import as `import aot`; tests/ is on sys.path).

Every kernel module in fastmixer.kernels exposes `gpu_build_specs() -> list[dict]`, one dict per (kernel, config):
  name        unique within the module, e.g. "token_mix_fwd[bf16,BLOCK_C=64,w4,s2]"
  fn          the @triton.jit function
  signature   argument name -> "*bf16" / "*fp32" / "i32" / "fp32" / "constexpr" (constexpr entries may be left out)
  constexprs  constexpr name -> value
  num_warps, num_stages
  (optional) dtype             label for reports; default: the element types of the pointer arguments
  (optional) attrs             ASTSource attrs, {(arg_index,): [["tt.divisibility", 16]]}, as the JIT derives them
  (optional) divisible_by_16   (without attrs) integer argument names the launcher guarantees to be multiples of 16

`build(spec, arch)` compiles one spec for sm_<arch> with triton.compile(ASTSource(...), target=GPUTarget("cuda", arch,
32)) and reads its resources: registers and stack from `cuobjdump --dump-resource-usage`, spill bytes from the ptxas -v
log of the same compile, shared memory from the kernel metadata. The same cuobjdump call dumps the SASS, which
tests/sass.py reads into res["sass"] (MMA mix, main loop, issue vs MMA cycles) and res["occupancy"] (CTAs/warps per
SM on H100/A100). Pointer arguments are marked 16-byte aligned, as the
JIT specialises every torch allocation (unless the spec gives its own attrs): that turns on the cp.async/TMA pipelining
that sets the real shared-memory use; without it a GEMM builds with a single operand buffer.

The builds run in one worker subprocess (this file, run as a script with TRITON_INTERPRET unset and a private
TRITON_CACHE_DIR): under TRITON_INTERPRET=1 `@triton.jit` yields interpreter functions that triton.compile cannot take,
and the worker's spec list is the GPU one (kernels/_common.pick_configs trims configs under the interpreter). Results
are cached per process. Works with triton 3.6 and 3.8 (same ASTSource/compile/knobs API).

Cost: one build is 1-5 s on an idle core, 5-30 s on a loaded one (ptxas dominates for big tiles), so the full
kernels x configs x dtypes x {sm_90, sm_80} product takes many minutes; `python bench/kernel_resources.py` turns the
same builds into the kernel report (Markdown + JSON).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

SELFTEST_MODULE = "aot:selftest"  # the small kernels defined below, for checking this module itself
ARCHS = (90, 80)
# Shared memory one block may use (dynamic + static): H100 227 KB, A100 163 KB.
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
REGISTER_FILE = 65536  # 32-bit registers per SM: registers/thread * threads/block must fit
BUILD_TIMEOUT_S = 300.0
_TYPES = re.compile(r"^(\*?(fp8e4nv|fp8e5|fp16|bf16|fp32|fp64|i1|i8|i16|i32|i64|u8|u16|u32|u64)|constexpr)$")


def _kernel_modules() -> tuple[str, ...]:
    # Every public module of fastmixer.kernels (one file per fused op, forward and backward); "_common" & co. are not.
    import pkgutil

    import fastmixer.kernels  # its __init__ imports nothing: triton is not loaded here

    names = sorted(m.name for m in pkgutil.iter_modules(fastmixer.kernels.__path__) if not m.name.startswith("_"))
    return tuple(f"fastmixer.kernels.{n}" for n in names)


KERNEL_MODULES = _kernel_modules()


class BuildError(RuntimeError):
    """A spec that does not compile for the target (message carries the compiler's error)."""


# ------------------------------------------------------------------------------------------------ spec handling
def spec_module(spec: dict[str, Any]) -> str:
    """Module whose gpu_build_specs() produced `spec`: its "module" key, else the kernel function's module."""
    if "module" in spec:
        return spec["module"]
    fn = spec.get("fn")
    py_fn = getattr(fn, "fn", fn)
    module = getattr(py_fn, "__module__", None)
    if not module:
        raise ValueError(f"spec {spec.get('name')!r}: cannot tell its module; add a 'module' key")
    return module


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, dict):
        raise TypeError(f"a build spec must be a dict, got {type(spec).__name__}")
    missing = {"name", "fn", "signature", "constexprs", "num_warps", "num_stages"} - spec.keys()
    if missing:
        raise ValueError(f"spec {spec.get('name')!r} lacks keys {sorted(missing)}")
    import triton

    if not isinstance(spec["fn"], triton.runtime.jit.JITFunction):
        raise TypeError(f"spec {spec['name']!r}: 'fn' must be a @triton.jit function, got {type(spec['fn']).__name__}")
    arg_names = spec["fn"].arg_names
    for arg, ty in spec["signature"].items():
        if arg not in arg_names:
            raise ValueError(f"spec {spec['name']!r}: signature names {arg!r}, not an argument of the kernel")
        if not isinstance(ty, str) or not _TYPES.match(ty):
            raise ValueError(
                f"spec {spec['name']!r}: type of {arg!r} must be like '*bf16', 'i32', 'fp32' or 'constexpr', got {ty!r}"
            )
    for arg in arg_names:
        if arg not in spec["signature"] and arg not in spec["constexprs"]:
            raise ValueError(f"spec {spec['name']!r}: argument {arg!r} is neither in signature nor in constexprs")
    for key in ("num_warps", "num_stages"):
        v = spec[key]
        if not isinstance(v, int) or v < 1 or (key == "num_warps" and v & (v - 1)):
            raise ValueError(f"spec {spec['name']!r}: {key} must be a positive int (warps: a power of two), got {v!r}")


def spec_archs(spec: dict[str, Any]) -> tuple[int, ...]:
    """The archs a spec (or its summary) is built and checked for: its "archs" (kernels/_specs.SpecSet), else ARCHS."""
    return tuple(a for a in ARCHS if a in spec.get("archs", ARCHS))


def spec_dtype(spec: dict[str, Any]) -> str:
    """Report label: spec["dtype"], else the distinct pointer element types ("bf16", "fp32+bf16", ...)."""
    if spec.get("dtype"):
        return str(spec["dtype"])
    seen = [t[1:] for t in spec["signature"].values() if t.startswith("*")]
    return "+".join(dict.fromkeys(seen)) or "-"


def _summary(module: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "module": module,
        "name": spec["name"],
        "kernel": spec["fn"].__name__,
        "dtype": spec_dtype(spec),
        "constexprs": {k: v if isinstance(v, (int, float, str)) else repr(v) for k, v in spec["constexprs"].items()},
        "num_warps": spec["num_warps"],
        "num_stages": spec["num_stages"],
        # optional spec keys, passed through when a module's specs carry them
        **{k: spec[k] for k in ("shapes", "must_fit", "archs") if k in spec},
        "build_id": build_id(spec),
    }


def source_fingerprint(fn: Any) -> list[str]:
    """The source of a @triton.jit function and of every jit function it calls (transitively), plus the values of the
    plain and tl.constexpr constants it reads: what decides the code it compiles to. Unlike triton's own cache key,
    line numbers do not enter, so editing a kernel module elsewhere does not invalidate the kernel report."""
    import ast

    import triton

    seen: dict[str, str] = {}

    def visit(f: Any) -> None:
        name = f"{f.fn.__module__}.{f.fn.__qualname__}"
        if name in seen:
            return
        seen[name] = f.src
        for node in ast.walk(ast.parse(f.src)):
            if not isinstance(node, ast.Name) or node.id not in f.__globals__:
                continue
            value = f.__globals__[node.id]
            if isinstance(value, triton.runtime.jit.JITFunction):
                visit(value)
            elif isinstance(value, triton.language.constexpr):  # e.g. the GELU's fitted coefficients
                seen[f"{name}:{node.id}"] = repr(value.value)
            elif isinstance(value, (int, float, str, bool)):
                seen[f"{name}:{node.id}"] = repr(value)

    visit(fn)
    return [f"{k}\n{v}" for k, v in sorted(seen.items())]


def build_id(spec: dict[str, Any]) -> str:
    """Identity of a spec's build (per arch, add the arch): triton version, the kernel's source and the jit functions
    it calls (source_fingerprint), signature, constexprs, attrs, warps and stages. Equal ids compile to the same
    binary up to line-number debug info; a committed report row with this id describes this build."""
    import hashlib

    import triton

    fn = spec["fn"]
    attrs = sorted((list(k), v) for k, v in (spec.get("attrs") or {}).items() if v)
    ident = [
        triton.__version__,
        source_fingerprint(fn),
        fn.__name__,
        sorted(spec["signature"].items()),
        sorted((k, repr(v)) for k, v in spec["constexprs"].items()),
        attrs,
        spec["num_warps"],
        spec["num_stages"],
    ]
    return hashlib.sha256(json.dumps(ident, default=repr).encode()).hexdigest()[:16]


def _load_specs(module: str) -> list[dict[str, Any]]:
    """gpu_build_specs() of `module`, validated, names unique (runs in the worker, triton not interpreting)."""
    if module == SELFTEST_MODULE:
        specs = _selftest_specs()
    else:
        import importlib

        mod = importlib.import_module(module)
        if not hasattr(mod, "gpu_build_specs"):
            raise AttributeError(f"{module} defines no gpu_build_specs(): its kernels would escape these checks")
        specs = mod.gpu_build_specs()
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{module}.gpu_build_specs() must return a non-empty list of dicts, got {specs!r:.200}")
    for spec in specs:
        _check_spec(spec)
    names = [s["name"] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{module}.gpu_build_specs(): spec names must be unique, repeated: {dup}")
    return specs


# ------------------------------------------------------------------------------------------------ building (worker)
def _nvidia_bin(tool: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    if os.path.exists(path):
        return path
    found = shutil.which(tool)
    if found is None:
        raise FileNotFoundError(f"{tool} is neither in triton's wheel ({path}) nor on PATH")
    return found


_PTXAS_FN = re.compile(
    r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
    r"(\d+) bytes spill loads"
)
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_CUOBJ_FN = re.compile(r"Function (\S+?):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_resource_usage(text: str, kernel: str) -> dict[str, int]:
    """`cuobjdump --dump-resource-usage` text -> {registers, stack_bytes, static_shared_bytes, local_bytes} of
    `kernel`."""
    for name, reg, stack, shared, local in _CUOBJ_FN.findall(text):
        if name == kernel:
            return dict(
                registers=int(reg), stack_bytes=int(stack), static_shared_bytes=int(shared), local_bytes=int(local)
            )
    raise ValueError(f"cuobjdump lists no function {kernel!r}:\n{text}")


def parse_ptxas_log(text: str, kernel: str) -> dict[str, int]:
    """ptxas -v log -> {spill_stores, spill_loads} (bytes) of `kernel`."""
    for name, _stack, stores, loads in _PTXAS_FN.findall(text):
        if name == kernel:
            return dict(spill_stores=int(stores), spill_loads=int(loads))
    raise ValueError(f"ptxas log has no 'Function properties for {kernel}':\n{text}")


def check_limits(res: dict[str, Any]) -> list[str]:
    """Problems of one build result (empty = fits): spills, stack, shared memory, register file."""
    problems = []
    if res["spill_stores"] or res["spill_loads"]:
        problems.append(f"spills {res['spill_stores']} B stores / {res['spill_loads']} B loads")
    if res["stack_bytes"] or res["local_bytes"]:
        problems.append(f"stack {res['stack_bytes']} B, local {res['local_bytes']} B")
    shared = res["shared_bytes"] + res["static_shared_bytes"]
    limit = SHARED_LIMIT.get(res["arch"])
    if limit is None:
        problems.append(f"no shared-memory limit known for sm_{res['arch']}")
    elif shared > limit:
        problems.append(f"shared {shared / 1024:.1f} KB > {limit // 1024} KB (sm_{res['arch']})")
    threads = 32 * res["num_warps"]
    if res["registers"] * threads > REGISTER_FILE:
        problems.append(f"{res['registers']} registers x {threads} threads > {REGISTER_FILE} per SM")
    return problems


def _build_local(spec: dict[str, Any], arch: int) -> dict[str, Any]:
    """Compile `spec` for sm_<arch> in this process (triton must not be interpreting) and measure it."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec["fn"]
    signature = {a: spec["signature"].get(a, "constexpr") for a in fn.arg_names}
    aligned = set(spec.get("divisible_by_16", ()))
    # tt.divisibility=16 on every pointer (torch allocations are 256-byte aligned) and on the ints the spec names.
    attrs = spec.get("attrs") or {
        (i,): [["tt.divisibility", 16]]
        for i, a in enumerate(fn.arg_names)
        if signature[a].startswith("*") or a in aligned
    }
    src = ASTSource(fn, signature, dict(spec["constexprs"]), attrs)
    options = dict(num_warps=spec["num_warps"], num_stages=spec["num_stages"])
    log = io.StringIO()
    start = time.perf_counter()
    # The worker's cache dir is private and fresh, so ptxas really runs and prints its -v log (captured here).
    with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        try:
            kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        except Exception as e:
            raise BuildError(f"{spec['name']} does not build for sm_{arch}: {type(e).__name__}: {e}") from e
    seconds = time.perf_counter() - start
    name = kernel.metadata.name
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, f"{name}.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        # One cuobjdump call gives both the resource usage and the SASS (~1 s for a big kernel).
        dump = subprocess.run(
            [_nvidia_bin("cuobjdump"), "--dump-resource-usage", "--dump-sass", cubin],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    ptxas_log = log.getvalue()
    if "Function properties for" not in ptxas_log:  # cache hit or a triton without the knob: run ptxas -v ourselves
        ptxas_log = _ptxas_verbose(kernel.asm["ptx"], arch)
    res = dict(
        name=spec["name"],
        kernel=name,
        arch=arch,
        dtype=spec_dtype(spec),
        num_warps=spec["num_warps"],
        num_stages=spec["num_stages"],
        shared_bytes=int(kernel.metadata.shared),
        build_s=round(seconds, 2),
    )
    res.update(parse_resource_usage(dump, name))
    res.update(parse_ptxas_log(ptxas_log, name))
    if not res["registers"] or res["registers"] > 255:
        raise ValueError(f"{spec['name']}: implausible register count {res['registers']} parsed from:\n{dump}")
    res["problems"] = check_limits(res)
    res["ok"] = not res["problems"]
    _attach_sass(res, dump, kernel.asm.get("ttir", ""))
    return res


def _attach_sass(res: dict[str, Any], dump: str, ttir: str) -> None:
    """res["sass"] (tests/sass.analyze of the cubin's SASS, plus ir_dots: the tt.dot ops of the kernel's TTIR, callees
    inlined) and res["occupancy"] (tests/sass.occupancy); a parser failure is recorded as {"error": ...} rather than
    failing the build (tests/test_sass.py checks for it)."""
    import sass

    arch, warps = res["arch"], res["num_warps"]
    keep = os.environ.get("FASTMIXER_AOT_SASS_DIR")  # bench/kernel_resources.py --sass-dir
    if keep:
        safe = re.sub(r"[^\w.,=+-]+", "_", res["name"])
        with open(os.path.join(keep, f"{safe}.sm{arch}.sass"), "w") as f:
            f.write(dump)
    dots = len(re.findall(r"\btt\.dot\b", ttir))
    try:
        # FFMA counts as matrix work only in a kernel that has a tl.dot (the FMA route of fp32 "ieee" dots)
        res["sass"] = sass.analyze(dump, arch, warps, kernel=res["kernel"], ffma_is_mma=dots > 0)
        res["sass"]["ir_dots"] = dots
    except Exception as e:
        res["sass"] = {"error": f"{type(e).__name__}: {e}", "ir_dots": dots}
    res["occupancy"] = sass.occupancy(arch, res["registers"], warps, res["shared_bytes"], res["static_shared_bytes"])


def _ptxas_verbose(ptx: str, arch: int) -> str:
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [_nvidia_bin("ptxas"), "-v", f"--gpu-name={gpu}", path, "-o", path + ".o"],
            capture_output=True,
            text=True,
            check=True,
        )
    return out.stdout + out.stderr


def _serve(requests, replies) -> None:
    """Worker loop: one JSON request per line in, one JSON reply per line out."""
    specs: dict[str, dict[str, dict[str, Any]]] = {}

    def module_specs(module: str) -> dict[str, dict[str, Any]]:
        if module not in specs:
            specs[module] = {s["name"]: s for s in _load_specs(module)}
        return specs[module]

    for line in requests:
        try:
            req = json.loads(line)
            if req["op"] == "list":
                summaries = [_summary(req["module"], s) for s in module_specs(req["module"]).values()]
                reply = {"ok": True, "specs": summaries}
            elif req["op"] == "jit_check":  # the specs vs what the JIT compiles for the real launchers
                import jit_capture

                module = req["module"].rsplit(".", 1)[-1]
                reply = {"ok": True, "result": jit_capture.check_module(module, req.get("drop_hint"))}
            elif req["op"] == "build":
                table = module_specs(req["module"])
                if req["name"] not in table:
                    raise KeyError(f"{req['module']} has no spec {req['name']!r}; it has {sorted(table)}")
                reply = {"ok": True, "result": _build_local(table[req["name"]], int(req["arch"]))}
            else:
                raise ValueError(f"unknown op {req['op']!r}")
        except BaseException as e:
            kind = "build" if isinstance(e, BuildError) else "error"
            reply = {"ok": False, "kind": kind, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# ------------------------------------------------------------------------------------------------ caller side
class _Worker:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )

    def ask(self, timeout: float = BUILD_TIMEOUT_S, **req: Any) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise RuntimeError(f"aot worker exited with code {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise TimeoutError(f"aot worker gave no answer to {req} within {timeout:.0f} s (killed)")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"aot worker died on {req} (exit code {self.proc.wait()})")
        reply = json.loads(line)
        if not reply["ok"]:
            exc = BuildError if reply["kind"] == "build" else RuntimeError
            raise exc(f"{reply['error']}\n--- worker traceback ---\n{reply['trace']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


_worker: _Worker | None = None
_lists: dict[str, list[dict[str, Any]]] = {}
_builds: dict[tuple[str, str, int], dict[str, Any]] = {}


def _get_worker() -> _Worker:
    global _worker
    if _worker is None or _worker.proc.poll() is not None:
        _worker = _Worker()
        atexit.register(_worker.close)
    return _worker


def list_specs(module: str) -> list[dict[str, Any]]:
    """Summaries (module, name, kernel, dtype, constexprs, num_warps, num_stages) of `module`'s specs as a GPU process
    sees them. Raises what importing the module or validating its specs raised."""
    if module not in _lists:
        _lists[module] = _get_worker().ask(op="list", module=module)["specs"]
    return _lists[module]


def jit_check(module: str, drop_hint: str | None = None) -> dict[str, Any]:
    """tests/jit_capture.check_module(module, drop_hint), run in the worker (the JIT's launch path, not the
    interpreter's): {"cases", "compiles", "missing", "unused"}."""
    return _get_worker().ask(op="jit_check", module=module, drop_hint=drop_hint)["result"]


def build(spec: dict[str, Any], arch: int) -> dict[str, Any]:
    """Build one spec for sm_<arch> -> dict(name, arch, registers, stack_bytes, spill_stores, spill_loads,
    shared_bytes, ok, ...) plus kernel, dtype, num_warps, num_stages, static_shared_bytes, local_bytes, problems,
    build_s. `spec` is a gpu_build_specs() dict or a list_specs() summary. Raises BuildError if it does not compile.
    Cached per process."""
    if arch not in SHARED_LIMIT:
        raise ValueError(f"arch must be one of {sorted(SHARED_LIMIT)} (sm_90 H100, sm_80 A100), got {arch!r}")
    key = (spec_module(spec), spec["name"], int(arch))
    if key not in _builds:
        _builds[key] = _get_worker().ask(op="build", module=key[0], name=key[1], arch=key[2])["result"]
    return _builds[key]


# ------------------------------------------------------------------------------------------------ self-test kernels
# Deliberately small (each builds in 1-3 s): a pipelined GEMM tile c = a @ b, fp16 operands, fp32 accumulator.
# "fits" (64x64x32, w4 s2) passes every check; "spills" keeps a 128x256 fp32 accumulator on 4 warps (256 values per
# thread > 255 registers); "big_smem" (128x128x128, w8 s5) needs ~256-320 KB of operand ring buffers.
def _selftest_specs() -> list[dict[str, Any]]:
    import triton
    import triton.language as tl

    @triton.jit
    def aot_selftest_mm(a_ptr, b_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # a [M, K] fp16, b [K, N] fp16, c [M, N] fp16; K a multiple of BK; grid (cdiv(M, BM), cdiv(N, BN)).
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        a_p = a_ptr + rm[:, None] * K + rk[None, :]
        b_p = b_ptr + rk[:, None] * N + rn[None, :]
        acc = tl.zeros((BM, BN), tl.float32)
        for _ in range(0, K, BK):
            acc += tl.dot(tl.load(a_p), tl.load(b_p))
            a_p += BK
            b_p += BK * N
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc.to(tl.float16), mask=mask)

    sig = {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32"}

    def spec(name, bm, bn, bk, warps, stages):
        return dict(
            name=name,
            fn=aot_selftest_mm,
            signature=sig,
            constexprs=dict(BM=bm, BN=bn, BK=bk),
            num_warps=warps,
            num_stages=stages,
            divisible_by_16=["K", "N"],
        )

    @triton.jit
    def aot_selftest_fma(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        # a [BM, K] fp32, b [K, BN] fp32, c [BM, BN] fp32; one tile, fp32 "ieee" dot: FMA units, no tensor cores.
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        rk = tl.arange(0, BK)
        a_p = a_ptr + rm[:, None] * K + rk[None, :]
        b_p = b_ptr + rk[:, None] * BN + rn[None, :]
        acc = tl.zeros((BM, BN), tl.float32)
        for _ in range(0, K, BK):
            acc = tl.dot(tl.load(a_p), tl.load(b_p), acc, input_precision="ieee")
            a_p += BK
            b_p += BK * BN
        tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)

    # "fma" (32x32x16, w4, s1): the FMA route of tl.dot, for the SASS report's FFMA counting (tests/test_sass.py)
    fma = dict(
        name="fma",
        fn=aot_selftest_fma,
        signature={"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "K": "i32"},
        constexprs=dict(BM=32, BN=32, BK=16),
        num_warps=4,
        num_stages=1,
        divisible_by_16=["K"],
    )
    gemms = [spec("fits", 64, 64, 32, 4, 2), spec("spills", 128, 256, 32, 4, 2), spec("big_smem", 128, 128, 128, 8, 5)]
    return [*gemms, fma]


def _worker_main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("the aot worker must run with TRITON_INTERPRET unset")
    # A private, fresh triton cache (set before triton is imported): every build really runs ptxas.
    cache_dir = tempfile.mkdtemp(prefix="fastmixer-aot-")
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    parent = os.getppid()

    def orphan_watch() -> None:  # the caller was killed: stop now, mid-build if need be
        while os.getppid() == parent:
            time.sleep(1.0)
        shutil.rmtree(cache_dir, ignore_errors=True)
        os._exit(1)

    import threading

    threading.Thread(target=orphan_watch, daemon=True).start()
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints (compiler, ptxas) go to stderr, never into the reply stream
    sys.stdout = sys.stderr
    try:
        _serve(sys.stdin, replies)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        for s in list_specs(SELFTEST_MODULE):
            for arch in ARCHS:
                r = build(s, arch)
                print(
                    f"{r['name']:>9} sm_{arch}: regs {r['registers']:3d} stack {r['stack_bytes']:5d} spill "
                    f"{r['spill_stores']:5d}/{r['spill_loads']:5d} shared {r['shared_bytes'] / 1024:6.1f} KB "
                    f"{r['build_s']:5.2f} s {'ok' if r['ok'] else r['problems']}",
                )
