"""Model level: Mixer-B/16 and L/16, inference and a training step (forward + CE + backward + SGD), every provider."""

import pytest
from conftest import BATCH, BLOCKS, DTYPE, run_case

from fastmixer.bench import harness


@pytest.mark.parametrize("provider", harness.PROVIDERS)
@pytest.mark.parametrize("mode", harness.MODEL_MODES)
@pytest.mark.parametrize("variant", ["b16", "l16"])
def test_model(benchmark, variant, mode, provider):
    benchmark.group = f"{variant} {mode}"  # benchmark: pytest-benchmark's fixture
    run_case(benchmark, harness.Case("model", variant, mode, provider, BATCH, DTYPE, num_blocks=BLOCKS))
