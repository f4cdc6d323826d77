"""``bevt <stage> ...``: the command line over :mod:`bevt_core.stages`.

Every stage subcommand is generated from the stage's config dataclass, so ``--help``, YAML
configs (``--config``), ``--print-config`` and validation behave the same for all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

from bevt_core import config as C


@dataclass(frozen=True)
class StageCommand:
    name: str
    summary: str
    config_cls: Callable[[], type]  # imported lazily: `bevt --help` must not import torch
    run: Callable[[], Callable[[Any], Any]]


def _shard_cfg():
    from bevt_core.stages.shard import ShardConfig
    return ShardConfig


def _shard_run():
    from bevt_core.stages.shard import run
    return run


def _tokenize_cfg():
    from bevt_core.stages.tokenize import TokenizeConfig
    return TokenizeConfig


def _tokenize_run():
    from bevt_core.stages.tokenize import run
    return run


def _demo_cfg():
    from bevt_core.stages.demo import DemoConfig
    return DemoConfig


def _demo_run():
    from bevt_core.stages.demo import run
    return run


def _samples_cfg():
    from bevt_core.stages.demo import SamplesConfig
    return SamplesConfig


def _samples_run():
    from bevt_core.stages.demo import fetch_samples
    return fetch_samples


COMMANDS = [
    StageCommand("shard", "decode videos or images into WebDataset tar shards with a Parquet manifest",
                 _shard_cfg, _shard_run),
    StageCommand("tokenize", "precompute tokenizer targets (DALL-E or a fitted codebook) for fixed augmentation "
                 "views of every sample, as token shards aligned with the data shards", _tokenize_cfg, _tokenize_run),
    StageCommand("samples", "fetch the real sample footage and build the derived sample tasks",
                 _samples_cfg, _samples_run),
    StageCommand("demo", "run every stage that exists end to end on the sample data", _demo_cfg, _demo_run),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bevt", description="BEVT pipeline stages. Each stage takes a typed config from options and/or "
        "a YAML file (--config); `bevt STAGE --help` lists every field.")
    sub = parser.add_subparsers(dest="command", metavar="STAGE", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.summary, description=f"{cmd.summary}. {_doc(cmd)}")
        C.add_arguments(p, cmd.config_cls())
        p.add_argument("--result-json", metavar="FILE", help="also write the stage result as JSON to FILE")
        p.set_defaults(_cmd=cmd)
    return parser


def _doc(cmd: StageCommand) -> str:
    module = sys.modules.get(cmd.config_cls().__module__)
    doc = (module.__doc__ or "").strip().split("\n\n")
    return " ".join(doc[1:]).replace("\n", " ") if len(doc) > 1 else ""


def _storage_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd: StageCommand = args._cmd
    cls = cmd.config_cls()
    try:
        cfg = C.from_args(cls, args)
    except C.ConfigError as e:
        parser.exit(2, f"bevt {cmd.name}: error: {e}\n")
    if args.print_config:
        sys.stdout.write(C.to_yaml(cfg))
        return 0
    try:
        result = cmd.run()(cfg)
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
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(dataclasses.asdict(result), f, indent=1, default=str)
    failed = getattr(result, "failed", "")
    if failed:
        print(f"bevt {cmd.name}: failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
