"""Measurement tooling, kept apart from the runtime: nothing in the model or the ops imports this package.

  harness.py   the benchmark harness of `fastmixer bench` and `pytest bench/` (providers, steps, timing, reports)
  counting.py  kernel launches, compulsory bytes and FLOPs per forward / backward without a GPU; a roofline MODEL
  launches.py  the one Triton launch recorder (used by counting, the tests and the benchmarks)
  memory.py    bytes an autograd graph saves for backward

It ships with the package (the CLI reaches it after `pip install`); the top-level bench/ folder (pytest-benchmark
suites, report scripts) is not installed and imports from here.
"""
