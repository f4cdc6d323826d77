"""BEVT joint (video + image) pretraining, distributed (``bevt pretrain-joint`` under torchrun).

``mode="kubernetes"``: this step renders, creates and watches a PyTorchJob of ``nodes`` nodes with
``gpus_per_node`` GPUs and deletes it afterwards (it needs the bevt-launcher RBAC of k8s/base);
the pods read and write the artifacts' object-store URIs directly. ``mode="local"``: torchrun on
this machine with ``procs_per_node`` processes, same command.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from bevt_core.kube.images import for_stage


@dsl.component(base_image=for_stage("launcher"), install_kfp_package=False)
def pretrain_joint(videos: Input[Dataset], video_tokens: Input[Dataset], images: Input[Dataset],
                   image_tokens: Input[Dataset], init: Input[Model], model: Output[Model], metrics: Output[Metrics],
                   report: Output[Markdown], preset: str = "swin-b", epochs: float = 0.0, max_steps: int = 0,
                   batch_size: int = 0, workers: int = 2, tracking_uri: str = "auto", mode: str = "kubernetes",
                   nodes: int = 1, min_nodes: int = 0, gpus_per_node: int = 0, procs_per_node: int = 1,
                   namespace: str = "", image: str = "", timeout_s: float = 604800.0):
    from bevt_core.kube import kfp_io
    from bevt_core.kube.step import Placement, run_stage

    at = lambda a: kfp_io.location(a, mode)  # noqa: E731
    result = run_stage("pretrain-joint", {
        "videos": at(videos), "video_tokens": at(video_tokens), "images": at(images),
        "image_tokens": at(image_tokens), "init": kfp_io.weights(init, mode), "preset": preset,
        "schedule": {"epochs": epochs or None, "max_steps": max_steps},
        "run": {"work_dir": at(model), "batch_size": batch_size or None, "workers": workers,
                "tracking_uri": tracking_uri}},
        Placement(mode=mode, nodes=nodes, elastic_min_nodes=min_nodes, gpus_per_node=gpus_per_node,
                  procs_per_node=procs_per_node, namespace=namespace, image=image, timeout_s=timeout_s))
    kfp_io.record_weights(model, result["weights"])
    kfp_io.publish(result, metrics, report, "pretrain-joint")
