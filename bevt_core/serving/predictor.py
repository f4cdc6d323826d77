"""Top-k classes of a video file from a finetuned recognizer, preprocessed exactly as evaluation.

The video goes through the shard stage's own decode / stride / resize / JPEG function with the
settings of the model's training shards, then through evaluation's ``test_views`` and the model's
``predict_views`` (softmax per view, averaged): for a video that was sharded with those settings the
probabilities are exactly those ``bevt evaluate`` computes. Everything needed comes from the
checkpoint (:mod:`bevt_core.serving.preprocessing`).
"""

from __future__ import annotations

import os

import torch

from bevt_core import storage
from bevt_core.config import ConfigError
from bevt_core.data.decode import REASONS, RejectedInput
from bevt_core.data.inputs import InputItem
from bevt_core.data.sharding import encode_item
from bevt_core.loading.clips import test_views
from bevt_core.models import Recognizer3D
from bevt_core.serving.preprocessing import META_KEY, Preprocessing
from bevt_core.serving.recognizer import load_recognizer


class Predictor:
    def __init__(
        self, model: Recognizer3D, classes: list[str], preprocessing: Preprocessing, device: torch.device | None = None
    ):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.classes = classes
        self.preprocessing = preprocessing

    @classmethod
    def load(cls, checkpoint: str, field_name: str = "checkpoint") -> Predictor:
        """From finetune's ``recognizer.pt`` (local or s3://); errors name ``field_name``."""
        model, meta = load_recognizer(checkpoint, field_name)
        if META_KEY not in meta:
            raise ConfigError(
                f"{field_name}: {checkpoint} records how its inputs are prepared (written by "
                "an older `bevt finetune`); finetune it again"
            )
        return cls(model, list(meta["classes"]), Preprocessing.from_meta(meta[META_KEY]))

    def views(self, video: str) -> torch.Tensor:
        """(clips x crops, 3, T, crop, crop) normalised test views of a local or s3:// video."""
        source = video if storage.is_s3(video) else os.path.abspath(video)
        try:
            sample, _ = encode_item(InputItem(0, source, -1, ""), self.preprocessing.encode_settings())
        except RejectedInput as e:
            detail = f" ({e.detail})" if e.detail != source else ""
            raise ConfigError(f"video: {source}: {REASONS[e.reason]}{detail}") from None
        return test_views(sample, self.preprocessing.clip)

    @torch.no_grad()
    def probabilities(self, video: str) -> torch.Tensor:
        """Class probabilities (num_classes,), averaged over the test views."""
        return self.model.predict_views(self.views(video)[None].to(self.device))[0].cpu()

    def top_k(self, video: str, k: int) -> list[tuple[str, float]]:
        values, indices = self.probabilities(video).topk(min(k, len(self.classes)))
        return [(self.classes[i], v) for v, i in zip(values.tolist(), indices.tolist())]
