from dataclasses import dataclass

import pytest

from bevt_core import config as C
from bevt_core.stages.shard import ShardConfig


@dataclass
class Inner:
    lr: float = C.option(1e-3, help="learning rate", check=C.at_least(0.0))
    betas: tuple[float, float] = C.option((0.9, 0.999), help="adam betas")


@dataclass
class Outer:
    name: str = C.option(help="required name", check=C.non_empty)
    steps: int = C.option(10, help="steps", check=C.at_least(1))
    mode: str = C.option("a", help="mode", choices=("a", "b"))
    flag: bool = C.option(False, help="flag")
    tags: list[str] = C.option([], help="tags")
    optim: Inner = C.option(Inner, help="optimizer")


def test_from_dict_coerces_and_nests():
    cfg = C.from_dict(Outer, {"name": "x", "steps": "5", "flag": "yes", "tags": "a,b", "optim": {"lr": "0.5"}})
    assert cfg == Outer("x", 5, "a", True, ["a", "b"], Inner(0.5, (0.9, 0.999)))


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "name"),
        ({"name": "x", "steps": 0}, "steps"),
        ({"name": "x", "steps": 1.5}, "steps"),
        ({"name": "x", "mode": "c"}, "mode"),
        ({"name": "x", "bogus": 1}, "bogus"),
        ({"name": "x", "optim": {"lr": -1}}, "optim.lr"),
        ({"name": "x", "optim": {"betas": [1]}}, "optim.betas"),
        ({"name": "x", "flag": "maybe"}, "flag"),
    ],
)
def test_errors_name_the_field(data, field):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(Outer, data)
    assert str(e.value).startswith(f"{field}:"), str(e.value)


def test_yaml_then_cli_overrides(tmp_path):
    import argparse

    path = tmp_path / "c.yaml"
    path.write_text("name: fromfile\nsteps: 3\noptim:\n  lr: 0.1\n")
    parser = argparse.ArgumentParser()
    C.add_arguments(parser, Outer)
    ns = parser.parse_args(["--config", str(path), "--steps", "7", "--optim.lr", "0.2", "--flag"])
    cfg = C.from_args(Outer, ns)
    assert (cfg.name, cfg.steps, cfg.optim.lr, cfg.flag) == ("fromfile", 7, 0.2, True)
    assert C.from_dict(Outer, __import__("yaml").safe_load(C.to_yaml(cfg))) == cfg


def test_shard_config_cross_field_check():
    with pytest.raises(C.ConfigError, match="^prefix:"):
        C.from_dict(ShardConfig, {"input": "a.txt", "output": "o", "prefix": "a.b"})
    with pytest.raises(C.ConfigError, match="^max_reject_rate:"):
        C.from_dict(ShardConfig, {"input": "a.txt", "output": "o", "max_reject_rate": 2})
