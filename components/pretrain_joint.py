"""BEVT joint (video + image) pretraining, distributed (``bevt pretrain-joint`` under torchrun).

``mode="kubernetes"``: this step renders, creates and watches a PyTorchJob of ``nodes`` nodes with
``gpus_per_node`` GPUs and deletes it afterwards (it needs the bevt-launcher RBAC of k8s/base);
the pods read and write the artifacts' object-store URIs directly. ``mode="local"``: torchrun on
this machine with ``procs_per_node`` processes, same command.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("launcher"), install_kfp_package=False)
def pretrain_joint(
    videos: Input[Dataset],
    video_tokens: Input[Dataset],
    images: Input[Dataset],
    image_tokens: Input[Dataset],
    init: Input[Model],
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
    run_label: str = "",
):
    from bevt_core.kube.step import TrainStep

    step = TrainStep.pick(locals())
    step.run(
        "pretrain-joint",
        {
            "videos": step.location(videos),
            "video_tokens": step.location(video_tokens),
            "images": step.location(images),
            "image_tokens": step.location(image_tokens),
            "init": step.weights(init),
            "preset": preset,
        },
        model,
        metrics,
        report,
    )
