"""Presets as data: each algorithm's live in `algorithms/presets/NAME.toml`, beside its file, as two
tables, `[tasks.NAME]` (a task's settings, which name the task) and `[variants.NAME]` (a method's or
a size's, applied on top of the task's). `load(__file__)` reads them for the algorithm file.

Two keys compose a preset from others instead of copying them:

    include = ["mbrl-lib-ensemble", "mpc:tiny"]   # merged in order, then this table's own keys
    unset = ["max_grad_norm"]                     # these fields set to None (TOML has no null)

An include names a table of `[parts]` (settings that are no preset by themselves): of this file,
or of another file of the folder as "FILE:NAME". A TOML array is read as a tuple, as the Config's
fields hold them. Where a preset comes from is said in a comment beside it and on the algorithm's
page, docs/algorithms/NAME.md.
"""

from __future__ import annotations

import functools
import pathlib
import tomllib
from typing import Any


@functools.cache
def _read(path: pathlib.Path) -> dict:
    with path.open("rb") as file:
        return tomllib.load(file)


def _as_setting(value):
    return tuple(_as_setting(item) for item in value) if isinstance(value, list) else value


def _resolve(folder: pathlib.Path, file: str, table: dict, seen: tuple[str, ...]) -> dict[str, Any]:
    """One table's settings, its includes merged first (in order), then its own keys, then `unset`."""
    settings: dict[str, Any] = {}
    for name in table.get("include", []):
        other, _, part = name.rpartition(":")
        other = other or file
        where = f"{other}:{part}"
        if where in seen:
            raise ValueError(f"presets: {where} includes itself ({' -> '.join(seen + (where,))})")
        parts = _read(folder / f"{other}.toml").get("parts", {})
        if part not in parts:
            raise ValueError(f"presets: {file}.toml includes {where}, which {other}.toml's [parts] does not hold")
        settings.update(_resolve(folder, other, parts[part], seen + (where,)))
    settings.update({key: _as_setting(value) for key, value in table.items() if key not in ("include", "unset")})
    settings.update({key: None for key in table.get("unset", [])})
    return settings


def load(algorithm_file: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(TASKS, VARIANTS) of the algorithm in `algorithm_file`, from presets/<its name>.toml beside it."""
    path = pathlib.Path(algorithm_file)
    folder, file = path.parent / "presets", path.stem
    data = _read(folder / f"{file}.toml")
    tasks, variants = (
        {name: _resolve(folder, file, table, (f"{file}:{kind}.{name}",)) for name, table in data.get(kind, {}).items()}
        for kind in ("tasks", "variants")
    )
    return tasks, variants
