"""Small helpers shared by the algorithm tests."""

from __future__ import annotations

import dataclasses


def cli_args(config) -> list[str]:
    """The command-line flags that give `config`: its fields that differ from its class's defaults."""
    defaults = type(config)()
    args = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value != getattr(defaults, field.name):
            values = value if isinstance(value, tuple) else (value,)
            args += [f"--{field.name.replace('_', '-')}", *map(str, values)]
    return args
