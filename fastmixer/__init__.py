"""fastmixer: MLP-Mixer with fused Triton kernels, a drop-in replacement for timm's Mixer models.

from fastmixer import MixerB16
model = MixerB16(pretrained=True)         # timm's mixer_b16_224 weights, fused kernels on CUDA
"""

import importlib.util as _ilu
import os as _os
import sys as _sys

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

from fastmixer.evaluate import evaluate
from fastmixer.info import info
from fastmixer.mmpretrain_api import get_model, inference_model, list_models
from fastmixer.model import MixerBlock, MlpMixer
from fastmixer.ops import channel_mix, get_backend, norm_pool, set_backend, token_mix, use_backend
from fastmixer.predict import predict
from fastmixer.registry import (
    MixerB16,
    MixerB32,
    MixerH14,
    MixerL16,
    MixerL32,
    MixerS16,
    MixerS32,
    create_model,
)
from fastmixer.weights import (
    CheckpointError,
    from_timm,
    infer_config,
    load_checkpoint,
    model_from_checkpoint,
    to_timm,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "MixerB16",
    "MixerB32",
    "MixerBlock",
    "MixerH14",
    "MixerL16",
    "MixerL32",
    "MixerS16",
    "MixerS32",
    "MlpMixer",
    "channel_mix",
    "create_model",
    "evaluate",
    "from_timm",
    "get_backend",
    "get_model",
    "infer_config",
    "inference_model",
    "info",
    "list_models",
    "load_checkpoint",
    "model_from_checkpoint",
    "norm_pool",
    "predict",
    "set_backend",
    "to_timm",
    "token_mix",
    "use_backend",
]
