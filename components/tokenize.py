"""Precompute tokenizer targets for augmentation views of every sample (``bevt tokenize``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("tokenize"), install_kfp_package=False)
def tokenize(
    data: Input[Dataset],
    tokens: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
    tokenizer: str = "dalle",
    weights: str = "",
    sha256: str = "",
    views: int = 4,
    crop: int = 224,
    codebook_size: int = 1024,
    fit_samples: int = 256,
    codebook_from: Input[Dataset] = None,
    tracking_uri: str = "auto",
    parent_run_id: str = "",
    run_label: str = "",
):
    """``codebook_from`` (tokenizer codebook): the tokens of another tokenize step whose fitted
    codebook to reuse, so the video and image streams share one vocabulary."""
    from bevt_core import storage
    from bevt_core.kube import kfp_io
    from bevt_core.stages import tokenize as stage
    from bevt_core.tokenizers import CODEBOOK_FILE

    fitted = codebook_from is not None and tokenizer == "codebook"
    codebook = storage.join(codebook_from.path, CODEBOOK_FILE) if fitted else ""
    cfg = kfp_io.stage_config(
        stage.TokenizeConfig, locals(), input=data.path, output=tokens.path, codebook=codebook, progress=False
    )
    kfp_io.publish(stage.run(cfg), metrics, report, f"tokenize {run_label}")
