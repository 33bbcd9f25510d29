"""Ahead-of-time builds for H100 (sm_90) and A100 (sm_80), no GPU needed: every spec of every kernel module (each
kernel x autotune config x dtype, as a GPU process lists them) compiles, does not spill, and fits the shared memory
and register file of one block. See tests/aot.py for how the builds are made and measured."""

import aot
import pytest

pytestmark = pytest.mark.gpu_build


def _kernel_params() -> list:
    # One test per (module, spec, arch), listed by the build worker (a GPU process's view of the specs).
    params = []
    for module in aot.KERNEL_MODULES:
        short = module.rsplit(".", 1)[-1]
        try:
            specs = aot.list_specs(module)
        except Exception as e:
            params.append(pytest.param(module, None, None, repr(e), id=f"{short}-unavailable"))
            continue
        for spec in specs:
            for arch in aot.ARCHS:
                params.append(pytest.param(module, spec, arch, None, id=f"{short}:{spec['name']}-sm{arch}"))
    return params


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ != "test_kernel_builds":
        return
    if "not gpu_build" in (metafunc.config.getoption("markexpr", "") or ""):
        # Deselected anyway: do not start the build worker (it imports every kernel module) just to list specs.
        params = [pytest.param(None, None, None, None, id="deselected")]
    else:
        params = _kernel_params()
    metafunc.parametrize(("module", "spec", "arch", "error"), params)


def test_kernel_builds(module, spec, arch, error):
    if error is not None:
        pytest.fail(f"{module}.gpu_build_specs() is unavailable: {error}")
    res = aot.build(spec, arch)
    print(res)
    where = f"{module}:{spec['name']} on sm_{arch}"
    if not spec.get("must_fit", True) and not res["ok"]:
        # A size the current kernels are known not to serve (e.g. token mixing at 384/448 px): reported, not failed.
        pytest.xfail(f"{where} does not fit yet: {'; '.join(res['problems'])}")
    assert res["spill_stores"] == 0 and res["spill_loads"] == 0, f"{where} spills: {res}"
    assert res["stack_bytes"] == 0 and res["local_bytes"] == 0, f"{where} uses stack/local memory: {res}"
    shared = res["shared_bytes"] + res["static_shared_bytes"]
    assert shared <= aot.SHARED_LIMIT[arch], f"{where}: {shared / 1024:.1f} KB shared > {aot.SHARED_LIMIT[arch]} B"
    assert res["ok"], f"{where}: {res['problems']}"


# ------------------------------------------------------------------------------------------------ the checker itself
# Real builds of the small GEMM in aot._selftest_specs: the checks must pass a fitting kernel and catch a spilling one
# and one that overflows shared memory (otherwise the tests above could not fail).
def _selftest_spec(name: str) -> dict:
    return next(s for s in aot.list_specs(aot.SELFTEST_MODULE) if s["name"] == name)


def _selftest(name: str, arch: int) -> dict:
    return aot.build(_selftest_spec(name), arch)


def test_checker_passes_a_fitting_kernel():
    res = _selftest("fits", 90)
    assert res["ok"], res["problems"]
    assert 0 < res["registers"] <= 255
    assert res["shared_bytes"] > 0  # a pipelined dot stages its operands in shared memory
    assert aot.build(_selftest_spec("fits"), 90) is res  # cached per process


def test_checker_catches_spills():
    res = _selftest("spills", 80)
    assert res["spill_stores"] > 0 and res["stack_bytes"] > 0
    assert not res["ok"] and any("spill" in p for p in res["problems"])


def test_checker_catches_shared_overflow():
    res = _selftest("big_smem", 80)
    assert res["shared_bytes"] > aot.SHARED_LIMIT[80]
    assert not res["ok"] and any("shared" in p for p in res["problems"])


def test_build_errors_name_the_spec():
    with pytest.raises(RuntimeError, match="no spec 'nope'"):
        aot.build({"module": aot.SELFTEST_MODULE, "name": "nope"}, 90)
    with pytest.raises(ValueError, match="arch must be one of"):
        aot.build(_selftest_spec("fits"), 75)


# ------------------------------------------------------------------------------------------------ parsing and limits
CUOBJDUMP = """
Resource usage:
 Common:
  GLOBAL:0
 Function other_kernel:
  REG:40 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:544 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function mm:
  REG:255 STACK:104 SHARED:1024 LOCAL:8 CONSTANT[0]:584 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
PTXAS = """ptxas info    : Compiling entry function 'mm' for 'sm_90a'
ptxas info    : Function properties for mm
    104 bytes stack frame, 112 bytes spill stores, 96 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 104 bytes cumulative stack size
"""


def test_parsers():
    assert aot.parse_resource_usage(CUOBJDUMP, "mm") == dict(
        registers=255, stack_bytes=104, static_shared_bytes=1024, local_bytes=8
    )
    assert aot.parse_resource_usage(CUOBJDUMP, "other_kernel")["registers"] == 40
    assert aot.parse_ptxas_log(PTXAS, "mm") == dict(spill_stores=112, spill_loads=96)
    with pytest.raises(ValueError, match="no function 'absent'"):
        aot.parse_resource_usage(CUOBJDUMP, "absent")
    with pytest.raises(ValueError, match="Function properties for absent"):
        aot.parse_ptxas_log(PTXAS, "absent")


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_limits(arch):
    limit = aot.SHARED_LIMIT[arch]
    clean = dict(arch=arch, registers=128, num_warps=4, spill_stores=0, spill_loads=0, stack_bytes=0, local_bytes=0)
    clean.update(shared_bytes=0, static_shared_bytes=0)
    assert aot.check_limits(clean) == []
    assert aot.check_limits({**clean, "shared_bytes": limit - 1024, "static_shared_bytes": 1024}) == []
    (over,) = aot.check_limits({**clean, "shared_bytes": limit - 1023, "static_shared_bytes": 1024})
    assert "shared" in over
    (regs,) = aot.check_limits({**clean, "registers": 255, "num_warps": 16})  # 255 x 512 threads > 64 K registers
    assert "registers" in regs
    assert len(aot.check_limits({**clean, "spill_stores": 4, "stack_bytes": 8})) == 2
