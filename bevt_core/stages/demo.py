"""Stages ``samples`` and ``demo``: the real sample footage, and every stage run on it end to end.

The demo grows with the pipeline: today it fetches the sample data, then shards the two derived
video tasks (camera-motion, scene; train and val) and the image set, and prints what it made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bevt_core.config import at_least, option
from bevt_core.stages import shard


@dataclass
class SamplesConfig:
    cache_dir: str = option("", help="Where the fetched packages and derived clips are kept, outside git. "
                            "Default: $BEVT_CACHE, else ~/.cache/bevt.")
    profile: str = option("demo", help="How many derived clips to make: 'demo' for the demo, 'ci' for a "
                          "smaller set the tests use.", choices=("demo", "ci"))
    seed: int = option(0, help="Seed of the derived tasks (crops, trajectories, splits).")


@dataclass
class DemoConfig:
    work_dir: str = option("work/demo", help="Where the demo writes its outputs (shards, manifests).")
    samples: SamplesConfig = option(SamplesConfig, help="The sample data.")
    workers: int = option(0, help="Worker processes per stage (0: one per core).", check=at_least(0))
    short_side: int = option(128, help="Short side of stored frames (the sample clips are 128 px).",
                             check=at_least(0))
    frame_interval: int = option(1, help="Temporal stride when sharding the sample clips.", check=at_least(1))
    crop: int = option(64, help="Training crop size of the demo's tiny models (tokens on a crop/16 grid).",
                       check=at_least(16))
    views: int = option(2, help="Augmentation views tokenized per sample.", check=at_least(1))
    codebook_size: int = option(256, help="Entries of the weight-free codebook fitted on the demo videos "
                                "(the tiny models' vocabulary).", check=at_least(2))


@dataclass
class DemoResult:
    work_dir: str
    stages: list[tuple[str, str]] = field(default_factory=list)  # (what ran, its one-line outcome)
    mlflow: str = ""  # tracking URI every training stage logged to
    failed: str = ""

    def summary(self) -> str:
        width = max(len(name) for name, _ in self.stages)
        lines = [f"demo finished: outputs in {self.work_dir}"]
        lines += [f"  {name:<{width}}  {outcome}" for name, outcome in self.stages]
        if self.mlflow:
            lines.append(f"report of this run (also on its MLflow parent run): {self.work_dir}/report.html")
            lines.append(f"browse the runs: .venv/bin/mlflow ui --backend-store-uri {self.mlflow}")
        return "\n".join(lines)


@dataclass
class SamplesResult:
    data: object  # bevt_core.samples.SampleData

    def summary(self) -> str:
        d = self.data
        lines = [f"sample data in {d.cache_dir}",
                 f"  real source videos   {len(d.source_videos)} (+{len(d.fallback_videos)} only PyAV decodes)",
                 f"  degenerate files     {len(d.bad_inputs)}",
                 f"  images               {sum(1 for _ in open(d.images_list))} in {d.images_list}"]
        for task in (d.camera_motion, d.scene):
            n_train = sum(1 for _ in open(task.train_list))
            n_val = sum(1 for _ in open(task.val_list))
            lines.append(f"  {task.name:<20} {len(task.classes)} classes, {n_train} train / {n_val} val clips: "
                         f"{task.train_list}")
        return "\n".join(lines)


def fetch_samples(cfg: SamplesConfig) -> SamplesResult:
    from bevt_core.samples import prepare_samples

    return SamplesResult(prepare_samples(cfg.cache_dir or None, seed=cfg.seed, profile=cfg.profile))


EXPERIMENT = "bevt-demo"


def run(cfg: DemoConfig) -> DemoResult:
    """Every stage, each an MLflow run nested under one demo run that ends with the report."""
    from bevt_core.config import to_dict
    from bevt_core.reports import pipeline as report

    data = fetch_samples(cfg.samples).data
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result = DemoResult(str(work), mlflow=f"sqlite:///{(work / 'mlflow.db').resolve()}")
    track = {"tracking_uri": result.mlflow, "experiment": EXPERIMENT,
             "parent_run_id": report.open_run(result.mlflow, EXPERIMENT, "demo", to_dict(cfg))}
    failed = True
    try:
        _stages(cfg, data, work, result, track)
        failed = bool(result.failed)
    finally:
        (work / "report.html").write_text(report.close_run(result.mlflow, track["parent_run_id"], failed))
    return result


def _stages(cfg: DemoConfig, data, work: Path, result: DemoResult, track: dict[str, str]) -> None:
    if prepare(cfg, data, work, result, track):
        _train_all(work, result, track)


def prepare(cfg: DemoConfig, data, work: Path, result: DemoResult, track: dict[str, str]) -> bool:
    """Shard both sample tasks and the images, then tokenize the pretraining sets; False if a stage failed.
    Both are idempotent, so `bevt study` reuses what the demo made."""
    jobs = []
    for task in (data.camera_motion, data.scene):
        for split, listing in (("train", task.train_list), ("val", task.val_list)):
            jobs.append((f"shard {task.name}/{split}", shard.ShardConfig(
                input=str(listing), root=str(task.root), classes=str(task.root / "classes.txt"),
                output=str(work / "shards" / task.name / split), modality="video",
                frame_interval=cfg.frame_interval, short_side=cfg.short_side, samples_per_shard=32,
                workers=cfg.workers, max_reject_rate=0.0, **track)))
    jobs.append(("shard images", shard.ShardConfig(
        input=str(data.images_list), root=str(data.images_root), output=str(work / "shards" / "images"),
        modality="image", short_side=cfg.short_side, samples_per_shard=256, workers=cfg.workers,
        max_reject_rate=0.0, **track)))
    for name, stage_cfg in jobs:
        out = shard.run(stage_cfg)
        result.stages.append((name, f"{out.ok}/{out.items} items, {out.frames} frames, "
                                    f"{out.bytes / 1e6:.1f} MB, {out.seconds:.1f} s"))
        if out.failed:
            result.failed = f"{name}: {out.failed}"
            return False
    _tokenize_all(cfg, work, result, track)
    return True


def _tokenize_all(cfg: DemoConfig, work: Path, result: DemoResult, track: dict[str, str]) -> None:
    """One codebook, fitted on the camera-motion videos, tokenizes every pretraining set: the video and
    image streams share the lm_head, so they must share the tokenizer."""
    from bevt_core.stages import tokenize
    from bevt_core.tokenizers import CODEBOOK_FILE

    sets = ["camera-motion/train", "scene/train", "images"]
    fitted = work / "tokens" / sets[0] / CODEBOOK_FILE
    for name in sets:
        out = tokenize.run(tokenize.TokenizeConfig(
            input=str(work / "shards" / name), output=str(work / "tokens" / name), tokenizer="codebook",
            codebook="" if name == sets[0] else str(fitted), codebook_size=cfg.codebook_size, views=cfg.views,
            crop=cfg.crop, device="cpu", **track))
        result.stages.append((f"tokenize {name}", f"{out.samples} samples, {out.frames} crops, vocab "
                              f"{out.vocab_size}, {out.seconds:.1f} s"))


def _train_all(work: Path, result: DemoResult, track: dict[str, str]) -> None:
    """The tiny presets of the four training stages, every run in one MLflow store in the work dir."""
    from bevt_core.config import from_dict
    from bevt_core.stages import evaluate, finetune, pretrain_image, pretrain_joint

    def run_opts(name: str) -> dict:
        return {"work_dir": str(work / "runs" / name)} | track

    image = pretrain_image.run(from_dict(pretrain_image.PretrainImageConfig, {
        "preset": "tiny", "images": str(work / "shards" / "images"), "image_tokens": str(work / "tokens" / "images"),
        "run": run_opts("pretrain-image")}))
    result.stages.append(("pretrain-image", _losses(image, "loss")))
    joint = pretrain_joint.run(from_dict(pretrain_joint.PretrainJointConfig, {
        "preset": "tiny", "videos": str(work / "shards" / "camera-motion" / "train"),
        "video_tokens": str(work / "tokens" / "camera-motion" / "train"), "images": str(work / "shards" / "images"),
        "image_tokens": str(work / "tokens" / "images"), "init": image.weights, "run": run_opts("pretrain-joint")}))
    result.stages.append(("pretrain-joint", _losses(joint, "loss_video")))
    for task, preset in (("scene", "k400-tiny"), ("camera-motion", "ssv2-tiny")):
        ft = finetune.run(from_dict(finetune.FinetuneConfig, {
            "preset": preset, "train": str(work / "shards" / task / "train"), "val": str(work / "shards" / task / "val"),
            "init": joint.weights, "run": run_opts(f"finetune-{task}"), "register_as": f"bevt-demo-{task}"}))
        result.stages.append((f"finetune {task}", f"{ft.steps} steps, {ft.seconds:.1f} s, val top-1 "
                              f"{ft.val.get('top1', float('nan')):.1%}, registered {ft.registered}"))
        ev = evaluate.run(from_dict(evaluate.EvaluateConfig, {
            "preset": preset, "weights": ft.weights, "data": str(work / "shards" / task / "val"),
            "output": str(work / "eval" / task), "workers": 0} | track))
        result.stages.append((f"evaluate {task}", f"top-1 {ev.top1:.1%} over {ev.views} views "
                              f"(chance {ev.chance:.1%}), confusion matrix in {work / 'eval' / task}"))
        if ft.failed:
            result.failed = f"finetune {task}: {ft.failed}"


def _losses(r, key: str) -> str:
    if key not in r.first:  # nothing left to train: the checkpoint of an earlier run was complete
        return f"{r.steps} steps, complete from an earlier run ({r.resumed_from})"
    return f"{r.steps} steps, {r.seconds:.1f} s, {key} {r.first[key]:.3f} -> {r.last[key]:.3f}"
