"""fastmixer: MLP-Mixer with fused Triton kernels, a drop-in replacement for timm's Mixer models.

from fastmixer import MixerB16
model = MixerB16(pretrained=True)         # timm's mixer_b16_224 weights, fused kernels on CUDA
"""

from fastmixer.evaluate import evaluate
from fastmixer.info import info
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
    "infer_config",
    "info",
    "load_checkpoint",
    "model_from_checkpoint",
    "norm_pool",
    "predict",
    "set_backend",
    "to_timm",
    "token_mix",
    "use_backend",
]
