"""Stage ``study``: BEVT-mini, what pretraining buys on the sample tasks, in one of two designs.

``--design arms`` (bevt_core/study/arms.py): the paper's ablation at small scale. The same finetune
recipe on the temporal task (camera-motion, SSv2-like) and the appearance task (scene, K400-like),
started from no pretraining (scratch), the image stream alone (image: BEVT-I), the video stream
alone (video: BEVT-V) or both (joint: BEVT), pretrained on the tasks' own training videos and the
images; optionally per kind of pretraining targets (``--views``, ``--online``).

``--design label-efficiency`` (bevt_core/study/labels.py): the regime self-supervised pretraining
is meant for. Every arm pretrains on a large unlabelled pool of clips cut from the training
sources only (bevt_core/samples/pool.py), then each task is finetuned on k labelled clips per class
(``--shots``) and evaluated on the same val sets; ``--selection`` evaluates on training sources held
out of the pool and of finetuning instead, for choosing settings without looking at val.

Every pretraining and finetuning run is repeated per seed; results are the mean and the spread
(sample standard deviation) of single-view validation top-1, with the per-seed values, in
study.json, study.md and study.png. Finished runs are reused on a rerun.
"""

from __future__ import annotations

from dataclasses import dataclass

from bevt_core.config import at_least, non_empty, option
from bevt_core.samples.command import DataSettings, SamplesConfig
from bevt_core.study.common import ARMS

DESIGNS = ("arms", "label-efficiency")


def arms_check(value) -> str | None:
    unknown = [a for a in value if a not in ARMS]
    return f"unknown arms {unknown}; choose from {', '.join(ARMS)}" if unknown else None


@dataclass
class StudyConfig:
    work_dir: str = option("work/study", help="Where the study writes its runs, study.json, study.md and study.png.")
    design: str = option(
        "arms",
        help="arms: pretraining on the tasks' own training videos, finetuning on all labels; label-efficiency: "
        "pretraining on a large unlabelled pool, finetuning on k labelled clips per class (--shots).",
        choices=DESIGNS,
    )
    seeds: tuple[int, ...] = option(
        (0, 1, 2), help="Seeds: each repeats every pretraining and finetuning run.", check=non_empty
    )
    arms: tuple[str, ...] = option(ARMS, help=f"Initialisations to compare: {', '.join(ARMS)}.", check=arms_check)
    max_steps: int = option(
        0,
        help="Cut every pretraining and finetuning run to this many steps (0: the presets' "
        "epochs); for smoke runs, not for numbers.",
        check=at_least(0),
    )
    views: tuple[int, ...] = option(
        (),
        help="arms: stored augmentation views per sample to compare, one pretraining per count "
        "(empty: data.views only).",
        check=lambda counts: "every count must be at least 1" if any(n < 1 for n in counts) else None,
    )
    online: bool = option(False, help="arms: also pretrain with online targets, a fresh augmentation on every read.")
    shots: tuple[int, ...] = option(
        (2, 8, 0),
        help="label-efficiency: labelled clips per class each task is finetuned on (0: all of its training clips).",
        check=lambda counts: "every count must be at least 0" if any(n < 0 for n in counts) else None,
    )
    pool_clips: int = option(
        2000, help="label-efficiency: clips in the unlabelled pretraining pool.", check=at_least(1)
    )
    pretrain_epochs: float = option(
        0.0,
        help="label-efficiency: epochs of every pretraining over the pool and the images (0: the tiny recipes').",
        check=at_least(0.0),
    )
    few_shot_steps: str = option(
        "matched",
        help="label-efficiency: how long a finetune on k clips per class runs. matched: as many optimizer steps "
        "as the task's finetune on all its labels (the recipe's epochs and warmup stretched by all/k clips), so "
        "that k changes the labels and not the optimisation; recipe: the recipe's epochs over the k clips.",
        choices=("matched", "recipe"),
    )
    finetune_length: float = option(
        0.5,
        help="label-efficiency: every finetune's epochs and warmup as this share of its recipe's (camera-motion's "
        "100 epochs on all labels are 1800 steps: the study's largest cost, sized to its 2-hour budget).",
        check=at_least(0.01),
    )
    selection: bool = option(
        False,
        help="label-efficiency: evaluate on a held-out part of the training sources instead of val, and "
        "finetune without it (for choosing settings; never choose them on val).",
    )
    samples: SamplesConfig = option(SamplesConfig, help="The sample data.")
    data: DataSettings = option(DataSettings, help="Sharding and tokenizing (shards and tokens in work_dir/data).")


def run(cfg: StudyConfig):
    if cfg.design == "label-efficiency":
        from bevt_core.study import labels

        return labels.run(cfg)
    from bevt_core.study import arms

    return arms.run(cfg)
