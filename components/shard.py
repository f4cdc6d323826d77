"""Shard videos / images into WebDataset tars with a manifest (``bevt shard``)."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("shard"), install_kfp_package=False)
def shard_videos(
    input_list: str,
    root: str,
    shards: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    classes: str = "",
    frame_interval: int = 1,
    short_side: int = 320,
    samples_per_shard: int = 64,
    max_reject_rate: float = 0.05,
    workers: int = 0,
    tracking_uri: str = "auto",
    parent_run_id: str = "",
    run_label: str = "",
):
    from bevt_core.config import from_dict
    from bevt_core.kube.kfp_io import publish, tracking
    from bevt_core.stages import shard

    cfg = from_dict(
        shard.ShardConfig,
        {
            "input": input_list,
            "root": root,
            "classes": classes,
            "output": shards.path,
            "modality": "video",
            "frame_interval": frame_interval,
            "short_side": short_side,
            "samples_per_shard": samples_per_shard,
            "max_reject_rate": max_reject_rate,
            "workers": workers,
            "progress": False,
            "tracking": tracking(tracking_uri, parent_run_id, run_label),
        },
    )
    publish(shard.run(cfg), metrics, report, "shard videos")


@dsl.component(base_image=for_stage("shard"), install_kfp_package=False)
def shard_images(
    input_list: str,
    root: str,
    shards: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    short_side: int = 320,
    samples_per_shard: int = 256,
    max_reject_rate: float = 0.05,
    workers: int = 0,
    tracking_uri: str = "auto",
    parent_run_id: str = "",
    run_label: str = "",
):
    from bevt_core.config import from_dict
    from bevt_core.kube.kfp_io import publish, tracking
    from bevt_core.stages import shard

    cfg = from_dict(
        shard.ShardConfig,
        {
            "input": input_list,
            "root": root,
            "output": shards.path,
            "modality": "image",
            "short_side": short_side,
            "samples_per_shard": samples_per_shard,
            "max_reject_rate": max_reject_rate,
            "workers": workers,
            "progress": False,
            "tracking": tracking(tracking_uri, parent_run_id, run_label),
        },
    )
    publish(shard.run(cfg), metrics, report, "shard images")
