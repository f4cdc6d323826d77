"""Plots, the codebook's drawing of its ids, and the pipeline report, on real photos and a real
(SQLite) MLflow store."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from bevt_core.tokenizers.base import tokenizer_input
from bevt_core.tokenizers.codebook import CodebookTokenizer, fit_codebook, patch_features
from bevt_core.tracking import plots


def decode_png(data: bytes) -> np.ndarray:
    import matplotlib.image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(data), format="png")


@pytest.fixture(scope="module")
def photo(samples) -> np.ndarray:
    """A real photo (the first of the sample image set), centre-cropped to 64x64 RGB."""
    rel = samples.images_list.read_text().split()[0]
    img = cv2.cvtColor(cv2.imread(str(samples.images_root / rel)), cv2.COLOR_BGR2RGB)
    s = min(img.shape[:2])
    y, x = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
    return cv2.resize(img[y : y + s, x : x + s], (64, 64), interpolation=cv2.INTER_AREA)


def test_codebook_draws_its_ids_back_as_the_patches_they_stand_for(photo):
    small = tokenizer_input(photo[None])  # (1, 32, 32, 3): a 4x4 grid of 8x8 patches
    feats = patch_features(small).reshape(-1, patch_features(small).shape[-1])
    # As many entries as patches: every patch is its own centroid, so drawing its id is lossless.
    tok = CodebookTokenizer.from_centroids(fit_codebook(feats, len(feats), 5, 0), device="cpu")
    ids = tok.tokenize(photo[None])[0].astype(np.int64)
    table = tok.patches()
    drawn = table[ids].transpose(0, 2, 1, 3, 4).reshape(32, 32, 3)
    np.testing.assert_array_equal(drawn, small[0])


def test_training_curves_have_a_panel_per_quantity():
    history = [
        {
            "step": s,
            "loss": 6 - s / 10,
            "loss_image": 6 - s / 8,
            "acc_image": s / 100,
            "lr": 1e-3 * s / 20,
            "samples_per_s": 50.0 + s,
            "memory_gb": 1.2,
            "grad_norm": 2.0,
        }
        for s in range(1, 21)
    ]
    png = plots.training_curves(history)
    assert decode_png(png).shape[0] == 3 * 3 * 90  # 6 panels in 2 columns: 3 rows of 3 inches at 90 dpi
    only_loss = plots.training_curves([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    assert decode_png(only_loss).shape[0] == 3 * 90
    assert plots.training_curves([]) is None


def test_rejects_histogram_and_per_class_accuracy():
    assert decode_png(plots.rejects_histogram({"corrupt": 3, "too_short": 1}, 40)).ndim == 3
    assert decode_png(plots.rejects_histogram({}, 40)).ndim == 3  # nothing rejected still says so
    assert decode_png(plots.per_class_accuracy([0.5, None, 1.0], ["a", "b", "c"])).ndim == 3


def test_masked_prediction_figure_with_drawn_tokens(photo):
    small = tokenizer_input(photo[None])
    feats = patch_features(small).reshape(-1, patch_features(small).shape[-1])
    tok = CodebookTokenizer.from_centroids(fit_codebook(feats, 8, 5, 0), device="cpu")
    target = tok.tokenize(photo[None])[0].astype(np.int64)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    predicted = target.copy()
    predicted[1, 1] = (predicted[1, 1] + 1) % 8
    table = tok.patches()

    def draw(ids):
        return table[ids].transpose(0, 2, 1, 3, 4).reshape(32, 32, 3)

    example = plots.MaskedExample(photo, mask, target, predicted, draw(target), draw(predicted))
    with_pixels = decode_png(plots.masked_prediction([example, example], 8, "t"))
    ids_only = decode_png(plots.masked_prediction([plots.MaskedExample(photo, mask, target, predicted)], 8, "t"))
    assert with_pixels.shape[1] > ids_only.shape[1]  # two more columns: the drawn tokens


def test_pipeline_report_from_a_real_store(tmp_path):
    import mlflow

    from bevt_core.tracking import pipeline_run as pipeline
    from bevt_core.tracking import tracker as tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = pipeline.open_run(uri, "exp", "pipeline", {"recipe": "tiny"}, "bevt pipeline run-local")
    first = tracking.start(uri, None, "ignored", "shard", {"input": "x"}, True, parent_run_id=parent)
    first.metrics({"items": 10.0, "ok": 9.0}, 0)
    first.artifact_bytes("plots/rejects.png", plots.rejects_histogram({"corrupt": 1}, 10))
    first.finish()
    second = tracking.start(uri, None, "ignored", "tokenize", {}, True, parent_run_id=parent)
    second.tags({"bevt.upstream_run_ids": first.run_id})
    second.finish("FAILED")
    page = pipeline.close_run(uri, parent)

    client = mlflow.MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "FAILED"  # a stage failed
    assert run.data.tags["mlflow.source.name"] == "bevt pipeline run-local"  # MLflow's Source column
    assert client.get_run(first.run_id).info.experiment_id == run.info.experiment_id  # nested in its experiment
    assert f"<td>shard ({first.run_id[:8]})</td><td>FINISHED</td>" in page
    assert f"<td>tokenize ({second.run_id[:8]})</td><td>FAILED</td>" in page
    assert "items 10, ok 9" in page
    assert f"<td>shard ({first.run_id[:8]})</td><td>{second.run_id}" in page  # tokenize read shard's output
    assert page.count("data:image/png;base64,") == 1
    assert [a.path for a in client.list_artifacts(parent)] == ["report.html"]
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database
