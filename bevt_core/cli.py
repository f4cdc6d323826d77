"""``bevt <stage> ...``: the command line over :mod:`bevt_core.stages`.

Every stage subcommand is generated from the stage's config dataclass, so ``--help``, YAML
configs (``--config``), ``--print-config`` and validation behave the same for all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from bevt_core import config, storage
from bevt_core.stages import STAGES, Command
from bevt_core.train.options import RunConfig, batching

# Beside the stages: what composes them (the sample data, the study, the pipeline and its demo).
COMMANDS = (
    *STAGES,
    Command(
        "samples",
        "fetch the real sample footage and build the derived sample tasks",
        "bevt_core.samples.command",
        "SamplesConfig",
    ),
    Command(
        "study",
        "BEVT-mini: finetune accuracy from scratch / image / video / joint pretraining on the "
        "sample tasks, over several seeds",
        "bevt_core.study",
        "StudyConfig",
    ),
    Command(
        "pipeline",
        "the BEVT Kubeflow pipeline: `bevt pipeline compile|submit|run-local`",
        "pipelines.cli",
        "PipelineConfig",
        positional="action",
    ),
    Command(
        "demo", "run the whole pipeline end to end on the sample data, on this machine", "pipelines.demo", "DemoConfig"
    ),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands are listed; only ``command``'s module is imported and its options added."""
    parser = argparse.ArgumentParser(
        prog="bevt",
        description="BEVT pipeline stages. Each stage takes a typed config from options and/or "
        "a YAML file (--config); `bevt STAGE --help` lists every field.",
    )
    sub = parser.add_subparsers(dest="command", metavar="STAGE", required=True)
    for cmd in COMMANDS:
        if cmd.name != command:
            sub.add_parser(cmd.name, help=cmd.summary)
            continue
        config_cls, _ = cmd.load()
        doc = (sys.modules[cmd.module].__doc__ or "").strip().split("\n\n")
        detail = " ".join(doc[1:]).replace("\n", " ") if len(doc) > 1 else ""
        p = sub.add_parser(cmd.name, help=cmd.summary, description=f"{cmd.summary}. {detail}")
        config.add_arguments(p, config_cls)
        if cmd.positional:  # `bevt pipeline compile` is `bevt pipeline --action compile`
            p.add_argument(cmd.positional, nargs="?", default=argparse.SUPPRESS, metavar=cmd.positional.upper())
        p.add_argument("--result-json", metavar="FILE", help="also write the stage result as JSON to FILE")
    return parser


def _storage_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def batching_note(cfg: object) -> str:
    """For a training config, how its global batch splits on this job's ranks (``WORLD_SIZE``, else 1), as a
    YAML comment: the accumulation is resolved when the job starts, from the world size it has."""
    run = getattr(cfg, "run", None)
    if not isinstance(run, RunConfig):
        return ""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        return f"# batching on {world} rank(s): {batching(run, world).describe()}\n"
    except config.ConfigError as e:
        return f"# batching on {world} rank(s): {e}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = next((a for a in argv if not a.startswith("-")), None)
    cmd = next((c for c in COMMANDS if c.name == name), None)
    parser = build_parser(cmd.name if cmd else None)
    args = parser.parse_args(argv)
    cls, run = cmd.load()
    try:
        cfg = config.from_args(cls, args)
    except config.ConfigError as e:
        parser.exit(2, f"bevt {cmd.name}: error: {e}\n")
    if args.print_config:
        sys.stdout.write(config.to_yaml(cfg) + batching_note(cfg))
        return 0
    try:
        result = run(cfg)
    except config.ConfigError as e:
        parser.exit(2, f"bevt {cmd.name}: error: {e}\n")
    except _storage_errors() as e:
        parser.exit(
            1,
            f"bevt {cmd.name}: error: object store access failed: {e}\n"
            "  (check AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket)\n",
        )
    except KeyboardInterrupt:
        print(f"bevt {cmd.name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    summary = getattr(result, "summary", None)
    print(summary() if callable(summary) else result)
    if args.result_json:  # local or s3:// (a PyTorchJob's master reports through the object store)
        storage.write_bytes(args.result_json, json.dumps(dataclasses.asdict(result), indent=1, default=str).encode())
    failed = getattr(result, "failed", "")
    if failed:
        print(f"bevt {cmd.name}: failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
