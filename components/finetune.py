"""Video classification finetuning (``bevt finetune`` under torchrun), local or as a PyTorchJob
(see components/pretrain_joint.py for the two modes)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("launcher"), install_kfp_package=False)
def finetune(
    train: Input[Dataset],
    val: Input[Dataset],
    init: Input[Model],
    model: Output[Model],
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
    parent_run_id: str = "",
    register_as: str = "",
    run_label: str = "",
):
    from bevt_core.kube.step import TrainStep

    step = TrainStep.pick(locals())
    step.run(
        "finetune",
        {
            "train": step.location(train),
            "val": step.location(val),
            "init": step.weights(init),
            "preset": preset,
            "register_as": register_as,
        },
        model,
        metrics,
        report,
    )
