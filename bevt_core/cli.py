"""``bevt <stage> ...``: the command line over :mod:`bevt_core.stages`.

Every stage subcommand is generated from the stage's config dataclass, so ``--help``, YAML
configs (``--config``), ``--print-config`` and validation behave the same for all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

from bevt_core import config as C


@dataclass(frozen=True)
class StageCommand:
    name: str
    summary: str
    module: str  # imported only when this command runs: `bevt --help` must not import torch
    config: str  # the config dataclass in that module
    run: str = "run"  # the stage function in that module
    positional: str = ""  # a config field also accepted as the first argument (`bevt pipeline compile`)

    def load(self) -> tuple[type, Callable[[Any], Any]]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), getattr(mod, self.run)


COMMANDS = [
    StageCommand("shard", "decode videos or images into WebDataset tar shards with a Parquet manifest",
                 "bevt_core.stages.shard", "ShardConfig"),
    StageCommand("tokenize", "precompute tokenizer targets (DALL-E or a fitted codebook) for fixed augmentation "
                 "views of every sample, as token shards aligned with the data shards",
                 "bevt_core.stages.tokenize", "TokenizeConfig"),
    StageCommand("pretrain-image", "image-stream masked image modeling on image shards with their token "
                 "targets; writes a 2D Swin checkpoint", "bevt_core.stages.pretrain_image", "PretrainImageConfig"),
    StageCommand("pretrain-joint", "BEVT two-stream (video + image) pretraining, initialised by inflating the "
                 "image-stream checkpoint; DDP from the torchrun / PyTorchJob environment",
                 "bevt_core.stages.pretrain_joint", "PretrainJointConfig"),
    StageCommand("finetune", "video classification (K400 / SSv2 / Diving48 recipes) from a pretraining checkpoint",
                 "bevt_core.stages.finetune", "FinetuneConfig"),
    StageCommand("evaluate", "multi-view testing of a finetuned recognizer: top-1/top-5, per-class accuracy, "
                 "confusion matrix", "bevt_core.stages.evaluate", "EvaluateConfig"),
    StageCommand("predict", "top-k classes of a video file from a finetuned recognizer (a registered MLflow "
                 "model or recognizer.pt), preprocessed as in evaluation", "bevt_core.stages.predict",
                 "PredictConfig", positional="video"),
    StageCommand("samples", "fetch the real sample footage and build the derived sample tasks",
                 "bevt_core.stages.demo", "SamplesConfig", "fetch_samples"),
    StageCommand("demo", "run every stage that exists end to end on the sample data", "bevt_core.stages.demo",
                 "DemoConfig"),
    StageCommand("study", "BEVT-mini: finetune accuracy from scratch / image / video / joint pretraining on the "
                 "sample tasks, over several seeds", "bevt_core.stages.study", "StudyConfig"),
    StageCommand("pipeline", "the BEVT Kubeflow pipeline: `bevt pipeline compile|submit|run-local`",
                 "bevt_core.kube.pipeline_cli", "PipelineConfig", positional="action"),
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands are listed; only ``command``'s module is imported and its options added."""
    parser = argparse.ArgumentParser(
        prog="bevt", description="BEVT pipeline stages. Each stage takes a typed config from options and/or "
        "a YAML file (--config); `bevt STAGE --help` lists every field.")
    sub = parser.add_subparsers(dest="command", metavar="STAGE", required=True)
    for cmd in COMMANDS:
        if cmd.name != command:
            sub.add_parser(cmd.name, help=cmd.summary)
            continue
        config_cls, _ = cmd.load()
        doc = (sys.modules[cmd.module].__doc__ or "").strip().split("\n\n")
        detail = " ".join(doc[1:]).replace("\n", " ") if len(doc) > 1 else ""
        p = sub.add_parser(cmd.name, help=cmd.summary, description=f"{cmd.summary}. {detail}")
        C.add_arguments(p, config_cls)
        if cmd.positional:  # `bevt pipeline compile` is `bevt pipeline --action compile`
            p.add_argument(cmd.positional, nargs="?", default=argparse.SUPPRESS, metavar=cmd.positional.upper())
        p.add_argument("--result-json", metavar="FILE", help="also write the stage result as JSON to FILE")
    return parser


def _storage_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = next((a for a in argv if not a.startswith("-")), None)
    cmd = next((c for c in COMMANDS if c.name == name), None)
    parser = build_parser(cmd.name if cmd else None)
    args = parser.parse_args(argv)
    cls, run = cmd.load()
    try:
        cfg = C.from_args(cls, args)
    except C.ConfigError as e:
        parser.exit(2, f"bevt {cmd.name}: error: {e}\n")
    if args.print_config:
        sys.stdout.write(C.to_yaml(cfg))
        return 0
    try:
        result = run(cfg)
    except C.ConfigError as e:
        parser.exit(2, f"bevt {cmd.name}: error: {e}\n")
    except _storage_errors() as e:
        parser.exit(1, f"bevt {cmd.name}: error: object store access failed: {e}\n"
                       "  (check AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket)\n")
    except KeyboardInterrupt:
        print(f"bevt {cmd.name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    summary = getattr(result, "summary", None)
    print(summary() if callable(summary) else result)
    if args.result_json:  # local or s3:// (a PyTorchJob's master reports through the object store)
        from bevt_core.data import storage

        storage.write_bytes(args.result_json, json.dumps(dataclasses.asdict(result), indent=1, default=str).encode())
    failed = getattr(result, "failed", "")
    if failed:
        print(f"bevt {cmd.name}: failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
