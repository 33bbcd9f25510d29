"""The AOT build specs are the code the JIT runs: every kernel module's real launchers, run at the shapes its
gpu_build_specs() names through Triton's own launch path (tests/jit_capture.py: JITFunction.run with a stand-in sm_90
driver, each autotune config the early prune keeps), hand the compiler exactly the (signature, constexprs,
tt.divisibility attrs, num_warps, num_stages) of one of the module's specs, and every spec is such a launch."""

import aot
import pytest

MODULES = [m.rsplit(".", 1)[-1] for m in aot.KERNEL_MODULES]


@pytest.mark.parametrize("module", MODULES)
def test_specs_are_what_the_jit_compiles(module):
    result = aot.jit_check(f"fastmixer.kernels.{module}")
    assert result["cases"] > 0 and result["compiles"] >= result["cases"]
    assert not result["missing"], "launches no spec builds:\n" + "\n".join(result["missing"])
    assert not result["unused"], "specs no launch compiles:\n" + "\n".join(result["unused"])


@pytest.mark.parametrize(("module", "arg"), [("channel_mix", "M"), ("token_mix_bwd", "C"), ("norm_pool", "X")])
def test_the_check_catches_a_missing_hint(module, arg):
    # Specs that forget the JIT's divisibility hint on one argument (as the hand-written backward specs once did)
    # describe code that never runs: the check must say so, naming the attrs.
    result = aot.jit_check(f"fastmixer.kernels.{module}", drop_hint=arg)
    assert result["missing"] and all("attrs=" in m for m in result["missing"])
    assert result["unused"]


@pytest.mark.parametrize("module", ["token_mix", "token_mix_bwd"])
def test_every_token_count_is_in_the_build_matrix(module):
    # 224 / 384 / 448 px at patches 32, 16, 14: S in {49, 196, 256, 576, 784, 1024}. S is a constexpr of the token-mix
    # forward and of the backward's two token GEMMs, so each needs its own build.
    specs = aot.list_specs(f"fastmixer.kernels.{module}")
    built = {s["constexprs"].get("S") for s in specs}
    wanted = {49, 196, 256, 576, 784, 1024}
    assert wanted <= built, f"{module}: no build at S = {sorted(wanted - built)}"
    # issues 9 / 10: the forward and the backward serve every token count, so every build must fit
    assert all(s["must_fit"] for s in specs)
