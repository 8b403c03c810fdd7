"""Presets as data (mbrlax.presets): includes merge in order before a table's own keys, across files,
`unset` gives None, arrays are tuples; a cycle or a missing part is refused by name. Every shipped
preset is a valid Config of its algorithm: tests/test_contract.py and each algorithm's tests."""

from __future__ import annotations

import pytest

from mbrlax import presets

SHARED = """
[parts.small]
hidden_sizes = [16, 16]
horizon = 5
"""

ALGORITHM = """
[tasks.pendulum]
include = ["budget", "shared:small"]
env = "pendulum"
horizon = 7

[variants.exact]
include = ["shared:small"]
unset = ["max_grad_norm"]

[parts.budget]
total_steps = 2000
horizon = 3
"""


def write(tmp_path, files: dict[str, str]) -> str:
    folder = tmp_path / "presets"
    folder.mkdir()
    for name, text in files.items():
        (folder / f"{name}.toml").write_text(text)
    return str(tmp_path / "algorithm.py")


def test_includes_merge_in_order_then_own_keys_and_unset_is_none(tmp_path):
    tasks, variants = presets.load(write(tmp_path, {"algorithm": ALGORITHM, "shared": SHARED}))
    # budget's horizon 3, then small's 5, then the table's own 7.
    assert tasks == {"pendulum": {"total_steps": 2000, "horizon": 7, "hidden_sizes": (16, 16), "env": "pendulum"}}
    assert variants == {"exact": {"hidden_sizes": (16, 16), "horizon": 5, "max_grad_norm": None}}
    assert type(tasks["pendulum"]["hidden_sizes"]) is tuple


def test_a_missing_part_and_a_cycle_are_refused_by_name(tmp_path):
    missing = '[tasks.a]\ninclude = ["shared:large"]\n'
    with pytest.raises(ValueError, match="includes shared:large"):
        presets.load(write(tmp_path, {"algorithm": missing, "shared": SHARED}))
    cycle = '[tasks.a]\ninclude = ["p"]\n[parts.p]\ninclude = ["q"]\n[parts.q]\ninclude = ["p"]\n'
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="includes itself"):
        presets.load(write(other, {"algorithm": cycle}))
