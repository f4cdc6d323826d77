"""Shard videos or images into WebDataset tars with a manifest (``bevt shard``).

The shards go straight to the ``shards`` artifact's URI; ``shards_location`` hands that location to the
steps that read them (bevt_core/kube/kfp_io.py says why no step takes a dataset artifact as input)."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("shard"), install_kfp_package=False)
def shard(
    input_list: str,
    root: str,
    shards: Output[Dataset],
    shards_location: dsl.OutputPath(str),
    metrics: Output[Metrics],
    report: Output[Markdown],
    modality: str = "video",
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
    from bevt_core.kube import kfp_io
    from bevt_core.stages import shard as stage

    output = kfp_io.uri(shards)
    cfg = kfp_io.stage_config(stage.ShardConfig, locals(), input=input_list, output=output, progress=False)
    kfp_io.publish(stage.run(cfg), metrics, report, f"shard {run_label}")
    kfp_io.hand_over(shards_location, output)
