"""The label-efficiency study's finetune lengths: with matched steps, k labelled clips per class are seen for as
many optimizer steps as all labels are, so that k changes the labels and not the optimisation."""

import pytest

from bevt_core.recipes import FINETUNE
from bevt_core.study import StudyConfig
from bevt_core.study.labels import finetune_settings


@pytest.mark.parametrize("task, preset", [("camera-motion", "ssv2-tiny"), ("scene", "k400-tiny")])
def test_matched_few_shot_finetunes_see_as_many_clips_as_the_all_labels_one(task, preset):
    cfg = StudyConfig(design="label-efficiency")
    recipe = FINETUNE[preset].schedule
    full = finetune_settings(cfg, task, 144, 144)
    assert full["schedule"] == {
        "epochs": pytest.approx(recipe.epochs * 0.5),
        "warmup_epochs": pytest.approx(recipe.warmup_epochs * 0.5),
    }
    assert "run" not in full, "all labels keep the loader's workers"
    for clips in (12, 48):
        few = finetune_settings(cfg, task, clips, 144)
        assert few["schedule"]["epochs"] * clips == pytest.approx(full["schedule"]["epochs"] * 144)
        assert few["schedule"]["warmup_epochs"] * clips == pytest.approx(full["schedule"]["warmup_epochs"] * 144)
        assert few["run"] == {"workers": 0} and few["validate_every"] == 0


def test_recipe_few_shot_finetunes_keep_the_recipes_epochs():
    cfg = StudyConfig(design="label-efficiency", few_shot_steps="recipe", finetune_length=1.0)
    few = finetune_settings(cfg, "camera-motion", 12, 144)
    assert few["schedule"]["epochs"] == FINETUNE["ssv2-tiny"].schedule.epochs
