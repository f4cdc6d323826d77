"""The BEVT pipeline: shard -> tokenize -> pretrain-image -> pretrain-joint (PyTorchJob) -> finetune -> evaluate.

Run-time parameters are the fields of :class:`pipelines.params.PipelineParams`. Cluster settings that
KFP fixes at compile time (GPU accelerator, node selection, tolerations, /dev/shm, Secrets and ConfigMap
as env, retries, resources, scratch space, the finetune loop's parallelism) come from :data:`CLUSTER`, the
step sizes and :func:`bevt_pipeline`'s argument; the local runner ignores all but the parallelism.

Data flows by location: every step writes its datasets and models straight to its output artifacts'
object-store URIs and hands the locations on as output parameters (``shards_location``,
``tokens_location``, ``weights_location``), so KFP's launcher copies no data into any pod
(bevt_core/kube/kfp_io.py says why). The only input artifact is the one-line file that carries the
pretrained weights' location into the finetune loop (kfp_io.handed_over). A pod's local disk holds only
scratch: /tmp, an emptyDir whose size limit is the step's :attr:`Size.scratch`. KFP v2 cannot put an
``ephemeral-storage`` request on a step (its ResourceSpec has CPU, memory and accelerator only;
kubeflow/pipelines#11137), so the size limit is what bounds it: a step that outgrows it is evicted, rather
than filling the node.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes

from bevt_core.kube.manifests import ENV_CONFIG_MAP, ENV_KEYS, GPU_NODE_SELECTOR, GPU_TOLERATIONS, S3_SECRET
from components.evaluate import evaluate
from components.finetune import finetune
from components.pretrain_image import pretrain_image
from components.pretrain_joint import pretrain_joint
from components.shard import shard
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


CLUSTER = ClusterSettings()


@dataclass(frozen=True)
class Size:
    """What a step asks of its node."""

    cpu: str
    memory: str
    retries: int
    scratch: str  # the size limit of its /tmp emptyDir: temporary files only, no data (module docstring)
    gpu: bool = False


# Shard stages each tar in /tmp before it goes up (a few hundred MB per worker).
DATA = Size("8", "16Gi", CLUSTER.data_retries, scratch="20Gi")
TOKENIZE = Size("8", "32Gi", CLUSTER.data_retries, scratch="20Gi", gpu=True)
# MLflow copies logged files and registered models through /tmp; torch.compile keeps its cache there.
TRAIN = Size("8", "64Gi", CLUSTER.train_retries, scratch="50Gi", gpu=True)
EVALUATE = Size("8", "32Gi", CLUSTER.data_retries, scratch="10Gi", gpu=True)
# The launcher steps only watch their PyTorchJob: small, no GPU. In local mode torchrun runs inside them.
# Finetune registers its model in MLflow, which packs the weights in /tmp.
LAUNCHER = Size("1", "2Gi", CLUSTER.train_retries, scratch="10Gi")


def _gpu(task: dsl.PipelineTask) -> None:
    task.set_accelerator_type(CLUSTER.accelerator).set_accelerator_limit(CLUSTER.gpus_per_step)
    for key, value in CLUSTER.gpu_node_selector:
        kubernetes.add_node_selector(task, key, value)
    for key, value, effect in CLUSTER.gpu_tolerations:
        operator = "Equal" if value else "Exists"
        kubernetes.add_toleration(task, key=key, operator=operator, value=value or None, effect=effect)
    # DataLoader workers hand batches over through /dev/shm (64 MiB by default in a pod).
    kubernetes.empty_dir_mount(task, "dshm", "/dev/shm", medium="Memory", size_limit=CLUSTER.shm_size)


def step(task: dsl.PipelineTask, name: str, size: Size) -> dsl.PipelineTask:
    """``task`` sized, retried (every stage resumes where it stopped) and given its credentials."""
    task.set_display_name(name)
    task.set_cpu_request(size.cpu).set_cpu_limit(size.cpu).set_memory_request(size.memory)
    task.set_memory_limit(size.memory)
    task.set_retry(num_retries=size.retries, backoff_duration="60s", backoff_factor=2.0)
    # S3 credentials by reference; endpoints and the tracking URI from the bevt-env ConfigMap (k8s/base).
    keys = {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}
    kubernetes.use_secret_as_env(task, S3_SECRET, keys)
    kubernetes.use_config_map_as_env(task, ENV_CONFIG_MAP, {k: k for k in ENV_KEYS}, optional=True)
    kubernetes.empty_dir_mount(task, "tmp", "/tmp", size_limit=size.scratch)
    if size.gpu:
        _gpu(task)
    return task


def bevt_pipeline(finetune_parallelism: int) -> Callable[..., None]:
    """The pipeline, its finetune loop running ``finetune_parallelism`` tasks at a time (0: all at once).
    A ParallelFor's parallelism is fixed when KFP compiles (the IR's ``iteratorPolicy.parallelismLimit`` is a
    number; ``dsl.ParallelFor`` refuses a pipeline parameter), so it is an argument here, not a run parameter."""

    def body(p: Any) -> None:
        _steps(p, finetune_parallelism)

    return dsl.pipeline(name="bevt", description="BEVT: BERT pretraining of video transformers, end to end.")(
        takes(PipelineParams)(body)
    )


def _steps(p: Any, finetune_parallelism: int) -> None:
    # Every step's MLflow run goes to one store and nests under the pipeline's parent run.
    tracked = dict(tracking_uri=p.tracking_uri, parent_run_id=p.parent_run_id)
    videos = step(
        shard(
            input_list=p.pretrain_videos,
            root=p.videos_root,
            frame_interval=p.pretrain_frame_interval,
            short_side=p.short_side,
            run_label="pretraining videos",
            **tracked,
        ),
        "shard pretraining videos",
        DATA,
    ).outputs["shards_location"]
    images = step(
        shard(
            input_list=p.images,
            root=p.images_root,
            modality="image",
            short_side=p.short_side,
            samples_per_shard=256,
            run_label="images",
            **tracked,
        ),
        "shard images",
        DATA,
    ).outputs["shards_location"]
    tokenizing = dict(
        tokenizer=p.tokenizer,
        weights=p.tokenizer_weights,
        sha256=p.tokenizer_sha256,
        views=p.views,
        crop=p.crop,
        codebook_size=p.codebook_size,
        **tracked,
    )
    video_tokens = step(tokenize(data=videos, run_label="videos", **tokenizing), "tokenize videos", TOKENIZE).outputs[
        "tokens_location"
    ]
    # The image stream reuses the codebook fitted on the videos: one vocabulary for the shared lm_head.
    image_tokens = step(
        tokenize(data=images, codebook_from=video_tokens, run_label="images", **tokenizing), "tokenize images", TOKENIZE
    ).outputs["tokens_location"]
    training = dict(max_steps=p.max_steps, workers=p.workers, log_every=p.log_every, **tracked)
    image_weights = step(
        pretrain_image(images=images, image_tokens=image_tokens, preset=p.recipe, epochs=p.image_epochs, **training),
        "pretrain image stream",
        TRAIN,
    ).outputs["weights_location"]
    placement = dict(
        mode=p.distributed_mode,
        gpus_per_node=p.gpus_per_node,
        namespace=p.namespace,
        image=p.trainer_image,
        backend=p.training_backend,
        queue_name=p.queue_name,
        volcano_queue=p.volcano_queue,
        stall_timeout_s=p.stall_timeout_s,
    )
    joint_weights = step(
        pretrain_joint(
            videos=videos,
            video_tokens=video_tokens,
            images=images,
            image_tokens=image_tokens,
            init=image_weights,
            preset=p.recipe,
            epochs=p.joint_epochs,
            nodes=p.nodes,
            min_nodes=p.min_nodes,
            procs_per_node=p.procs_per_node,
            **training,
            **placement,
        ),
        "pretrain joint",
        LAUNCHER,
    ).outputs["weights_location"]
    # Every downstream task from the one pretrained model: items are FinetuneTask mappings. (Their field
    # names avoid `name` and `task`, which are attributes of the loop variable itself.)
    with dsl.ParallelFor(p.finetune_tasks, parallelism=finetune_parallelism) as task:
        clips = dict(
            root=task.root,
            classes=task.classes,
            frame_interval=task.frame_interval,
            short_side=p.short_side,
            run_label=task.run_label,
            **tracked,
        )
        train = step(shard(input_list=task.train_list, **clips), "shard finetune train", DATA).outputs[
            "shards_location"
        ]
        val = step(shard(input_list=task.val_list, **clips), "shard finetune val", DATA).outputs["shards_location"]
        tuned = step(
            finetune(
                train=train,
                val=val,
                init=joint_weights,
                preset=task.preset,
                epochs=p.finetune_epochs,
                nodes=p.finetune_nodes,
                procs_per_node=p.finetune_procs_per_node,
                register_as=task.register_as,
                run_label=task.run_label,
                **training,
                **placement,
            ),
            "finetune",
            LAUNCHER,
        ).outputs["weights_location"]
        step(
            evaluate(
                weights=tuned, data=val, preset=task.preset, workers=p.workers, run_label=task.run_label, **tracked
            ),
            "evaluate",
            EVALUATE,
        )
