"""Image-stream masked image modeling (``bevt pretrain-image``); one process, like the official code.

It streams the shards and tokens from their locations, writes its work directory (checkpoints, weights)
straight to the ``model`` artifact's URI, and hands the weights file on as ``weights_location``
(bevt_core/kube/kfp_io.py)."""

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Model, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("pretrain-image"), install_kfp_package=False)
def pretrain_image(
    images: str,
    image_tokens: str,
    model: Output[Model],
    weights_location: dsl.OutputPath(str),
    metrics: Output[Metrics],
    report: Output[Markdown],
    preset: str = "swin-b",
    epochs: float = 0.0,
    max_steps: int = 0,
    batch_size: int = 0,
    workers: int = 2,
    log_every: int = 20,
    tracking_uri: str = "auto",
    parent_run_id: str = "",
):
    """``images`` / ``image_tokens``: shard and tokenize locations; ``epochs`` / ``batch_size`` 0: the preset's."""
    from bevt_core.kube import kfp_io
    from bevt_core.stages import pretrain_image as stage

    parameters = locals()
    cfg = kfp_io.stage_config(
        stage.PretrainImageConfig, parameters, **kfp_io.training_sections(parameters, kfp_io.uri(model))
    )
    result = stage.run(cfg)
    kfp_io.record_weights(model, result.weights)
    kfp_io.publish(result, metrics, report, "pretrain-image")
    kfp_io.hand_over(weights_location, kfp_io.weights_uri(model))
