"""How a finetuned model's inputs are prepared, recorded in its checkpoint by ``bevt finetune``.

Evaluation reads videos from shards, so a prediction on a raw video file must first do what the
shard stage did to the training videos (temporal stride, frame cap, short side, JPEG quality) and
then cut the recipe's test views. Both halves are recorded here, so a checkpoint alone is enough to
predict, without the shard directories or the preset it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bevt_core.data import jobs
from bevt_core.data.inputs import source_root
from bevt_core.data.manifest import load_manifest
from bevt_core.data.sharding import EncodeSettings, source_uri
from bevt_core.loading.clip_spec import ClipSpec

META_KEY = "preprocess"  # where it sits in the checkpoint's meta


@dataclass(frozen=True)
class Preprocessing:
    frame_interval: int
    max_frames: int
    min_frames: int
    short_side: int
    jpeg_quality: int
    clip: ClipSpec  # its test_clips x test_crops are the views averaged per video

    @classmethod
    def of_training(cls, train_root: str, clip: ClipSpec) -> Preprocessing:
        """The shard settings of the training data, with the clip recipe the model is finetuned with."""
        shards = jobs.recorded_settings(train_root)
        return cls(
            shards["frame_interval"],
            shards["max_frames"],
            shards["min_frames"],
            shards["short_side"],
            shards["jpeg_quality"],
            clip,
        )

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocessing:
        return cls(**{**meta, "clip": ClipSpec(**meta["clip"])})

    def to_meta(self) -> dict:
        return asdict(self)

    def encode_settings(self) -> EncodeSettings:
        """The shard stage's settings for one video given by its own (absolute or s3://) path."""
        return EncodeSettings(
            "video", "", self.frame_interval, self.max_frames, self.min_frames, self.short_side, self.jpeg_quality
        )


def first_video(shard_root: str) -> str:
    """The source video of the first sample in a shard directory (an input example for the model)."""
    shards = jobs.recorded_settings(shard_root)
    return source_uri(source_root(shards["input"], shards["root"]), load_manifest(shard_root).rows[0]["source"])
