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
    from bevt_core.config import from_dict
    from bevt_core.kube.kfp_io import publish, tracking
    from bevt_core.stages import tokenize as stage
    from bevt_core.tokenizers import CODEBOOK_FILE

    cfg = from_dict(
        stage.TokenizeConfig,
        {
            "input": data.path,
            "output": tokens.path,
            "tokenizer": tokenizer,
            "weights": weights,
            "sha256": sha256,
            "views": views,
            "crop": crop,
            "codebook_size": codebook_size,
            "fit_samples": fit_samples,
            "codebook": (
                storage.join(codebook_from.path, CODEBOOK_FILE)
                if codebook_from is not None and tokenizer == "codebook"
                else ""
            ),
            "progress": False,
            "tracking": tracking(tracking_uri, parent_run_id, run_label),
        },
    )
    publish(stage.run(cfg), metrics, report, "tokenize")
