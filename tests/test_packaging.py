"""fastmixer.kernels resolves both pip-installed (setuptools maps kernels/ to it) and from a bare source checkout on
PYTHONPATH (what the GPU machines may use)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]  # as if not pip-installed
import fastmixer, fastmixer.kernels.channel_mix as cm
assert fastmixer.kernels is sys.modules["fastmixer.kernels"]  # the attribute too (tests/aot.py reads it)
print(cm.__file__)
"""


def test_kernels_resolve_from_a_source_checkout(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-c", CODE]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == ROOT / "kernels" / "channel_mix.py"


def test_installed_package_maps_kernels():
    import fastmixer.kernels

    assert Path(fastmixer.kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"


def test_every_subpackage_is_shipped():
    # `pip install .` (not editable) installs only the packages pyproject lists: fastmixer.bench must be one, as the
    # CLI (`fastmixer bench`, `fastmixer demo`) imports it.
    text = (ROOT / "pyproject.toml").read_text()
    listed = text.split("packages = [", 1)[1].split("]", 1)[0]
    found = {f"fastmixer.{p.parent.name}" for p in (ROOT / "fastmixer").glob("*/__init__.py")}
    assert "fastmixer.bench" in found, found
    for package in ("fastmixer", "fastmixer.kernels", *found):
        assert f'"{package}"' in listed, f"{package} missing from [tool.setuptools] packages"
