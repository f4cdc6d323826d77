"""Multi-view testing of the finetuned recognizer (``bevt evaluate``): top-1/top-5 as Metrics, the
confusion matrix as ClassificationMetrics, an HTML report with the confusion plot."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from bevt_core.images import for_stage


@dsl.component(base_image=for_stage("evaluate"), install_kfp_package=False)
def evaluate(
    model: Input[Model],
    data: Input[Dataset],
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

    cfg = kfp_io.stage_config(
        stage.EvaluateConfig, locals(), weights=kfp_io.weights(model), data=data.path, output=results.path
    )
    result = stage.run(cfg)
    kfp_io.publish(result, metrics, report, f"evaluate {run_label}")
    scores = json.loads(storage.read_bytes(result.files["metrics"]))
    confusion.log_confusion_matrix(scores["classes"], scores["confusion"])
    kfp_io.write_metadata(confusion)
    png = base64.b64encode(storage.read_bytes(result.files["confusion"])).decode()
    with open(report.path, "a") as f:
        f.write(f'<img alt="confusion matrix" src="data:image/png;base64,{png}">')
