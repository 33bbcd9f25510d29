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


@pytest.mark.parametrize(("module", "arg"), [("channel_mix", "M"), ("token_mix_bwd", "C"), ("norm_pool", "x_ptr")])
def test_the_check_catches_a_missing_hint(module, arg):
    # Specs that forget the JIT's divisibility hint on one argument (as the hand-written backward specs once did)
    # describe code that never runs: the check must say so, naming the attrs.
    result = aot.jit_check(f"fastmixer.kernels.{module}", drop_hint=arg)
    assert result["missing"] and all("attrs=" in m for m in result["missing"])
    assert result["unused"]


@pytest.mark.parametrize(("module", "constexpr"), [("token_mix", "S"), ("token_mix_bwd", "S_PAD")])
def test_every_token_count_is_in_the_build_matrix(module, constexpr):
    # 224 / 384 / 448 px at patches 32, 16, 14: S in {49, 196, 256, 576, 784, 1024}. S is a constexpr of the token-mix
    # forward (S_PAD, its power of two, of the backward), so each needs its own build, reported whether it fits or not.
    import triton

    specs = aot.list_specs(f"fastmixer.kernels.{module}")
    built = {s["constexprs"].get(constexpr) for s in specs}
    wanted = {49, 196, 256, 576, 784, 1024}
    if constexpr == "S_PAD":
        wanted = {max(16, triton.next_power_of_2(s)) for s in wanted}
    assert wanted <= built, f"{module}: no build at {constexpr} = {sorted(wanted - built)}"
    assert any(s["must_fit"] for s in specs)
    if module == "token_mix":  # issue 9: the forward serves every token count, so every build must fit
        assert all(s["must_fit"] for s in specs)
    else:
        assert any(not s["must_fit"] for s in specs)
