"""Scale configs are typed and checked when loaded: a bad key is a ConfigError naming key and file."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from datacomp.config import Scale, load_scale, scale_names, scales_path
from datacomp.errors import ConfigError

GOOD = {"pool_size": 100, "samples_seen": 64, "model": "RN50", "batch_size": 8, "lr": 1e-3, "warmup": 0,
        "beta2": None, "num_checkpoints": 1, "precision": "fp32"}


def _file(tmp_path: Path, **changes) -> Path:
    scale = {**GOOD, **changes}
    for k in [k for k, v in changes.items() if v is _DROP]:
        del scale[k]
    p = tmp_path / "scales.yaml"
    p.write_text(yaml.safe_dump({"tiny": scale, "shared": {"not": "a scale"}}))
    return p


_DROP = object()


def test_every_bundled_scale_loads_typed():
    for name in scale_names():
        s = load_scale(name)
        assert isinstance(s, Scale) and s.steps == s.samples_seen // s.batch_size
        assert isinstance(s.lr, float) and isinstance(s.batch_size, int)


def test_a_good_file_loads(tmp_path: Path):
    s = load_scale("tiny", _file(tmp_path))
    assert s.name == "tiny" and s.steps == 8 and s.world == {} and not s.embedded


@pytest.mark.parametrize("changes, message", [
    ({"lr": "fast"}, "key 'lr' must be a positive number, got 'fast'"),
    ({"batch_size": 8.5}, "key 'batch_size' must be a positive integer, got 8.5"),
    ({"batch_size": True}, "key 'batch_size' must be a positive integer, got True"),
    ({"samples_seen": 0}, "key 'samples_seen' must be a positive integer, got 0"),
    ({"model": None}, "key 'model' must be a string, got None"),
    ({"warmup": _DROP}, "missing key 'warmup' (an integer)"),
    ({"lrr": 0.1}, "unknown key 'lrr'"),
    ({"world": [1, 2]}, "key 'world' must be a mapping"),
    ({"embedded": True}, "an embedded scale needs 'world'"),
    ({"embedded": True, "world": {"concepts": 4, "shard_size": 10, "curated_size": 10, "eval_size": "x",
                                   "retrieval_size": 5}}, "world: key 'eval_size' must be a positive integer, got 'x'"),
    ({"teachers": {"b32": {"model": "m", "samples_seen": 8, "batch_size": 8, "lr": 0.1}}},
     "teachers: b32: missing key 'warmup'"),
])
def test_a_bad_key_is_a_config_error_naming_key_and_file(tmp_path: Path, changes: dict, message: str):
    path = _file(tmp_path, **changes)
    with pytest.raises(ConfigError) as e:
        load_scale("tiny", path)
    assert str(e.value).startswith(f"{path}: scale 'tiny'") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_scale_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown scale 'huge'"):
        load_scale("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiny: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_scale("tiny", bad)
    assert scales_path().is_file()
