"""Multi-view testing of the finetuned recognizer (``bevt evaluate``): top-1/top-5 as Metrics, the
confusion matrix as ClassificationMetrics, an HTML report with the confusion plot.

``weights`` is the one file it needs of the finetune step's work directory (its ``weights_location``) and
``data`` the validation shards' location: neither is an input artifact, so KFP copies nothing into the pod
first (bevt_core/kube/kfp_io.py). The results go straight to the ``results`` artifact's URI."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Metrics, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("evaluate"), install_kfp_package=False)
def evaluate(
    weights: str,
    data: str,
    results: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    preset: str = "k400-swin-b",
    workers: int = 2,
    tracking_uri: str = "auto",
    parent_run_id: str = "",
    run_label: str = "",
):
    import base64
    import json

    from bevt_core import storage
    from bevt_core.kube import kfp_io
    from bevt_core.stages import evaluate as stage

    cfg = kfp_io.stage_config(stage.EvaluateConfig, locals(), output=kfp_io.uri(results))
    result = stage.run(cfg)
    kfp_io.publish(result, metrics, report, f"evaluate {run_label}")
    scores = json.loads(storage.read_bytes(result.files["metrics"]))
    confusion.log_confusion_matrix(scores["classes"], scores["confusion"])
    kfp_io.write_metadata(confusion)
    png = base64.b64encode(storage.read_bytes(result.files["confusion"])).decode()
    with open(report.path, "a") as f:
        f.write(f'<img alt="confusion matrix" src="data:image/png;base64,{png}">')
