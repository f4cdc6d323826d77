"""Named model configurations and ``build_model``.

Names are ``<task>-swin-<size>``: task ``bevt`` (pretraining), ``k400``, ``ssv2`` or ``diving48``
(recognizers) and size ``t``, ``s``, ``b`` or ``l`` (docs/official-behaviour.md §1.1). BEVT itself uses Swin-B only.
``bevt-tiny`` and ``recognizer-tiny`` are CPU-sized models with the same structure for tests and demos.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .pretrain import BEVTPretrainModel, PretrainConfig
from .recognizer import Recognizer3D, RecognizerConfig
from .swin3d import SwinConfig

SIZES: dict[str, dict[str, Any]] = {
    "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
# init_std: see SwinConfig; with the official 0.02 this trunk learns appearance but never motion in a CPU budget.
TINY = dict(
    embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=(4, 4, 4), drop_path_rate=0.1, init_std=0.1
)


def _presets() -> dict[str, PretrainConfig | RecognizerConfig]:
    presets: dict[str, PretrainConfig | RecognizerConfig] = {}
    for size, arch in SIZES.items():
        presets[f"bevt-swin-{size}"] = PretrainConfig(
            swin=SwinConfig(**arch, window_size=(8, 7, 7), drop_path_rate=0.3)
        )
        presets[f"k400-swin-{size}"] = RecognizerConfig(
            swin=SwinConfig(**arch, window_size=(8, 7, 7), drop_path_rate=0.3), num_classes=400
        )
        presets[f"ssv2-swin-{size}"] = RecognizerConfig(
            swin=SwinConfig(**arch, window_size=(16, 7, 7), drop_path_rate=0.4),
            num_classes=174,
            pretrained_window_size=(8, 7, 7),
        )
        # No official Diving48 recipe exists (docs/official-behaviour.md Q3); it starts from the K400 one.
        presets[f"diving48-swin-{size}"] = RecognizerConfig(
            swin=SwinConfig(**arch, window_size=(8, 7, 7), drop_path_rate=0.3), num_classes=48
        )
    presets["bevt-tiny"] = PretrainConfig(swin=SwinConfig(**TINY), vocab_size=256, image_size=64, num_frames=8)
    presets["recognizer-tiny"] = RecognizerConfig(swin=SwinConfig(**TINY), num_classes=10, image_size=64, num_frames=8)
    return presets


PRESETS = _presets()
SWIN_FIELDS = {f.name for f in dataclasses.fields(SwinConfig)}


def preset_config(preset: str, **overrides: Any) -> PretrainConfig | RecognizerConfig:
    """A preset's config with fields replaced; architecture fields (SwinConfig) may be given flat."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    config = PRESETS[preset]
    task_fields = {f.name for f in dataclasses.fields(config)} - {"swin"}
    unknown = set(overrides) - SWIN_FIELDS - task_fields
    if unknown:
        raise ValueError(f"preset {preset!r} has no field(s) {sorted(unknown)}")
    swin = dataclasses.replace(config.swin, **{k: v for k, v in overrides.items() if k in SWIN_FIELDS})
    return dataclasses.replace(config, swin=swin, **{k: v for k, v in overrides.items() if k in task_fields})


def build_model(preset: str, **overrides: Any) -> BEVTPretrainModel | Recognizer3D:
    """``build_model('ssv2-swin-b', drop_path_rate=0.2)``: a freshly initialised model."""
    config = preset_config(preset, **overrides)
    if isinstance(config, PretrainConfig):
        return BEVTPretrainModel(config)
    return Recognizer3D(config)
