"""The BEVT pipeline: shard -> tokenize -> pretrain-image -> pretrain-joint (PyTorchJob) -> finetune -> evaluate.

Run-time parameters are :class:`pipelines.cli.PipelineParams` (same names and
defaults; a test checks). Cluster settings that KFP fixes at compile time (GPU accelerator, node
selection, tolerations, /dev/shm, Secrets and ConfigMap as env, retries, resources) come from
:data:`CLUSTER`; the local runner ignores them.
"""

from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes

from bevt_core.kube.manifests import ENV_CONFIG_MAP, GPU_NODE_SELECTOR, GPU_TOLERATIONS, S3_SECRET
from components.evaluate import evaluate
from components.finetune import finetune
from components.pretrain_image import pretrain_image
from components.pretrain_joint import pretrain_joint
from components.shard import shard_images, shard_videos
from components.tokenize import tokenize
from pipelines.params import PipelineParams, takes


@dataclass(frozen=True)
class ClusterSettings:
    accelerator: str = "nvidia.com/gpu"
    gpus_per_step: int = 1  # tokenize, pretrain-image and evaluate run on one GPU
    gpu_node_selector: tuple[tuple[str, str], ...] = GPU_NODE_SELECTOR
    gpu_tolerations: tuple[tuple[str, str, str], ...] = GPU_TOLERATIONS
    shm_size: str = "16Gi"
    data_retries: int = 2  # shard and tokenize resume where they stopped, so a retry redoes only the rest
    train_retries: int = 1  # training resumes from its last checkpoint (run.resume=auto)
    env_keys: tuple[str, ...] = (
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
    )


CLUSTER = ClusterSettings()


def _common(task: dsl.PipelineTask, cpu: str, memory: str, retries: int) -> dsl.PipelineTask:
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    # S3 credentials by reference; endpoints and the tracking URI from the bevt-env ConfigMap (k8s/base).
    kubernetes.use_secret_as_env(
        task, S3_SECRET, {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}
    )
    kubernetes.use_config_map_as_env(task, ENV_CONFIG_MAP, {k: k for k in CLUSTER.env_keys}, optional=True)
    return task


def _gpu(task: dsl.PipelineTask) -> dsl.PipelineTask:
    task.set_accelerator_type(CLUSTER.accelerator).set_accelerator_limit(CLUSTER.gpus_per_step)
    for key, value in CLUSTER.gpu_node_selector:
        kubernetes.add_node_selector(task, key, value)
    for key, value, effect in CLUSTER.gpu_tolerations:
        kubernetes.add_toleration(
            task, key=key, operator="Equal" if value else "Exists", value=value or None, effect=effect
        )
    # DataLoader workers hand batches over through /dev/shm (64 MiB by default in a pod).
    kubernetes.empty_dir_mount(task, "dshm", "/dev/shm", medium="Memory", size_limit=CLUSTER.shm_size)
    return task


@dsl.pipeline(name="bevt", description="BEVT: BERT pretraining of video transformers, end to end.")
@takes(PipelineParams)
def bevt_pipeline(p: Any) -> None:
    # Every step's MLflow run goes to one store and nests under the pipeline's parent run.
    tracked = dict(tracking_uri=p.tracking_uri, parent_run_id=p.parent_run_id)
    pt_videos = _common(
        shard_videos(
            input_list=p.pretrain_videos,
            root=p.videos_root,
            frame_interval=p.pretrain_frame_interval,
            short_side=p.short_side,
            run_label="pretraining videos",
            **tracked,
        ),
        "8",
        "16Gi",
        CLUSTER.data_retries,
    ).set_display_name("shard pretraining videos")
    pt_images = _common(
        shard_images(input_list=p.images, root=p.images_root, short_side=p.short_side, run_label="images", **tracked),
        "8",
        "16Gi",
        CLUSTER.data_retries,
    ).set_display_name("shard images")
    tokenizer_args = dict(
        tokenizer=p.tokenizer,
        weights=p.tokenizer_weights,
        sha256=p.tokenizer_sha256,
        views=p.views,
        crop=p.crop,
        codebook_size=p.codebook_size,
        **tracked,
    )
    video_tokens = _gpu(
        _common(
            tokenize(data=pt_videos.outputs["shards"], run_label="videos", **tokenizer_args),
            "8",
            "32Gi",
            CLUSTER.data_retries,
        )
    ).set_display_name("tokenize videos")
    # The image stream reuses the codebook fitted on the videos: one vocabulary for the shared lm_head.
    image_tokens = _gpu(
        _common(
            tokenize(
                data=pt_images.outputs["shards"],
                codebook_from=video_tokens.outputs["tokens"],
                run_label="images",
                **tokenizer_args,
            ),
            "8",
            "32Gi",
            CLUSTER.data_retries,
        )
    ).set_display_name("tokenize images")
    train_args = dict(max_steps=p.max_steps, workers=p.workers, log_every=p.log_every, **tracked)
    image_model = _gpu(
        _common(
            pretrain_image(
                images=pt_images.outputs["shards"],
                image_tokens=image_tokens.outputs["tokens"],
                preset=p.recipe,
                epochs=p.image_epochs,
                **train_args,
            ),
            "8",
            "64Gi",
            CLUSTER.train_retries,
        )
    ).set_display_name("pretrain image stream")
    placement = dict(
        mode=p.distributed_mode, gpus_per_node=p.gpus_per_node, namespace=p.namespace, image=p.trainer_image
    )
    # The launcher steps only watch their PyTorchJob: small, no GPU. In local mode torchrun runs inside them.
    joint = _common(
        pretrain_joint(
            videos=pt_videos.outputs["shards"],
            video_tokens=video_tokens.outputs["tokens"],
            images=pt_images.outputs["shards"],
            image_tokens=image_tokens.outputs["tokens"],
            init=image_model.outputs["model"],
            preset=p.recipe,
            epochs=p.joint_epochs,
            nodes=p.nodes,
            min_nodes=p.min_nodes,
            procs_per_node=p.procs_per_node,
            **train_args,
            **placement,
        ),
        "1",
        "2Gi",
        CLUSTER.train_retries,
    ).set_display_name("pretrain joint")
    # Every downstream task from the one pretrained model: items are FinetuneTask mappings. (Their field
    # names avoid `name` and `task`, which are attributes of the loop variable itself.)
    with dsl.ParallelFor(p.finetune_tasks) as task:
        shard_task = dict(
            root=task.root,
            classes=task.classes,
            frame_interval=task.frame_interval,
            short_side=p.short_side,
            run_label=task.run_label,
            **tracked,
        )
        ft_train = _common(
            shard_videos(input_list=task.train_list, **shard_task), "8", "16Gi", CLUSTER.data_retries
        ).set_display_name("shard finetune train")
        ft_val = _common(
            shard_videos(input_list=task.val_list, **shard_task), "8", "16Gi", CLUSTER.data_retries
        ).set_display_name("shard finetune val")
        tuned = _common(
            finetune(
                train=ft_train.outputs["shards"],
                val=ft_val.outputs["shards"],
                init=joint.outputs["model"],
                preset=task.preset,
                epochs=p.finetune_epochs,
                nodes=p.finetune_nodes,
                procs_per_node=p.finetune_procs_per_node,
                register_as=task.register_as,
                run_label=task.run_label,
                **train_args,
                **placement,
            ),
            "1",
            "2Gi",
            CLUSTER.train_retries,
        ).set_display_name("finetune")
        _gpu(
            _common(
                evaluate(
                    model=tuned.outputs["model"],
                    data=ft_val.outputs["shards"],
                    preset=task.preset,
                    workers=p.workers,
                    run_label=task.run_label,
                    **tracked,
                ),
                "8",
                "32Gi",
                CLUSTER.data_retries,
            )
        ).set_display_name("evaluate")
