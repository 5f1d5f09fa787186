import dataclasses

import pytest

from jaxalign import configlib


@dataclasses.dataclass
class Inner:
    lr: float = 1e-5
    schedule: str = "cosine"


@dataclasses.dataclass
class Outer:
    name: str = "run"
    steps: int = 0
    optim: Inner = dataclasses.field(default_factory=Inner)
    maybe: Inner | None = None
    bound: float | None = 4.0


def test_nested_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\noptim:\n  lr: 0.001\n")
    cfg = configlib.load(Outer, path, ["optim.schedule=linear", "steps=7", "maybe.lr=2e-3"])
    assert cfg.name == "a" and cfg.steps == 7
    assert cfg.optim == Inner(lr=0.001, schedule="linear")
    assert cfg.maybe == Inner(lr=2e-3)


def test_unknown_key_suggests_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  schedul: linear\n")
    with pytest.raises(configlib.ConfigError, match=r"unknown config key 'optim.schedul'.*Did you mean 'optim.schedule'"):
        configlib.load(Outer, path)


def test_unknown_top_level_override():
    with pytest.raises(configlib.ConfigError, match=r"'stepz'.*Did you mean 'steps'"):
        configlib.load(Outer, None, ["stepz=3"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(configlib.ConfigError, match="key=value"):
        configlib.load(Outer, None, ["steps"])
    with pytest.raises(configlib.ConfigError, match="config file not found"):
        configlib.load(Outer, tmp_path / "nope.yaml")


def test_override_into_scalar_is_rejected():
    with pytest.raises(configlib.ConfigError, match="'name' is not a section"):
        configlib.load(Outer, None, ["name=x", "name.deeper=1"])


def test_scalar_types_are_coerced_or_rejected():
    cfg = configlib.load(Outer, None, ["optim.lr=5e-7", "steps=12"])
    assert cfg.optim.lr == 5e-7 and isinstance(cfg.optim.lr, float)
    with pytest.raises(configlib.ConfigError, match="'steps' expects int, got 'many'"):
        configlib.load(Outer, None, ["steps=many"])


def test_optional_scalars_take_null_or_their_type():
    assert configlib.load(Outer, None, ["bound=null"]).bound is None
    assert configlib.load(Outer, None, ["bound=2"]).bound == 2.0
    with pytest.raises(configlib.ConfigError, match="'bound' expects float, got 'lots'"):
        configlib.load(Outer, None, ["bound=lots"])
