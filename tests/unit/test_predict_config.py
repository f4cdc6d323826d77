"""`bevt predict` and `bevt finetune --register-as`: config errors come before any work, naming the field;
the preprocessing recipe survives the trip through a checkpoint's meta."""

from __future__ import annotations

import io

import pytest
import torch
import yaml

from bevt_core.cli import main
from bevt_core.config import ConfigError, from_dict
from bevt_core.loading.clips import ClipSpec
from bevt_core.serving.preprocessing import Preprocessing
from bevt_core.stages.finetune import FinetuneConfig


def test_predict_takes_the_video_as_argument_and_exactly_one_model(capsys):
    assert main(["predict", "clip.mp4", "--model", "models:/bevt-scene/3", "--top-k", "2", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["video"], cfg["model"], cfg["checkpoint"], cfg["top_k"]) == ("clip.mp4", "models:/bevt-scene/3", "", 2)
    for extra in ([], ["--model", "models:/m/1", "--checkpoint", "r.pt"]):
        with pytest.raises(SystemExit) as exit:
            main(["predict", "clip.mp4", *extra])
        assert exit.value.code == 2
        assert "bevt predict: error: model: give exactly one of --model and --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "clip.mp4", "--checkpoint", "r.pt", "--top-k", "0"])
    assert "top_k: must be >= 1" in capsys.readouterr().err


def test_register_as_needs_tracking():
    with pytest.raises(ConfigError, match="register_as: registering needs MLflow tracking"):
        from_dict(
            FinetuneConfig,
            {
                "train": "t",
                "register_as": "bevt-scene",
                "preset": "k400-tiny",
                "run": {"work_dir": "w"},
                "tracking": {"uri": "none"},
            },
        )


def test_recipe_round_trips_through_a_weights_only_checkpoint():
    recipe = Preprocessing(2, 0, 2, 320, 90, ClipSpec(32, 2, "interval", 224, 0.5, "", 0.0, 4, 3))
    buf = io.BytesIO()
    torch.save({"meta": {"preprocess": recipe.to_meta()}}, buf)
    buf.seek(0)
    assert Preprocessing.from_meta(torch.load(buf, weights_only=True)["meta"]["preprocess"]) == recipe
    assert recipe.encode_settings().short_side == 320 and recipe.encode_settings().modality == "video"
