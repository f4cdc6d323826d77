"""Every stage resolves every preset to exactly the values it did before the recipes were written once
(the golden files, from the code before that change). The differences allowed are declared here: the
tracking fields moved into one ``tracking`` section, and the fields added since, with their values."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from bevt_core.cli import main
from bevt_core.recipes import FINETUNE, PRETRAIN_IMAGE, PRETRAIN_JOINT

GOLDEN = Path(__file__).parent / "golden" / "print-config"
TRACKING = ("tracking_uri", "uri"), ("experiment", "experiment"), ("parent_run_id", "parent_run_id")
MOVED = {(*where, old): ("tracking", new) for where in ((), ("run",)) for old, new in (*TRACKING, ("run_label",) * 2)}
UNCHANGED = ("predict", "samples", "demo", "study", "pipeline")  # their fields did not move


# Fields added or changed after the goldens were written: case name prefix -> {field: value}, each for a
# reason: the joint stage's interval counts frames of the video and its token classifier starts fresh;
# finetunes validate every 5 epochs; DALL-E runs in fp16 on GPUs; the SSv2 RandAugment is imgaug's, as in the
# official recipe (it was timm's); a recipe gives the global batch and the accumulation follows from the world
# size (the tiny finetunes' micro-batch is halved so that one and two ranks both split it); the study got designs.
def _batching(global_batch: int) -> dict:
    return {("run", "global_batch"): global_batch, ("run", "accum_steps"): None, ("run", "scale_lr"): False}


CHANGED = {
    "pretrain-image--swin-b": _batching(2048),
    "pretrain-image--tiny": _batching(16),
    "pretrain-joint--swin-b": {("frame_interval",): 8, ("init_lm_head",): False} | _batching(256),
    "pretrain-joint--tiny": {("frame_interval",): 1, ("init_lm_head",): False} | _batching(8),
    "finetune--": {("validate_every",): 5},
    "finetune--k400-swin-b": _batching(64),
    "finetune--ssv2-swin-b": {("clip", "rand_augment"): "imgaug-n4-m7"} | _batching(64),
    "finetune--diving48-swin-b": _batching(64),
    "finetune--k400-tiny": _batching(8) | {("run", "batch_size"): 4},
    "finetune--ssv2-tiny": _batching(8) | {("run", "batch_size"): 4},
    "evaluate--ssv2-swin-b": {("clip", "rand_augment"): "imgaug-n4-m7"},
    "tokenize": {("precision",): "auto"},  # fp16 on a GPU, as the official tokenizer runs
    # The views-against-online-targets comparison, and the label-efficiency design.
    "study": {("views",): [], ("online",): False, ("design",): "arms", ("shots",): [2, 8, 0]}
    | {("pool_clips",): 2000, ("pretrain_epochs",): 0.0, ("selection",): False}
    | {("few_shot_steps",): "matched", ("finetune_length",): 0.5},
}

CASES = {
    **{
        f"pretrain-image--{p}": f"pretrain-image --preset {p} --images I --image-tokens IT --run.work-dir W".split()
        for p in PRETRAIN_IMAGE
    },
    **{
        f"pretrain-joint--{p}": f"pretrain-joint --preset {p} --videos V --video-tokens VT --images I "
        "--image-tokens IT --run.work-dir W".split()
        for p in PRETRAIN_JOINT
    },
    **{f"finetune--{p}": f"finetune --preset {p} --train T --val V --run.work-dir W".split() for p in FINETUNE},
    **{f"evaluate--{p}": f"evaluate --preset {p} --weights R --data D --output O".split() for p in FINETUNE},
    "shard": ["shard", "--input", "L", "--output", "O"],
    "tokenize": ["tokenize", "--input", "D", "--output", "O", "--tokenizer", "codebook"],
    "predict": ["predict", "clip.mp4", "--checkpoint", "R"],
    "samples": ["samples"],
    "demo": ["demo"],
    "study": ["study"],
    "pipeline": ["pipeline", "compile"],
}


def leaves(tree: dict, path: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        out |= leaves(value, (*path, key)) if isinstance(value, dict) else {(*path, key): value}
    return out


def print_config(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--print-config"]) == 0
    return yaml.safe_load(out.getvalue()) or {}


def test_every_golden_file_has_a_case():
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_print_config_is_unchanged(name):
    golden = leaves(yaml.safe_load((GOLDEN / f"{name}.yaml").read_text()) or {})
    if not name.startswith(UNCHANGED):
        golden = {MOVED.get(key, key): value for key, value in golden.items()}
        golden[("tracking", "source")] = "cli"  # what started the run, for MLflow's Source column
    for prefix, fields in CHANGED.items():
        if name.startswith(prefix):
            golden |= fields
    assert leaves(print_config(CASES[name])) == golden
