"""Read a kernel's SASS (`cuobjdump -sass` or `nvdisasm -c` text) and its resources: loops, MMA mix, operand paths,
issue-vs-MMA balance of the main loop, and theoretical occupancy on H100/H200 (sm_90) and A100 (sm_80).

Pure functions over text and numbers (no triton import): tests/aot.py calls `analyze` and `occupancy` after each
ahead-of-time build, bench/kernel_resources.py turns the results into the kernel report.

How the SASS is read
- Instructions are the `/*addr*/ [@pred] OPCODE operands ;` lines of one function (addresses in bytes, 16 per
  instruction on sm_80/sm_90). Branch targets are hex addresses (cuobjdump) or labels (nvdisasm).
- A loop is a backward branch: a BRA whose target lies before it. Its body is [target, branch] (static: an if/else
  inside the body counts both arms). Backward branches to one target merge into one loop. A range that holds an
  unpredicated EXIT or RET is not a loop body but an out-of-line block (placed after the function's exit) jumping
  back into the code: it is listed with natural=False and never chosen as the main loop.
- The main loop: among natural loops holding tensor MMA (HGMMA/HMMA/IMMA/DMMA) the innermost ones, then the one with
  the most MMA FLOPs per iteration. A kernel without tensor MMA: the same rule over FFMA (the FMA route of tl.dot),
  or, for a kernel with no dot at all, the natural loop with the most instructions. No loop: main_loop is None.

FLOP counting (per CTA, per main-loop iteration). The SASS stream is executed by every warp of the CTA.
- HGMMA.MxNxK (wgmma) is a warpgroup instruction: the 4 warps of a warpgroup each issue it and together compute ONE
  MxNxK product, so a CTA of W warps does count x 2*M*N*K x W/4.
- HMMA/IMMA/DMMA (mma.sync) are warp instructions: each warp computes its own MxNxK, count x 2*M*N*K x W
  (m16n8k16 = 4096 FLOP, m16n8k8 = 2048).
- FFMA: 32 lanes x 2 FLOP = 64 per warp instruction, count x 64 x W.
Issue: a CTA's W warps spread over the SM's 4 sub-partitions, each issuing one warp-instruction per cycle, so one
iteration costs instructions x max(W, 4)/4 issue cycles on the busiest sub-partition (fewer than 4 warps: 1 warp per
used sub-partition). MMA cycles: CTA FLOPs per iteration / dense FLOP per SM per cycle of that MMA kind (ARCH below).
Both scale alike with the CTAs resident on an SM, so issue_over_mma > 1 means the loop cannot keep the MMA units busy.
"""

from __future__ import annotations

import re
from typing import Any

# ------------------------------------------------------------------------------------------------ per-arch constants
# Sources:
#  - CUDA C++ Programming Guide, "Compute Capabilities", table "Technical Specifications per Compute Capability"
#    (8.0 and 9.0): 64 K 32-bit registers per SM, 255 per thread, 64 resident warps and 32 resident blocks per SM;
#    shared memory per SM 164 KB (8.0) / 228 KB (9.0), per block at most 163 KB / 227 KB; "1 KB of shared memory is
#    reserved for system use" per block (cudaDevAttrReservedSharedMemoryPerBlock = 1024).
#  - CUDA Occupancy Calculator / cuda_occupancy.h (cudaOccMaxBlocksPerSMRegsLimit): registers are allocated per warp
#    in units of 256 (regs/thread rounded up to a multiple of 8), per sub-partition (4 per SM, 16 K registers each);
#    shared memory in units of 128 bytes.
#  - Dense tensor throughput per SM per clock, from the datasheet peaks divided by SMs x boost clock:
#    H100 SXM 989.4 TFLOP/s bf16 dense / (132 SMs x 1.83 GHz) = 4096 (tf32 half, fp8/int8 double, fp64 tensor 67 TF
#    -> 256); A100 312 TFLOP/s bf16 / (108 x 1.41 GHz) = 2048 (tf32 half, int8 double, fp64 tensor 19.5 TF -> 128).
#    FP32 FFMA: 128 lanes per SM per clock = 256 FLOP on both. H200 has H100's SMs (same per-SM numbers).
# What sm_90 and sm_80 share: register file, allocation units, CTA and warp limits.
_SM_COMMON = dict(
    regs_per_sm=65536,
    regs_per_block=65536,
    reg_alloc_unit_per_warp=256,
    max_regs_per_thread=255,
    sub_partitions=4,
    shared_reserved_per_cta_bytes=1024,
    shared_alloc_unit_bytes=128,
    max_warps_per_sm=64,
    max_ctas_per_sm=32,
    max_threads_per_block=1024,
)


def _sm(name: str, shared_kb: int, static_includes_reserved: bool, **mma_flop_per_cycle_per_sm: int) -> dict[str, Any]:
    """One arch: _SM_COMMON, shared memory per SM (per block: 1 KB less, the system reservation), and dense MMA
    FLOPs per SM per clock by operand type."""
    return dict(
        _SM_COMMON,
        name=name,
        shared_per_sm_bytes=shared_kb * 1024,
        shared_per_block_max_bytes=(shared_kb - 1) * 1024,
        static_includes_reserved=static_includes_reserved,
        mma_flop_per_cycle_per_sm=mma_flop_per_cycle_per_sm,
    )


# static_includes_reserved: sm_90 cubins show the 1 KB reservation as static shared memory (cuobjdump reports
# SHARED:1024 and nvdisasm a `.nv.reservedSmem.offset0` symbol for every Triton kernel here, whose PTX declares only
# extern (dynamic) shared memory); sm_80 cubins report SHARED:0. So on sm_90 that 1 KB is not added a second time.
ARCH: dict[int, dict[str, Any]] = {
    90: _sm(
        "H100/H200 (sm_90)", 228, True, fp16=4096, bf16=4096, tf32=2048, fp8=8192, int8=8192, fp64=256, ffma_fp32=256
    ),
    80: _sm("A100 (sm_80)", 164, False, fp16=2048, bf16=2048, tf32=1024, int8=4096, fp64=128, ffma_fp32=256),
}

TENSOR_MMA = ("HGMMA", "HMMA", "IMMA", "DMMA")
MMA_KINDS = (*TENSOR_MMA, "FFMA")

# ------------------------------------------------------------------------------------------------ parsing
# "/*04f0*/   @!P2 BRA 0x4f50 ;   /* 0x... */" (cuobjdump) or "/*04f0*/  @!P2 BRA `(.L_x_17) ;" (nvdisasm)
_INSN = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+\{?\s*(.*?)\s*;")
_PRED = re.compile(r"^@(!?)(U?P[T0-9]+)\s+")
_LABEL = re.compile(r"^\s*(\.L\w+|[A-Za-z_$][\w$.]*):\s*$")
_CUOBJ_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_NVDIS_FUNC = re.compile(r"^\s*\.text\.(\S+):\s*$")
_HEX = re.compile(r"0x([0-9a-fA-F]+)")
_BT_LABEL = re.compile(r"`\(([^)]+)\)")
_HGMMA_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
# mma.sync shape tokens as SASS spells them (M, N, K)
_SYNC_SHAPES = {
    "16816": (16, 8, 16),
    "1688": (16, 8, 8),
    "16832": (16, 8, 32),
    "16864": (16, 8, 64),
    "1684": (16, 8, 4),
    "884": (8, 8, 4),
    "8816": (8, 8, 16),
    "8832": (8, 8, 32),
}


def parse(text: str, kernel: str | None = None) -> list[dict[str, Any]]:
    """SASS text -> instructions of one function, in address order: dicts with addr (int, bytes), op (full opcode,
    e.g. "HGMMA.64x128x16.F32.BF16"), base ("HGMMA"), operands (text), predicated (bool), target (branch target
    address or None). `kernel`: function name to pick when the text holds several (default: the first)."""
    if not isinstance(text, str):
        raise TypeError(f"SASS text must be a str, got {type(text).__name__}")
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        m = _CUOBJ_FUNC.match(line) or _NVDIS_FUNC.match(line)
        if m:
            sections.append((m.group(1), []))
        else:
            sections[-1][1].append(line)
    named = [s for s in sections if s[0] is not None] or sections
    if kernel is not None:
        picked = [s for s in named if s[0] == kernel]
        if not picked:
            raise ValueError(f"SASS holds no function {kernel!r}; it has {[s[0] for s in named]}")
        named = picked
    lines = named[0][1]

    insns: list[dict[str, Any]] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    for line in lines:
        lm = _LABEL.match(line)
        if lm:
            pending.append(lm.group(1))
            continue
        m = _INSN.match(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        for name in pending:
            labels[name] = addr
        pending = []
        body = m.group(2)
        pm = _PRED.match(body)
        predicated = pm is not None and pm.group(2) not in ("PT", "UPT")  # @PT / @!PT: always / never, not a test
        if pm:
            body = body[pm.end() :]
        op, _, operands = body.partition(" ")
        insns.append(
            dict(addr=addr, op=op, base=op.split(".")[0], operands=operands.strip(), predicated=predicated, target=None)
        )
    for name in pending:  # a label after the last instruction (end of function)
        labels[name] = insns[-1]["addr"] + 16 if insns else 0
    for ins in insns:
        if ins["base"] in ("BRA", "JMP"):
            bt = _BT_LABEL.search(ins["operands"])
            if bt:
                ins["target"] = labels.get(bt.group(1))
            else:
                hx = _HEX.findall(ins["operands"])
                ins["target"] = int(hx[-1], 16) if hx else None
    if not insns:
        raise ValueError("no SASS instructions found (expected '/*addr*/ OPCODE ... ;' lines)")
    return insns


def mma_shape(op: str) -> tuple[str, int, int, int] | None:
    """(kind, M, N, K) of a matrix instruction ("HGMMA.64x128x16.F32.BF16" -> ("HGMMA", 64, 128, 16),
    "HMMA.16816.F32.BF16" -> ("HMMA", 16, 8, 16)), None for anything else."""
    parts = op.split(".")
    kind = parts[0]
    if kind not in TENSOR_MMA or len(parts) < 2:
        return None
    if kind == "HGMMA":
        m = _HGMMA_SHAPE.match(parts[1])
        return (kind, *map(int, m.groups())) if m else None
    dims = _SYNC_SHAPES.get(parts[1])
    return (kind, *dims) if dims else None


def mma_dtype(op: str) -> str:
    """Input type of an MMA opcode, the key into ARCH[...]["mma_flop_per_cycle_per_sm"]."""
    parts = set(op.split(".")[1:])
    kind = op.split(".")[0]
    if kind == "FFMA":
        return "ffma_fp32"
    if kind == "DMMA":
        return "fp64"
    if kind == "IMMA" or parts & {"S8", "U8", "S4", "U4"}:
        return "int8"
    if "BF16" in parts:
        return "bf16"
    if "TF32" in parts:
        return "tf32"
    if parts & {"E4M3", "E5M2"}:
        return "fp8"
    return "fp16"  # HMMA.16816.F32 / HGMMA.64xNx16.F32: fp16 operands are the unsuffixed form


def mma_flops(op: str, num_warps: int) -> int:
    """FLOPs one issue of `op` performs for a whole CTA of `num_warps` warps (see the module docstring)."""
    if op.split(".")[0] == "FFMA":
        return 64 * num_warps
    shape = mma_shape(op)
    if shape is None:
        return 0
    kind, m, n, k = shape
    per = 2 * m * n * k
    if kind == "HGMMA":
        if num_warps % 4:
            raise ValueError(f"HGMMA needs whole warpgroups, got num_warps={num_warps}")
        return per * num_warps // 4
    return per * num_warps


# ------------------------------------------------------------------------------------------------ loops
def find_loops(insns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Backward branches -> loops: dicts start, end (addresses of the first and of the closing branch instruction),
    first, last (indices into insns), conditional (closing branch predicated), natural (no unpredicated EXIT/RET in
    the range), depth (number of enclosing natural loops). A branch to itself (the `BRA self` trap after EXIT) is not
    a loop."""
    index = {ins["addr"]: i for i, ins in enumerate(insns)}
    by_start: dict[int, dict[str, Any]] = {}
    for i, ins in enumerate(insns):
        t = ins["target"]
        if t is None or t >= ins["addr"] or t not in index:
            continue
        loop = by_start.setdefault(t, dict(start=t, first=index[t], end=ins["addr"], last=i, conditional=False))
        if ins["addr"] >= loop["end"]:
            loop.update(end=ins["addr"], last=i)
        loop["conditional"] |= ins["predicated"]
    loops = sorted(by_start.values(), key=lambda lp: (lp["start"], -lp["end"]))
    for lp in loops:
        body = insns[lp["first"] : lp["last"] + 1]
        lp["natural"] = not any(i["base"] in ("EXIT", "RET") and not i["predicated"] for i in body)
    for lp in loops:
        lp["depth"] = sum(1 for o in loops if o["natural"] and _contains(o, lp))
    return loops


def _contains(outer: dict[str, Any], inner: dict[str, Any]) -> bool:
    return outer is not inner and outer["start"] <= inner["start"] and inner["end"] <= outer["end"]


def _counts(insns: list[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(MMA_KINDS, 0)
    for ins in insns:
        if ins["base"] in counts:
            counts[ins["base"]] += 1
    return counts


def _shapes(insns: list[dict[str, Any]]) -> dict[str, int]:
    shapes: dict[str, int] = {}
    for ins in insns:
        if ins["base"] in TENSOR_MMA:
            shapes[ins["op"]] = shapes.get(ins["op"], 0) + 1
    return shapes


def _width(op: str) -> str:
    """Access width in bits of a load/store opcode: LDG.E.128 -> "128", LDG.E -> "32", LDG.E.U16 -> "16"."""
    parts = op.split(".")
    for p in reversed(parts[1:]):
        if p in ("128", "64", "32"):
            return p
        if p in ("U16", "S16"):
            return "16"
        if p in ("U8", "S8"):
            return "8"
    return "32"


def operand_paths(insns: list[dict[str, Any]]) -> dict[str, Any]:
    """Memory instructions of a code range: UTMALDG (TMA), LDGSTS (cp.async), plain LDG (by width in bits), LDS, LDSM,
    STS, STG counts, plus LDGSTS_widths / LDG_widths."""
    out: dict[str, Any] = dict(UTMALDG=0, LDGSTS=0, LDGSTS_widths={}, LDG=0, LDG_widths={}, LDS=0, LDSM=0, STS=0, STG=0)
    for ins in insns:
        b = ins["base"]
        if b in ("UTMALDG", "UBLKCP"):
            out["UTMALDG"] += 1
        elif b in ("LDGSTS", "LDG"):
            out[b] += 1
            w = out[f"{b}_widths"]
            key = _width(ins["op"])
            w[key] = w.get(key, 0) + 1
        elif b in ("LDS", "LDSM", "STS", "STG"):
            out[b] += 1
    return out


def _describe_paths(ops: dict[str, Any]) -> list[str]:
    def widths(w: dict[str, int]) -> str:
        return ", ".join(f"{k}b x{v}" for k, v in sorted(w.items(), key=lambda kv: -int(kv[0])))

    out = []
    if ops["UTMALDG"]:
        out.append(f"TMA x{ops['UTMALDG']}")
    if ops["LDGSTS"]:
        out.append(f"cp.async({widths(ops['LDGSTS_widths'])})")
    if ops["LDG"]:
        out.append(f"LDG({widths(ops['LDG_widths'])})")
    for key in ("LDSM", "LDS", "STS", "STG"):
        if ops[key]:
            out.append(f"{key} x{ops[key]}")
    return out


def _wgmma_waits(insns: list[dict[str, Any]]) -> list[int]:
    waits = []
    for ins in insns:
        if ins["op"].startswith("WARPGROUP.DEPBAR"):
            hx = _HEX.findall(ins["operands"])
            waits.append(int(hx[-1], 16) if hx else 0)
    return waits


def _mma_work(insns: list[dict[str, Any]], kinds: tuple[str, ...], num_warps: int) -> int:
    return sum(mma_flops(ins["op"], num_warps) for ins in insns if ins["base"] in kinds)


def analyze(
    text: str, arch: int, num_warps: int, kernel: str | None = None, ffma_is_mma: bool = True
) -> dict[str, Any]:
    """The SASS report of one kernel (JSON-serialisable; keys in bench/README.md and the module docstring):
    whole-kernel instruction and MMA counts, every loop, and the main loop's MMA mix, operand paths, wgmma waits,
    instructions per iteration, CTA MMA FLOPs per iteration and the issue-vs-MMA cycles.
    ffma_is_mma: without tensor MMA, treat FFMA as the matrix work (a tl.dot on the FMA route); False for kernels
    with no dot, whose FFMA is elementwise math (their main loop is then the largest loop, with no MMA figures)."""
    if arch not in ARCH:
        raise ValueError(f"arch must be one of {sorted(ARCH)}, got {arch!r}")
    if not isinstance(num_warps, int) or num_warps < 1:
        raise ValueError(f"num_warps must be a positive int, got {num_warps!r}")
    insns = parse(text, kernel)
    loops = find_loops(insns)
    counts = _counts(insns)
    kinds: tuple[str, ...] = TENSOR_MMA if any(counts[k] for k in TENSOR_MMA) else ("FFMA",) if ffma_is_mma else ()
    for lp in loops:
        body = insns[lp["first"] : lp["last"] + 1]
        lp["instructions"] = len(body)
        lp["counts"] = _counts(body)
        lp["mma_flops_per_cta"] = _mma_work(body, kinds, num_warps)
    main = _main_loop(loops)
    report: dict[str, Any] = dict(
        instructions=sum(1 for i in insns if i["base"] != "NOP"),
        counts=counts,
        shapes=_shapes(insns),
        loops=[
            {k: lp[k] for k in ("start", "end", "instructions", "depth", "natural", "counts", "mma_flops_per_cta")}
            for lp in loops
        ],
        main_loop=None,
    )
    if main is None:
        return report
    body = insns[main["first"] : main["last"] + 1]
    lc = main["counts"]
    present = [k for k in kinds if lc[k]]
    rates = ARCH[arch]["mma_flop_per_cycle_per_sm"]
    flops_by_kind = dict.fromkeys(present, 0)
    cycles_by_kind = dict.fromkeys(present, 0.0)
    dtypes = []
    for ins in body:
        if ins["base"] in kinds:
            dt = mma_dtype(ins["op"])
            if dt not in rates:
                raise ValueError(f"no sm_{arch} throughput known for {ins['op']} ({dt})")
            flops = mma_flops(ins["op"], num_warps)
            flops_by_kind[ins["base"]] += flops
            cycles_by_kind[ins["base"]] += flops / rates[dt]
            if dt not in dtypes:
                dtypes.append(dt)
    mma_cycles = sum(cycles_by_kind.values())
    issue = main["instructions"] * max(num_warps, 4) / 4
    ops = operand_paths(body)
    waits = _wgmma_waits(body)
    report["main_loop"] = dict(
        start=main["start"],
        end=main["end"],
        instructions=main["instructions"],
        counts=lc,
        shapes=_shapes(body),
        mma_kind="+".join(present) or None,  # "HGMMA", "HMMA", "HGMMA+HMMA" (a loop with both), "FFMA", None
        mma_dtype="+".join(dtypes) or None,
        mma_flops_by_kind=flops_by_kind,
        mma_cycles_by_kind={k: round(v, 2) for k, v in cycles_by_kind.items()},
        operands=ops,
        operand_paths=_describe_paths(ops),
        wgmma_waits=waits,
        # wgmma is asynchronous: "WARPGROUP.DEPBAR.LE gsb0, 0x0" inside the loop drains every MMA group each step, so
        # no MMA overlaps the next step's loads/issue. mma.sync/FFMA have nothing to wait for (n/a -> None).
        waits_each_mma=(0 in waits) if lc["HGMMA"] else None,
        mma_flops_per_cta=main["mma_flops_per_cta"],
        mma_cycles=round(mma_cycles, 2),
        issue_cycles=round(issue, 2),
        issue_over_mma=round(issue / mma_cycles, 3) if mma_cycles else None,
    )
    return report


def _main_loop(loops: list[dict[str, Any]]) -> dict[str, Any] | None:
    natural = [lp for lp in loops if lp["natural"]]
    with_mma = [lp for lp in natural if lp["mma_flops_per_cta"]]
    if not with_mma:
        return max(natural, key=lambda lp: (lp["instructions"], -lp["start"])) if natural else None
    innermost = [lp for lp in with_mma if not any(_contains(lp, o) for o in with_mma)]
    return max(innermost, key=lambda lp: (lp["mma_flops_per_cta"], -lp["start"]))


# ------------------------------------------------------------------------------------------------ occupancy
def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(
    arch: int, registers: int, num_warps: int, shared_bytes: int, static_shared_bytes: int = 0
) -> dict[str, Any]:
    """Theoretical occupancy of one kernel on sm_<arch> (CUDA occupancy-calculator rules, constants in ARCH).
    registers: per thread (cuobjdump REG); shared_bytes: dynamic shared memory per CTA (triton metadata.shared);
    static_shared_bytes: cuobjdump SHARED. The 1 KB system reservation per CTA is added unless the arch's cubins
    already count it as static (sm_90). Returns ctas_per_sm, warps_per_sm, occupancy_pct, limiter ("registers",
    "shared", "warps", "ctas", several joined by "+" when tied, or "does_not_launch"), limits (CTAs/SM each resource
    alone allows), regs_per_warp, shared_per_cta_bytes (what one CTA takes of the SM), and problems (why it cannot
    launch)."""
    if arch not in ARCH:
        raise ValueError(f"arch must be one of {sorted(ARCH)}, got {arch!r}")
    for name, v in (
        ("registers", registers),
        ("num_warps", num_warps),
        ("shared_bytes", shared_bytes),
        ("static_shared_bytes", static_shared_bytes),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if num_warps < 1:
        raise ValueError(f"num_warps must be >= 1, got {num_warps}")
    a = ARCH[arch]
    reserved = a["shared_reserved_per_cta_bytes"]
    user_shared = shared_bytes + static_shared_bytes
    if a["static_includes_reserved"]:
        user_shared -= min(static_shared_bytes, reserved)
    regs_per_warp = _round_up(max(registers, 1) * 32, a["reg_alloc_unit_per_warp"])
    smem = _round_up(user_shared, a["shared_alloc_unit_bytes"]) + reserved
    problems = []
    if registers > a["max_regs_per_thread"]:
        problems.append(f"{registers} registers/thread > {a['max_regs_per_thread']}")
    if num_warps * 32 > a["max_threads_per_block"]:
        problems.append(f"{num_warps * 32} threads > {a['max_threads_per_block']} per block")
    # the per-block register check assumes all sub-partitions allocate together: warps rounded up to a multiple of 4
    if regs_per_warp * _round_up(num_warps, a["sub_partitions"]) > a["regs_per_block"]:
        problems.append(f"{regs_per_warp} registers/warp x {num_warps} warps > {a['regs_per_block']} per block")
    if user_shared > a["shared_per_block_max_bytes"]:
        problems.append(f"shared {user_shared} B > {a['shared_per_block_max_bytes']} B per block")
    warps_per_subpartition = (a["regs_per_sm"] // a["sub_partitions"]) // regs_per_warp
    limits = dict(
        registers=(warps_per_subpartition * a["sub_partitions"]) // num_warps,
        shared=a["shared_per_sm_bytes"] // smem,
        warps=a["max_warps_per_sm"] // num_warps,
        ctas=a["max_ctas_per_sm"],
    )
    if problems:
        ctas, limiter = 0, "does_not_launch"
    else:
        ctas = min(limits.values())
        limiter = "+".join(k for k, v in limits.items() if v == ctas)
    return dict(
        ctas_per_sm=ctas,
        warps_per_sm=ctas * num_warps,
        occupancy_pct=round(100.0 * ctas * num_warps / a["max_warps_per_sm"], 1),
        limiter=limiter,
        limits=limits,
        regs_per_warp=regs_per_warp,
        shared_per_cta_bytes=smem,
        problems=problems,
    )
