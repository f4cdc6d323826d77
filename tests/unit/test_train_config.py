"""Stage configs: presets resolve into --print-config with the spec's hyper-parameters; overrides win."""

from __future__ import annotations

import pytest
import yaml

from bevt_core.cli import main
from bevt_core.config import ConfigError, from_dict


def printed(capsys, *argv: str) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_pretrain_joint_swin_b_recipe(capsys):
    cfg = printed(
        capsys,
        "pretrain-joint",
        "--videos",
        "v",
        "--video-tokens",
        "vt",
        "--images",
        "i",
        "--image-tokens",
        "it",
        "--run.work-dir",
        "w",
    )
    assert cfg["optim"]["lr"] == 5e-4 and cfg["optim"]["weight_decay"] == 0.05
    assert cfg["optim"]["clip_grad"] == 3.0 and cfg["optim"]["groups"] == "pretrain"
    assert cfg["schedule"] == {"epochs": 150, "warmup_epochs": 10, "cosine_by_epoch": False, "max_steps": 0}
    # 4 clips + 32 images per GPU per micro-step, 2 micro-steps per update on the official 32 GPUs.
    assert cfg["run"]["batch_size"] == 4 and cfg["run"]["global_batch"] == 256 and cfg["image_batch_size"] == 32
    assert cfg["model"]["name"] == "bevt-swin-b" and cfg["model"]["window_size"] == [8, 7, 7]


def test_finetune_k400_and_ssv2_recipes(capsys):
    k400 = printed(capsys, "finetune", "--train", "t", "--run.work-dir", "w", "--preset", "k400-swin-b")
    assert (k400["optim"]["lr"], k400["optim"]["weight_decay"]) == (3e-4, 0.001)
    assert k400["optim"]["groups"] == "layer_decay" and k400["optim"]["layer_decay"] == 0.9
    assert k400["optim"]["clip_grad"] == 40.0 and k400["schedule"]["warmup_epochs"] == 2.5
    assert k400["clip"]["clip_len"] == 32 and k400["clip"]["frame_interval"] == 2
    assert (k400["clip"]["test_clips"], k400["clip"]["test_crops"]) == (4, 3)
    ssv2 = printed(capsys, "finetune", "--train", "t", "--run.work-dir", "w", "--preset", "ssv2-swin-b")
    assert ssv2["model"]["window_size"] == [16, 7, 7] and ssv2["model"]["drop_path_rate"] == 0.4
    assert ssv2["optim"]["groups"] == "backbone_mult" and ssv2["optim"]["backbone_lr_mult"] == 0.1
    assert ssv2["label_smoothing"] == 0.1 and ssv2["ema_momentum"] == 2e-4
    assert ssv2["clip"]["sampling"] == "uniform" and ssv2["clip"]["erase"] == 0.25
    assert ssv2["clip"]["rand_augment"] == "imgaug-n4-m7"
    assert (ssv2["run"]["batch_size"], ssv2["run"]["global_batch"]) == (1, 64)  # 1 x 8 micro-steps x 8 GPUs


def test_options_override_the_preset(capsys):
    cfg = printed(
        capsys,
        "finetune",
        "--train",
        "t",
        "--run.work-dir",
        "w",
        "--preset",
        "ssv2-swin-b",
        "--optim.lr",
        "1e-4",
        "--clip.clip-len",
        "16",
    )
    assert cfg["optim"]["lr"] == 1e-4 and cfg["clip"]["clip_len"] == 16 and cfg["optim"]["weight_decay"] == 0.05


def test_every_stage_prints_its_config(capsys):
    image = printed(capsys, "pretrain-image", "--images", "i", "--image-tokens", "t", "--run.work-dir", "w")
    assert image["preset"] == "swin-b" and image["run"]["work_dir"] == "w"
    ev = printed(capsys, "evaluate", "--weights", "m.pt", "--data", "d", "--output", "o", "--preset", "ssv2-swin-b")
    assert (ev["clip"]["test_clips"], ev["clip"]["test_crops"]) == (1, 3)


def test_errors_name_the_field():
    from bevt_core.stages.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match="preset"):
        from_dict(FinetuneConfig, {"train": "t", "run": {"work_dir": "w"}, "preset": "nope"})
    with pytest.raises(ConfigError, match="optim.groups"):
        from_dict(FinetuneConfig, {"train": "t", "run": {"work_dir": "w"}, "optim": {"groups": "bogus"}})
    with pytest.raises(ConfigError, match="run.work_dir"):
        from_dict(FinetuneConfig, {"train": "t", "run": {}})


def test_the_recipe_global_batch_holds_whatever_the_world_size():
    from bevt_core.recipes import FINETUNE
    from bevt_core.stages.finetune import FinetuneConfig
    from bevt_core.stages.training import fix_batching

    for world, accum in ((8, 4), (4, 8), (1, 32)):
        cfg = from_dict(FinetuneConfig, {"train": "t", "run": {"work_dir": "w"}, "preset": "k400-swin-b"})
        split, note = fix_batching(cfg, world, FINETUNE["k400-swin-b"])
        assert (split.global_batch, split.accum_steps, cfg.run.accum_steps, note) == (64, accum, accum, "")
    with pytest.raises(ConfigError, match="run.global_batch: 64 samples per step do not split"):
        fix_batching(from_dict(FinetuneConfig, {"train": "t", "run": {"work_dir": "w"}}), 3, FINETUNE["k400-swin-b"])
    # Asked for another global batch: said when the job starts, and the lr scaled only on request.
    for scale, lr in ((False, 3e-4), (True, 6e-4)):
        cfg = from_dict(FinetuneConfig, {"train": "t", "run": {"work_dir": "w", "accum_steps": 8, "scale_lr": scale}})
        split, note = fix_batching(cfg, 8, FINETUNE["k400-swin-b"])
        assert (
            split.global_batch == 128 and "differs from the recipe's 64" in note and cfg.optim.lr == pytest.approx(lr)
        )
