"""`bevt pipeline submit` (kfp.Client) against a fake KFP API server on loopback.

The real client code runs (kfp.Client, kfp_server_api, HTTP); the fake records the requests, so
the test sees the backend version check (healthz), the experiment lookup, the run it creates (the
compiled pipeline, the parameters, caching, service account, pipeline root) and the credentials it sends.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from bevt_core.cli import main
from bevt_core.config import ConfigError, from_dict
from pipelines import cli as pipeline_cli
from tests.integration.test_kube_launcher import FakeKube

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


HEALTHZ = "/apis/v2beta1/healthz"
# What the API server answers on healthz (backend/src/apiserver/main.go), and what the Kubeflow Pipelines
# UI answers in front of it (frontend/server/handlers/healthz.ts).
API_SERVER = {"commit_sha": "0a1b2c3", "tag_name": "2.15.0", "multi_user": True, "pipeline_store": "database"}


def through_ui(tag: str) -> dict:
    return {"apiServerCommitHash": "0a1b2c3", "apiServerTagName": tag, "apiServerReady": True, "frontendTagName": tag}


class FakeKfp:
    def __init__(self):
        self.requests: list[tuple[str, str, dict[str, str], dict | None]] = []
        self.healthz: dict | None = API_SERVER  # None: the endpoint is not there (404)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.path == HEALTHZ and fake.healthz is None:
                    self.send_error(404)
                    return
                if self.path == HEALTHZ:
                    answer = fake.healthz
                elif self.path.startswith("/apis/v2beta1/experiments") and self.command == "GET":
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

    def calls(self) -> list[tuple[str, str, dict[str, str], dict | None]]:
        """The requests besides the version check."""
        return [r for r in self.requests if r[1] != HEALTHZ]


@pytest.fixture(autouse=True)
def no_kubeconfig(monkeypatch, tmp_path):
    """This machine's own kubeconfig, if any, must not decide the training-backend check."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


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
    assert result.summary() == (
        f"pipeline submit: run run-1 started on {kfp_api.host} "
        "(KFP backend 2.15.0; training backend auto not checked (no kubeconfig))"
    )
    health, *_ = kfp_api.requests
    assert health[:2] == ("GET", HEALTHZ) and health[2]["authorization"] == "Bearer TOKEN-1"
    (get_exp, post_exp, post_run) = kfp_api.calls()
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

    compiled = pipeline_cli.compile_pipeline(str(tmp_path / "ir.yaml"), 1)
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


@pytest.mark.parametrize(
    "answer", [{**API_SERVER, "tag_name": "2.5.0"}, through_ui("2.14.3")], ids=["api-server", "ui"]
)
def test_submit_refuses_an_older_backend_before_creating_anything(kfp_api, tmp_path, capsys, answer):
    kfp_api.healthz = answer
    config = tmp_path / "submit.yaml"
    config.write_text(yaml.safe_dump({"params": PARAMS}))
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "submit", "--host", kfp_api.host, "--config", str(config)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    tag = answer.get("tag_name") or answer["apiServerTagName"]
    assert f"backend at {kfp_api.host} is {tag}; this pipeline needs 2.15.0 or later" in error
    assert "optional bevt-env ConfigMap" in error and "--no-check-backend" in error
    if tag == "2.5.0":  # each feature it lacks, with the release that brought it
        assert "2.14.0: retries with backoff in every step" in error and "2.4.0" not in error
    assert kfp_api.calls() == []


@pytest.mark.parametrize(
    "answer",
    [{"commit_sha": "unknown", "tag_name": "unknown", "multi_user": False}, through_ui(""), None],
    ids=["unknown-build", "ui-without-api-server", "no-endpoint"],
)
def test_submit_goes_ahead_when_the_backend_tells_no_version(kfp_api, monkeypatch, answer):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    kfp_api.healthz = answer
    result = submit(kfp_api)
    assert "(KFP backend version not reported, not checked;" in result.detail
    assert [r[:2] for r in kfp_api.calls()][-1] == ("POST", "/apis/v2beta1/runs")


def test_submit_skips_the_check_when_told(kfp_api, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    kfp_api.healthz = {**API_SERVER, "tag_name": "2.2.0"}
    result = submit(kfp_api, check_backend=False)
    assert result.detail.endswith("(KFP backend and training backend not checked)")
    assert HEALTHZ not in [r[1] for r in kfp_api.requests]
    assert kfp_api.requests[-1][1] == "/apis/v2beta1/runs"


def test_submit_compiles_the_loop_with_the_parallelism_asked(kfp_api, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    submit(kfp_api, finetune_parallelism=2)
    spec = kfp_api.requests[-1][3]["pipeline_spec"]["pipeline_spec"]
    (loop,) = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 2}


def kubeconfig_of(fake: FakeKube, path: Path) -> Path:
    server = fake.configuration().host
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "T"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


def test_submit_refuses_a_training_backend_the_cluster_lacks_before_creating_anything(kfp_api, tmp_path, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    with FakeKube([]) as cluster:
        cluster.served = {"trainer.kubeflow.org/v1alpha1": ("TrainJob", "trainjobs")}  # Kubeflow 1.11+
        kubeconfig = str(kubeconfig_of(cluster, tmp_path / "kubeconfig"))
        with pytest.raises(ConfigError, match=r"params.training_backend: this cluster has no PyTorchJob"):
            submit(kfp_api, kubeconfig=kubeconfig, params=PARAMS | {"training_backend": "pytorchjob"})
        assert kfp_api.calls() == []
        result = submit(kfp_api, kubeconfig=kubeconfig)  # auto: what it has
        assert result.detail.endswith("; training jobs: TrainJob (trainer.kubeflow.org/v1alpha1))")
        assert kfp_api.calls()[-1][3]["runtime_config"]["parameters"]["training_backend"] == "auto"
        monkeypatch.setenv("KUBECONFIG", kubeconfig)  # found without the option, as kubectl would
        with pytest.raises(ConfigError, match="training_backend"):
            submit(kfp_api, params=PARAMS | {"training_backend": "pytorchjob"})
    with pytest.raises(ConfigError, match="kubeconfig: cannot load"):
        submit(kfp_api, kubeconfig=str(tmp_path / "missing"))
