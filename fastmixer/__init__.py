"""fastmixer: MLP-Mixer with fused Triton kernels, a drop-in replacement for timm's Mixer models.

from fastmixer import MixerB16
model = MixerB16(pretrained=True)         # timm's mixer_b16_224 weights, fused kernels on CUDA

The public names are imported on first use (PEP 562 module __getattr__): `import fastmixer` itself loads neither torch
nor timm, so the command line (`fastmixer --help`) answers at once. fastmixer's architectures are registered in timm's
model registry as soon as both fastmixer and timm are imported, in either order.

Where each layer lives. The run-time path, from the user down to the kernels:
  registry.py        names -> architectures (timm's registry, pretrained tags, MixerB16 ...); mmpretrain_api.py the
                     seed's names, get_model / inference_model
  model.py           MlpMixer / MixerBlock: timm's classes whose blocks call the seam
  ops.py             the seam: token_mix / channel_mix / norm_pool, backend choice, the fastmixer:: custom ops
  mix_args.py        the one argument contract of the fused ops, checked by the seam and by every launcher
  reference.py       the pure-PyTorch path (same math, plain aten ops): CPU, float64, and the oracle of the tests
  ../kernels/        the Triton kernels and their launchers, shipped as fastmixer.kernels (one file per fused op)
Beside it:
  weights.py         checkpoint files (timm, mmpretrain, JAX); timm_convert.py timm <-> fastmixer modules; hub.py
                     the offline-fast pretrained fetch
  predict.py, evaluate.py, info.py, demo.py, cli.py (+ cli_common.py, images.py): the command line and its helpers
  bench/             measurement tooling, not used at run time: benchmark harness, launch recorder, counting, memory
"""

import importlib as _importlib
import importlib.util as _ilu
import os as _os
import sys as _sys
import types as _types

if _ilu.find_spec("fastmixer.kernels") is None:
    # A source checkout on PYTHONPATH (not pip-installed): the top-level kernels/ folder is what pyproject ships as
    # fastmixer.kernels, so map it here the same way.
    _dir = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    _init = _os.path.join(_dir, "__init__.py")
    if not _os.path.isfile(_init):
        raise ImportError(f"fastmixer.kernels not found (no {_init}); install fastmixer with pip")
    _spec = _ilu.spec_from_file_location("fastmixer.kernels", _init, submodule_search_locations=[_dir])
    _sys.modules["fastmixer.kernels"] = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_sys.modules["fastmixer.kernels"])
    kernels = _sys.modules["fastmixer.kernels"]  # what a normal submodule import binds: `fastmixer.kernels` works

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "weights",
    "MixerB16": "registry",
    "MixerB32": "registry",
    "MixerBlock": "model",
    "MixerH14": "registry",
    "MixerL16": "registry",
    "MixerL32": "registry",
    "MixerS16": "registry",
    "MixerS32": "registry",
    "MlpMixer": "model",
    "channel_mix": "ops",
    "clear_selection_cache": "select",
    "create_model": "registry",
    "describe_selection": "select",
    "evaluate": "evaluate",
    "from_timm": "timm_convert",
    "get_backend": "ops",
    "get_model": "mmpretrain_api",
    "infer_config": "weights",
    "inference_model": "mmpretrain_api",
    "info": "info",
    "list_models": "mmpretrain_api",
    "load_checkpoint": "weights",
    "model_from_checkpoint": "weights",
    "norm_pool": "ops",
    "predict": "predict",
    "selection": "select",
    "set_backend": "ops",
    "to_timm": "timm_convert",
    "token_mix": "ops",
    "tune_selection": "select",
    "use_backend": "ops",
}
__all__ = sorted(_EXPORTS)
# public functions that share their name with the submodule defining them
_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if name == module)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmixer' has no attribute {name!r}")
    _importlib.import_module("fastmixer.registry")  # any use of fastmixer registers its architectures in timm
    value = getattr(_importlib.import_module(f"fastmixer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(_types.ModuleType):
    # The import system binds every imported submodule as an attribute of its package (fastmixer.predict = <module>);
    # `predict`, `evaluate` and `info` are public functions of the same names, which must keep meaning the function.
    def __setattr__(self, name: str, value: object) -> None:
        if name in _SHADOWED and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


class _RegisterAfterTimm:
    """One-shot import hook: once timm has been imported, import fastmixer.registry, which registers fastmixer_* in
    timm (so `import fastmixer; import timm; timm.create_model("fastmixer_b16_224")` works as it did when this package
    imported everything eagerly)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname != "timm":
            return None
        if self in _sys.meta_path:
            _sys.meta_path.remove(self)
        spec = _ilu.find_spec("timm")  # the other finders' answer
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_timm = loader.exec_module

        def exec_module(module: _types.ModuleType) -> None:
            exec_timm(module)
            try:
                _importlib.import_module("fastmixer.registry")
            except Exception as e:  # never break `import timm` itself
                import warnings

                warnings.warn(f"fastmixer could not register its models in timm: {type(e).__name__}: {e}", stacklevel=2)

        loader.exec_module = exec_module
        return spec


if "timm" in _sys.modules:
    _importlib.import_module("fastmixer.registry")
else:
    _sys.meta_path.insert(0, _RegisterAfterTimm())
