"""BEVT joint (video + image) pretraining, distributed (``bevt pretrain-joint`` under torchrun).

``mode="kubernetes"``: this step renders, creates and watches a training job of ``nodes`` nodes with
``gpus_per_node`` GPUs, a PyTorchJob or a TrainJob (``backend``: auto takes what the cluster serves), and
deletes it afterwards. Its service account needs the rules of k8s/launcher-role (a Kubeflow profile's
default-editor has them; README "Running on Kubeflow").
``mode="local"``: torchrun on this machine with ``procs_per_node`` processes, same command.

The step only hands locations over: its inputs are the shard, tokenize and pretrain-image steps'
``*_location`` parameters, never artifacts, so KFP copies none of the corpus into this small pod
(bevt_core/kube/kfp_io.py); the ranks read them from the object store themselves. Its weights' location
leaves as a one-line artifact, ``weights_location``, for the finetune loop (kfp_io.handed_over says why).
"""

from kfp import dsl
from kfp.dsl import Artifact, Markdown, Metrics, Model, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("launcher"), install_kfp_package=False)
def pretrain_joint(
    videos: str,
    video_tokens: str,
    images: str,
    image_tokens: str,
    init: str,
    model: Output[Model],
    weights_location: Output[Artifact],
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
    backend: str = "auto",
    queue_name: str = "",
    volcano_queue: str = "",
    parent_run_id: str = "",
    run_label: str = "",
):
    """``init``: the image-stream weights (pretrain-image's ``weights_location``)."""
    from bevt_core.kube import kfp_io
    from bevt_core.kube.step import TrainStep

    step = TrainStep.pick(locals())
    inputs = {"videos": videos, "video_tokens": video_tokens, "images": images, "image_tokens": image_tokens}
    step.run("pretrain-joint", inputs | {"init": init, "preset": preset}, model, metrics, report)
    kfp_io.hand_over(weights_location.path, kfp_io.weights_uri(model))
