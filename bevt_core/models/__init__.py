"""BEVT models: the Swin3D backbone, the two-stream pretraining model, the video recognizer,
named presets and checkpoint I/O with the official key names."""

from .checkpoint import (
    inflate_2d_checkpoint,
    interpolate_bias_table,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
    save_weights,
)
from .presets import PRESETS, build_model, preset_config
from .pretrain import BEVTBackbone, BEVTPretrainModel, MIMHead, PretrainConfig
from .recognizer import I3DHead, Recognizer3D, RecognizerConfig
from .swin3d import SwinConfig, SwinTransformer3D, WindowAttention3D

__all__ = [
    "PRESETS",
    "BEVTBackbone",
    "BEVTPretrainModel",
    "I3DHead",
    "MIMHead",
    "PretrainConfig",
    "Recognizer3D",
    "RecognizerConfig",
    "SwinConfig",
    "SwinTransformer3D",
    "WindowAttention3D",
    "build_model",
    "inflate_2d_checkpoint",
    "interpolate_bias_table",
    "load_checkpoint",
    "preset_config",
    "read_state_dict",
    "save_checkpoint",
    "save_weights",
]
