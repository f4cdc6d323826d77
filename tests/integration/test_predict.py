"""Predictions from a trained model: ``bevt predict`` from a checkpoint and from the registry of a real
MLflow server, and the registered model served by ``mlflow models serve``.

The model is the scene task's tiny recognizer (``scene_model``); every prediction must be exactly what
``bevt evaluate`` computed for the same video, and the classes must be right on most held-out clips.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from bevt_core.loading.clips import clip_stream
from bevt_core.loading.streams import loader
from bevt_core.serving.predictor import Predictor
from bevt_core.train import evaluation
from tests.conftest import bevt_cli
from tests.integration.conftest import MODEL_NAME
from tests.services import free_port, stop_group

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictor(scene_model) -> Predictor:
    return Predictor.load(scene_model.weights)


def predict_cli(video: Path, model_args: list[str], env: dict, tmp_path: Path, top_k: int = 3) -> dict:
    out = tmp_path / f"{video.stem}.json"
    proc = subprocess.run(
        bevt_cli() + ["predict", str(video), *model_args, "--top-k", str(top_k), "--result-json", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    assert "1. " in proc.stdout
    return json.loads(out.read_text())


def test_predict_reproduces_evaluation_on_held_out_clips(scene_model, predictor, tmp_path, cli_env):
    # Every val video through the predictor, from its mp4: the probabilities are evaluation's for the
    # same views read from the val shards, and the confusion matrix is exactly the evaluate stage's.
    confusion = [[0] * len(predictor.classes) for _ in predictor.classes]
    probs = {}
    for video, label in scene_model.videos:
        probs[video] = predictor.probabilities(str(video))
        confusion[label][int(probs[video].argmax())] += 1
    shards = clip_stream(str(scene_model.val), predictor.preprocessing.clip, "test", 1, 0, 1, 0)
    from_shards, _ = evaluation.predict(predictor.model, loader(shards, 0), predictor.device)
    torch.testing.assert_close(torch.stack(list(probs.values())), from_shards, rtol=0, atol=1e-6)
    evaluated = json.loads(scene_model.metrics.read_text())
    assert confusion == evaluated["confusion"]
    accuracy = sum(confusion[c][c] for c in range(len(confusion))) / len(scene_model.videos)
    print(f"val top-1 {accuracy:.1%} over {len(scene_model.videos)} clips (chance {1 / len(confusion):.1%})")
    assert accuracy == pytest.approx(evaluated["top1"]) and accuracy > 0.5

    # The CLI on a few held-out clips (the first clip of every third class): the printed classes and
    # probabilities are the predictor's, and right on a clear majority.
    few = [next(v for v, y in scene_model.videos if y == c) for c in range(0, len(predictor.classes), 3)]
    right = 0
    for video in few:
        result = predict_cli(video, ["--checkpoint", scene_model.weights], cli_env, tmp_path)
        expected = probs[video].topk(3)
        assert [name for name, _ in result["top"]] == [predictor.classes[i] for i in expected.indices.tolist()]
        torch.testing.assert_close(torch.tensor([p for _, p in result["top"]]), expected.values, rtol=0, atol=1e-6)
        right += result["top"][0][0] == video.parent.name
    print(f"bevt predict: {right}/{len(few)} clips right")
    assert right >= 0.7 * len(few)


def test_predict_from_the_registry(scene_model, predictor, mlflow_server, tmp_path, cli_env):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    name, version = scene_model.uri.split("/")[-2:]
    assert name == MODEL_NAME
    mv = client.get_model_version(name, version)
    assert mv.run_id == scene_model.finetune_run and mv.status == "READY"
    model = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(name, version),
            tracking_uri=mlflow_server.uri,
            dst_path=str(tmp_path / "model"),
        )
    )
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "string", "name": "video", "required": True}]
    assert [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])] == ["video", "rank", "class", "probability"]
    example = json.loads((model / mlmodel["saved_input_example_info"]["artifact_path"]).read_text())
    assert Path(example["data"][0][0]).is_file()  # a real training video, which MLflow ran when logging
    assert (model / "artifacts" / "recognizer.pt").is_file() and (model / "code" / "bevt_core" / "serving").is_dir()

    video = scene_model.videos[0][0]
    result = predict_cli(video, ["--model", scene_model.uri], cli_env | mlflow_server.env(), tmp_path, top_k=2)
    expected = predictor.probabilities(str(video)).topk(2)
    assert [n for n, _ in result["top"]] == [predictor.classes[i] for i in expected.indices.tolist()]
    torch.testing.assert_close(torch.tensor([p for _, p in result["top"]]), expected.values, rtol=0, atol=1e-6)


def test_mlflow_models_serve(scene_model, predictor, mlflow_server, tmp_path, cli_env):
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        scene_model.uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # It starts `uvicorn` from PATH, as from an activated venv.
    env = cli_env | mlflow_server.env() | {"PATH": f"{Path(sys.executable).parent}:{cli_env['PATH']}"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:  # not up yet
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        videos = [v for v, _ in scene_model.videos[:2]]
        body = json.dumps({"dataframe_records": [{"video": str(v)} for v in videos], "params": {"top_k": 3}})
        request = urllib.request.Request(url + "/invocations", body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            rows = json.loads(r.read())["predictions"]
        missing = json.dumps({"dataframe_records": [{"video": str(tmp_path / "nope.mp4")}]}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(url + "/invocations", missing, {"Content-Type": "application/json"}), timeout=60
            )
        assert refused.value.code == 400
        assert "video: " in (error := json.loads(refused.value.read())["message"]) and "does not exist" in error
    finally:
        stop_group(proc)
        log.close()
    print(json.dumps(rows, indent=1))
    assert [(row["video"], row["rank"]) for row in rows] == [(str(v), k) for v in videos for k in (1, 2, 3)]
    for video in videos:
        expected = predictor.probabilities(str(video)).topk(3)
        got = [row for row in rows if row["video"] == str(video)]
        assert [row["class"] for row in got] == [predictor.classes[i] for i in expected.indices.tolist()]
        torch.testing.assert_close(
            torch.tensor([row["probability"] for row in got], dtype=torch.float32), expected.values, rtol=0, atol=1e-6
        )


def test_predict_errors_name_the_problem(scene_model, samples, mlflow_server, tmp_path, capsys, cli_env):
    from bevt_core.cli import main

    bad = {kind: path for path, kind in samples.bad_inputs}
    video, weights = str(scene_model.videos[0][0]), scene_model.weights
    cases = [
        ([str(tmp_path / "nope.mp4"), "--checkpoint", weights], "video: ", "the file does not exist"),
        ([str(bad["not_a_video"]), "--checkpoint", weights], "video: ", "neither decoder recognises the file"),
        ([str(bad["truncated"]), "--checkpoint", weights], "video: ", "no frame can be decoded"),
        ([str(bad["one_frame"]), "--checkpoint", weights], "video: ", "fewer decodable frames than"),
        ([video, "--checkpoint", str(scene_model.val / "manifest.parquet")], "checkpoint: ", "is not a checkpoint"),
        ([video, "--checkpoint", str(tmp_path / "missing.pt")], "checkpoint: ", "does not exist"),
        ([video], "model: ", "give exactly one of --model and --checkpoint"),
    ]
    for args, field, message in cases:
        with pytest.raises(SystemExit) as exit:
            main(["predict", *args])
        err = capsys.readouterr().err
        print(err.strip())
        assert exit.value.code == 2 and f"bevt predict: error: {field}" in err and message in err, err
    # A model the registry does not hold, from a separate process like a user's.
    proc = subprocess.run(
        bevt_cli() + ["predict", video, "--model", f"models:/{MODEL_NAME}/99"],
        capture_output=True,
        text=True,
        env=cli_env | mlflow_server.env(),
    )
    print(proc.stderr.strip())
    assert proc.returncode == 2 and "error: model: cannot load models:/" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
