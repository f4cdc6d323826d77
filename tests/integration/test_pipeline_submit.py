"""`bevt pipeline submit` (kfp.Client) against a fake KFP API server on loopback.

The real client code runs (kfp.Client, kfp_server_api, HTTP); the fake records the requests, so
the test sees the experiment lookup, the run it creates (the compiled pipeline, the parameters,
caching, service account, pipeline root) and the credentials it sends.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from bevt_core.config import from_dict
from pipelines import cli as pipeline_cli

PARAMS = {
    "pretrain_videos": "s3://b/k400/pt.txt",
    "images": "s3://b/in1k/list.txt",
    "finetune_tasks": [
        {"run_label": "k400", "train_list": "s3://b/k400/train.txt", "val_list": "s3://b/k400/val.txt"},
        {
            "run_label": "ssv2",
            "train_list": "s3://b/ssv2/train.txt",
            "val_list": "s3://b/ssv2/val.txt",
            "preset": "ssv2-swin-b",
            "frame_interval": 1,
            "register_as": "bevt-ssv2",
        },
    ],
    "nodes": 4,
    "gpus_per_node": 8,
    "tracking_uri": "http://bevt-mlflow:5000",
}


class FakeKfp:
    def __init__(self):
        self.requests: list[tuple[str, str, dict[str, str], dict | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.path.startswith("/apis/v2beta1/experiments") and self.command == "GET":
                    answer = {"experiments": []}
                elif self.path.startswith("/apis/v2beta1/experiments"):
                    answer = {"experiment_id": "exp-1", "display_name": body["display_name"]}
                else:
                    answer = {"run_id": "run-1", "display_name": body["display_name"]}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kfp_api():
    fake = FakeKfp()
    yield fake
    fake.close()


def submit(fake: FakeKfp, **kw) -> pipeline_cli.PipelineResult:
    cfg = from_dict(
        pipeline_cli.PipelineConfig,
        {
            "action": "submit",
            "host": fake.host,
            "params": PARAMS,
            "namespace": "team-ml",
            "experiment": "bevt-k400",
            "run_name": "k400-b",
            "service_account": "bevt-launcher",
            "pipeline_root": "s3://bevt/kfp",
        }
        | kw,
    )
    return pipeline_cli.run(cfg)


def test_submit_creates_the_experiment_and_a_run_of_the_compiled_pipeline(kfp_api, tmp_path, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    result = submit(kfp_api, token="TOKEN-1", caching=False)
    assert result.summary() == f"pipeline submit: run run-1 started on {kfp_api.host}"
    (get_exp, post_exp, post_run) = kfp_api.requests
    assert get_exp[0] == "GET" and "namespace=team-ml" in get_exp[1] and "bevt-k400" in get_exp[1]
    assert post_exp[2]["authorization"] == "Bearer TOKEN-1"
    assert post_exp[3] == {"display_name": "bevt-k400", "namespace": "team-ml"}
    method, path, headers, run = post_run
    assert (method, path, headers["authorization"]) == ("POST", "/apis/v2beta1/runs", "Bearer TOKEN-1")
    assert run["experiment_id"] == "exp-1" and run["display_name"] == "k400-b"
    assert run["service_account"] == "bevt-launcher"
    config = run["runtime_config"]
    assert config["pipeline_root"] == "s3://bevt/kfp"
    assert config["parameters"] == pipeline_cli.arguments(from_dict(pipeline_cli.PipelineParams, PARAMS))
    assert config["parameters"]["nodes"] == 4 and config["parameters"]["distributed_mode"] == "kubernetes"
    assert [t["preset"] for t in config["parameters"]["finetune_tasks"]] == ["k400-swin-b", "ssv2-swin-b"]

    compiled = pipeline_cli.compile_pipeline(str(tmp_path / "ir.yaml"))
    spec, platform = yaml.safe_load_all(Path(compiled).read_text())
    sent = run["pipeline_spec"]
    assert sent["platform_spec"] == platform
    # Caching off for this run: every step's cache switch is turned off in what is sent, the finetune
    # loop's steps included (kfp.Client's own switch misses them); the rest is exactly the compiled pipeline.
    steps = 0
    for sent_dag, dag in zip(pipeline_cli.pipeline_dags(sent["pipeline_spec"]), pipeline_cli.pipeline_dags(spec)):
        for name, task in sent_dag["tasks"].items():
            if "parameterIterator" not in task:  # the loop itself caches nothing
                assert not task.pop("cachingOptions").get("enableCache")
                dag["tasks"][name].pop("cachingOptions")
                steps += 1
    assert steps == 10
    assert sent["pipeline_spec"] == spec


def test_submit_with_a_session_cookie(kfp_api, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_COOKIE", "authservice_session=abc123")
    submit(kfp_api)
    for _, _, headers, _ in kfp_api.requests:
        assert headers["cookie"] == "authservice_session=abc123" and "authorization" not in headers
    spec = kfp_api.requests[-1][3]["pipeline_spec"]["pipeline_spec"]
    assert all(
        t["cachingOptions"]["enableCache"] is True
        for dag in pipeline_cli.pipeline_dags(spec)
        for t in dag["tasks"].values()
        if "parameterIterator" not in t
    )
