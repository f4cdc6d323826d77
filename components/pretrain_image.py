"""Image-stream masked image modeling (``bevt pretrain-image``); one process, like the official code."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("pretrain-image"), install_kfp_package=False)
def pretrain_image(
    images: Input[Dataset],
    image_tokens: Input[Dataset],
    model: Output[Model],
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
    """``epochs`` / ``batch_size`` 0: the preset's."""
    from bevt_core.kube import kfp_io
    from bevt_core.stages import pretrain_image as stage

    parameters = locals()
    cfg = kfp_io.stage_config(
        stage.PretrainImageConfig,
        parameters,
        images=images.path,
        image_tokens=image_tokens.path,
        **kfp_io.training_sections(parameters, model.path),
    )
    result = stage.run(cfg)
    kfp_io.record_weights(model, result.weights)
    kfp_io.publish(result, metrics, report, "pretrain-image")
