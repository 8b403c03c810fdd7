"""The run fields every algorithm shares, and checks declared on a Config's fields.

Every algorithm's `Config` is a frozen dataclass that extends `RunConfig`, so the task, the budget,
the environments and the evaluation have the same names and meanings in every file. A field says
what it must satisfy where it is declared, with `setting(default, ...)`:

    model_lr: float = setting(1e-3, sweepable=True)
    alpha: float = setting(0.1, sweepable=True, within="[0, 1)")
    horizon: int = setting(30, positive=True)
    planner: str = setting("cem", choices=("cem", "icem", "random"))

`check_fields` (called by `RunConfig.validate`, so before anything compiles) enforces them, and
the checks every field gets from its type alone (finite numbers, counts within int32, positive
learning rates). A Config's own `validate` adds only what relates two fields. `sweepable(Config)`
(also `Config.SWEEPABLE`) lists the fields that travel as traced values, in declaration order, so
one compiled program runs many of their values at once.

Every Config is a pytree: its sweepable fields are the leaves (float32 scalars, or arrays with a run
axis) and the rest is static. A trainer takes the Config as its argument, `trainer(key, config)`,
and reads every setting as `config.x`; vmapping over a Config whose sweepable fields hold one value
per run is a sweep (`with_sweepable_values` builds one).

A subclass that redeclares a field to change its default keeps the checks declared above it:
`total_steps: int = 2000` in an algorithm's Config is still positive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import numpy as np

INT32_MAX = 2**31 - 1
"""The largest count a compiled program holds: steps, capacities and sizes are int32 inside it."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest number a compiled program holds: its settings are float32 inside it."""


class ConfigError(ValueError):
    """A configuration that cannot run; raised before anything compiles. The CLI exits with 2."""


def setting(
    default: Any,
    *,
    sweepable: bool = False,
    positive: bool = False,
    within: str | None = None,
    choices: tuple | None = None,
    may_be_zero: bool = False,
) -> Any:
    """A Config field with its checks declared. `sweepable`: a traced hyperparameter (a float).
    `positive`: greater than 0 (each item, for a tuple). `within`: an interval such as "[0, 1)" or
    "(0, 1]". `choices`: the values allowed. `may_be_zero`: a learning rate whose 0 is an ablation
    (MB-MPO's inner_lr), not an error. None passes every check (an optional field left unset)."""
    if within is not None:
        _interval(within)  # a malformed interval fails at import, not at a user's run
    metadata = dict(sweepable=sweepable, positive=positive, within=within, choices=choices, may_be_zero=may_be_zero)
    return dataclasses.field(default=default, metadata={key: value for key, value in metadata.items() if value})


def _interval(text: str) -> tuple[bool, float, float, bool]:
    left, right = text[0], text[-1]
    low, high = (float(part) for part in text[1:-1].split(","))
    if left not in "[(" or right not in "])":
        raise ValueError(f"an interval reads like '[0, 1)', got {text!r}")
    return left == "[", low, high, right == "]"


def declared(config_class: type, name: str) -> dict:
    """The checks declared for field `name`, from the nearest class in the MRO that declares any (a
    subclass that only changes the default inherits its parent's)."""
    for klass in config_class.__mro__:
        field = getattr(klass, "__dataclass_fields__", {}).get(name)
        if field is not None and field.metadata:
            return dict(field.metadata)
    return {}


def sweepable(config_class: type) -> tuple[str, ...]:
    """The names of the fields declared `sweepable`, in declaration order."""
    return tuple(field.name for field in dataclasses.fields(config_class) if declared(config_class, field.name).get("sweepable"))


class _Sweepable:
    """`Config.SWEEPABLE`: read off the declarations, never written out by hand."""

    def __get__(self, instance, owner) -> tuple[str, ...]:
        return sweepable(owner)


def is_learning_rate(name: str) -> bool:
    return name == "lr" or name.endswith("_lr")


def check_fields(config) -> None:
    """Each field's declared checks and the ones its type implies: a number is finite; a count or size
    is not negative and fits in int32; a hidden layer has at least one unit; a learning rate is
    positive unless declared `may_be_zero`. A ConfigError names the first field that fails."""
    for field in dataclasses.fields(config):
        name, value = field.name, getattr(config, field.name)
        rules = declared(type(config), name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{name} must be a finite number, got {item}")
            if isinstance(item, float) and abs(item) > FLOAT32_MAX:
                # The compiled program holds it as a float32, where it would be infinite.
                raise ConfigError(
                    f"{name} is {item:g}, beyond float32's largest ({FLOAT32_MAX:.4g}), which the program computes in"
                )
            if isinstance(item, int) and item < 0:
                raise ConfigError(f"{name} must not be negative, got {item}")
            if isinstance(item, int) and item > INT32_MAX:
                raise ConfigError(f"{name} ({item:,}) is more than 2**31 - 1, the largest count a compiled program holds")
            if (rules.get("positive") or name.endswith("hidden_sizes")) and item <= 0:
                shown = value if isinstance(value, tuple) else item
                raise ConfigError(f"{name} must be positive, got {shown}")
            if rules.get("within"):
                closed_low, low, high, closed_high = _interval(rules["within"])
                above = item >= low if closed_low else item > low
                below = item <= high if closed_high else item < high
                if not (above and below):
                    raise ConfigError(f"{name} must be in {rules['within']}, got {item}")
        if rules.get("choices") and value is not None and value not in rules["choices"]:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, rules['choices']))}, got {value!r}")
        if is_learning_rate(name) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if rules.get("may_be_zero") and value < 0:
                raise ConfigError(f"{name} must be 0 (no adaptation) or positive, got {value}")
            if not rules.get("may_be_zero") and value <= 0:
                raise ConfigError(f"{name} is a learning rate and must be positive, got {value}")


def renamed(config_class: type, name: str) -> str | None:
    """The sentence for a field's old name (None when `name` was never renamed)."""
    new = getattr(config_class, "RENAMED", {}).get(name)
    if new is None:
        return None
    flag = lambda field: "--" + field.replace("_", "-")  # noqa: E731
    return f"{flag(name)} is now {flag(new)} (the model's settings have one name in every algorithm)"


def _flatten(config):
    """Leaves: the sweepable fields, a number as a float32 scalar (as the runner stacks them); static
    part: every other field's name and value."""
    names = sweepable(type(config))
    leaves = []
    for name in names:
        value = getattr(config, name)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        leaves.append(np.float32(value) if is_number else value)
    static = tuple((field.name, getattr(config, field.name)) for field in dataclasses.fields(config) if field.name not in names)
    return leaves, (names, static)


def _unflatten(config_class: type, aux, leaves):
    # Not through __init__: a leaf may be a tracer or a placeholder that JAX puts in while it maps.
    names, static = aux
    config = object.__new__(config_class)
    for name, value in (*static, *zip(names, leaves)):
        object.__setattr__(config, name, value)
    return config


def with_sweepable_values(config, values: dict):
    """`config` whose sweepable fields hold `values` as float32 arrays (name -> a number, or one value
    per run for a vmapped sweep, where every field then needs one); a field not in `values` keeps its
    own value."""
    arrays = {name: np.asarray(values.get(name, getattr(config, name)), np.float32) for name in sweepable(type(config))}
    names, static = _flatten(config)[1]
    return _unflatten(type(config), (names, static), [arrays[name] for name in names])


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The run: which task, how long, how many environments, how it is evaluated. Every algorithm's
    Config extends it (redeclaring a field only to change its default). Every Config is a pytree
    whose leaves are its sweepable fields."""

    SWEEPABLE = _Sweepable()
    RENAMED: ClassVar[dict[str, str]] = {}
    """Fields renamed since an earlier version, old name -> new: the old flag gets one sentence naming
    the new one, and an old run folder's config.json is read with the new names."""
    BUDGET: ClassVar[str] = "total_steps"
    """The field that sets the run's length; an algorithm that counts its budget otherwise (World
    Models: in generations) names its own, and `total_steps` is then not what was asked for."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten, lambda aux, leaves: _unflatten(cls, aux, leaves))

    env: str = "pendulum"
    """Task name (see `mbrlax.envs.list_envs()`; gym/<id> and dmc/<domain>_<task> too)."""
    total_steps: int = setting(10_000, positive=True)
    """Environment steps in all, over all parallel environments, initial exploration included."""
    num_envs: int = setting(1, positive=True)
    """Parallel environments that collect experience."""
    episode_length: int | None = setting(None, positive=True)
    """Steps per episode (default: the task's own)."""
    action_repeat: int = setting(1, positive=True)
    """Repeat each action this many times (the reward then has to be learned)."""
    backend: str | None = None
    """Brax physics backend for brax/* tasks (default: the task's own)."""
    initial_steps: int = 1000
    """Random-action environment steps before learning starts, counted in total_steps."""
    eval_every: int = setting(1000, positive=True)
    """Environment steps between evaluations."""
    eval_episodes: int = setting(5, positive=True)
    """Evaluation episodes, run in parallel with the deterministic policy (or the planner)."""

    def validate(self) -> None:
        """The declared checks; a subclass adds those that relate fields and calls this first."""
        check_fields(self)


jax.tree_util.register_pytree_node(RunConfig, _flatten, lambda aux, leaves: _unflatten(RunConfig, aux, leaves))
