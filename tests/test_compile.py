"""torch.compile(fullgraph=True) of a tiny, awkward Mixer (S = 36 tokens, C = 40, 2 blocks, batch 3): one graph, no
break, the fastmixer:: custom ops kept as opaque nodes, and compiled == eager in fp32 (forward with aot_eager and
inductor on the triton backend, inductor on the reference backend; backward with aot_eager), with exact and
tanh-approximate GELU."""

from functools import partial

import pytest
import torch
from conftest import DEVICE
from helpers import randomize_

import fastmixer
from fastmixer.bench.launches import count_launches

NUM_BLOCKS, EMBED, IMG, PATCH, BATCH = 2, 40, 42, 7, 3  # 42 / 7 = 6 -> S = 36


def _model(**kwargs) -> fastmixer.MlpMixer:
    model = fastmixer.MlpMixer(
        num_classes=5, img_size=IMG, patch_size=PATCH, num_blocks=NUM_BLOCKS, embed_dim=EMBED, **kwargs
    )
    assert model.stem.num_patches == 36
    return randomize_(model).to(DEVICE).eval()


def _images() -> torch.Tensor:
    return torch.randn(BATCH, 3, IMG, IMG, device=DEVICE)


def _fastmixer_ops(graph: torch.fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_function" and "fastmixer." in str(node.target):
            name = str(node.target).split("fastmixer.")[1].split(".")[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.parametrize("backend_name", ["triton", "reference"])
def test_one_graph_no_break(backend_name, inductor_cache):
    model, x = _model(), _images()
    with fastmixer.use_backend(backend_name), torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    ops = _fastmixer_ops(explained.graphs[0])
    if backend_name == "triton":  # each fused op is one opaque node: dynamo does not trace into the kernels
        assert ops == {"token_mix": NUM_BLOCKS, "channel_mix": NUM_BLOCKS, "norm_pool": 1}
    else:  # the reference path is plain aten, which inductor can see through and fuse
        assert ops == {}


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_forward_matches_eager(compiler, triton_backend, inductor_cache):
    model, x = _model(), _images()
    with torch.no_grad():
        eager, eager_launches = count_launches(model, x)
        compiled_model = torch.compile(model, backend=compiler, fullgraph=True)
        compiled_model(x)  # compile
        compiled, compiled_launches = count_launches(compiled_model, x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    # The compiled graph runs the very same fused kernels (the custom ops are opaque to inductor).
    assert compiled_launches == eager_launches
    assert len(compiled_launches) > 0


def test_compiled_reference_inductor_matches_eager(reference_backend, inductor_cache):
    model, x = _model(), _images()
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend="inductor", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_compiled_backward_matches_eager(triton_backend, inductor_cache):
    # Training mode (no dropout/drop-path configured, so the fused path runs) through register_autograd's backward.
    model, x = _model().train(), _images()
    weight = torch.randn(BATCH, 5, device=DEVICE)

    def grads(fn):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        (fn(xi) * weight).sum().backward()
        return {"input": xi.grad, **{n: p.grad for n, p in model.named_parameters()}}

    eager = grads(model)
    compiled = grads(torch.compile(model, backend="aot_eager", fullgraph=True))
    assert all(g is not None for g in compiled.values())
    assert eager.keys() == compiled.keys()
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_tanh_gelu_one_node_per_op(triton_backend, inductor_cache):
    """act_layer=nn.GELU(approximate="tanh"): still one graph with one opaque node per fused op, each carrying
    act="gelu_tanh"; the inductor-compiled forward agrees with eager to 1e-5."""
    model, x = _model(act_layer=partial(torch.nn.GELU, approximate="tanh")), _images()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
        graph = explained.graphs[0]
        assert _fastmixer_ops(graph) == {"token_mix": NUM_BLOCKS, "channel_mix": NUM_BLOCKS, "norm_pool": 1}
        acts = [n.args[-1] for n in graph.graph.nodes if n.op == "call_function" and "_mix" in str(n.target)]
        assert acts == ["gelu_tanh"] * (2 * NUM_BLOCKS), acts
        eager = model(x)
        compiled = torch.compile(model, backend="inductor", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
