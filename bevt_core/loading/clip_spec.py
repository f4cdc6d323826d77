"""What a finetune or evaluation clip is: the recipe's settings (:class:`ClipOptions`, a config section)
and the resolved values the loader reads (:class:`ClipSpec`). Free of torch, so configs load without it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bevt_core.config import at_least, between, option

IMGAUG_SPEC = re.compile(r"^imgaug-n(?P<n>\d+)-m(?P<m>\d+)$")


def rand_augment_problem(spec: str) -> str | None:
    if spec == "off" or IMGAUG_SPEC.match(spec) or spec.startswith("rand-"):
        return None
    return "must be 'off', 'imgaug-nN-mM' (imgaug's RandAugment) or a timm spec starting with 'rand-'"


@dataclass(frozen=True)
class ClipSpec:
    clip_len: int
    frame_interval: int
    sampling: str  # "interval" | "uniform"
    crop: int
    flip: float = 0.5
    rand_augment: str = ""  # "imgaug-n4-m7" (imgaug's), a timm spec such as "rand-m7-n4", or "" (off)
    erase: float = 0.0  # RandomErasing probability
    test_clips: int = 1
    test_crops: int = 1


@dataclass
class ClipOptions:
    """The finetune and evaluation recipes' clip settings (a config section: ``--clip.crop 224``)."""

    clip_len: int | None = option(help="Frames per clip.", check=at_least(1), preset=True)
    frame_interval: int | None = option(
        help="Frames of the video between clip frames (interval sampling), as the official SampleFrames counts them; "
        "the shards' stride must divide it.",
        check=at_least(1),
        preset=True,
    )
    sampling: str | None = option(
        help="interval (K400 SampleFrames) or uniform (SSv2 segments).", choices=("interval", "uniform"), preset=True
    )
    crop: int | None = option(help="Crop size in pixels.", check=at_least(16), preset=True)
    flip: float | None = option(help="Horizontal flip probability.", check=between(0.0, 1.0), preset=True)
    rand_augment: str | None = option(
        help="RandAugment: 'imgaug-n4-m7' is imgaug 0.4.0's RandAugment(n=4, m=7), the official SSv2 one "
        "(bevt_core.loading.imgaug_augment); a timm spec such as 'rand-m7-n4' is timm's; 'off' disables.",
        check=rand_augment_problem,
        preset=True,
    )
    erase: float | None = option(help="RandomErasing probability.", check=between(0.0, 1.0), preset=True)
    test_clips: int | None = option(help="Clips per video at test time.", check=at_least(1), preset=True)
    test_crops: int | None = option(
        help="Crops per clip at test time (1 centre or 3 along the long side).", choices=(1, 3), preset=True
    )

    def spec(self, test_clips: int | None = None, test_crops: int | None = None) -> ClipSpec:
        return ClipSpec(
            self.clip_len,
            self.frame_interval,
            self.sampling,
            self.crop,
            self.flip,
            "" if self.rand_augment == "off" else self.rand_augment,
            self.erase,
            test_clips or self.test_clips,
            test_crops or self.test_crops,
        )
