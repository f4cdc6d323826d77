"""Video classification finetuning (``bevt finetune`` under torchrun), local or as a PyTorchJob
(see components/pretrain_joint.py for the two modes, and why the data comes as locations)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("launcher"), install_kfp_package=False)
def finetune(
    train: str,
    val: str,
    init: Input[Artifact],
    model: Output[Model],
    weights_location: dsl.OutputPath(str),
    metrics: Output[Metrics],
    report: Output[Markdown],
    preset: str = "k400-swin-b",
    epochs: float = 0.0,
    max_steps: int = 0,
    batch_size: int = 0,
    workers: int = 2,
    log_every: int = 20,
    tracking_uri: str = "auto",
    mode: str = "kubernetes",
    nodes: int = 1,
    min_nodes: int = 0,
    gpus_per_node: int = 0,
    procs_per_node: int = 1,
    namespace: str = "",
    image: str = "",
    timeout_s: float = 604800.0,
    stall_timeout_s: float = 1200.0,
    backend: str = "auto",
    queue_name: str = "",
    volcano_queue: str = "",
    parent_run_id: str = "",
    register_as: str = "",
    run_label: str = "",
):
    """``train`` / ``val``: shard locations; ``init``: pretrain-joint's ``weights_location``, a one-line file
    (bevt_core.kube.kfp_io.handed_over says why this location alone comes as an artifact)."""
    from bevt_core.kube import kfp_io
    from bevt_core.kube.step import TrainStep

    step = TrainStep.pick(locals())
    weights = kfp_io.handed_over(init)
    inputs = {"train": train, "val": val, "init": weights, "preset": preset, "register_as": register_as}
    step.run("finetune", inputs, model, metrics, report)
    kfp_io.hand_over(weights_location, kfp_io.weights_uri(model))
