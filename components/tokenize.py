"""Precompute tokenizer targets for augmentation views of every sample (``bevt tokenize``).

It reads the shards at ``data`` (a shard step's ``shards_location``), writes the token shards straight to
the ``tokens`` artifact's URI and hands that on as ``tokens_location`` (bevt_core/kube/kfp_io.py)."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("tokenize"), install_kfp_package=False)
def tokenize(
    data: str,
    tokens: Output[Dataset],
    tokens_location: dsl.OutputPath(str),
    metrics: Output[Metrics],
    report: Output[Markdown],
    tokenizer: str = "dalle",
    weights: str = "",
    sha256: str = "",
    views: int = 4,
    crop: int = 224,
    codebook_size: int = 1024,
    fit_samples: int = 256,
    codebook_from: str = "",
    tracking_uri: str = "auto",
    parent_run_id: str = "",
    run_label: str = "",
):
    """``codebook_from`` (tokenizer codebook): the ``tokens_location`` of another tokenize step whose fitted
    codebook to reuse, so the video and image streams share one vocabulary. Only that one file is read."""
    from bevt_core import storage
    from bevt_core.kube import kfp_io
    from bevt_core.stages import tokenize as stage
    from bevt_core.tokenizers import CODEBOOK_FILE

    codebook = storage.join(codebook_from, CODEBOOK_FILE) if codebook_from and tokenizer == "codebook" else ""
    output = kfp_io.uri(tokens)
    cfg = kfp_io.stage_config(
        stage.TokenizeConfig, locals(), input=data, output=output, codebook=codebook, progress=False
    )
    kfp_io.publish(stage.run(cfg), metrics, report, f"tokenize {run_label}")
    kfp_io.hand_over(tokens_location, output)
