"""Environments on Brax's protocol: `make(name, ...) -> (env, EnvSpec)`; see `list_envs()`."""

from . import wrappers
from .registry import EnvSpec, list_envs, make

__all__ = ["EnvSpec", "list_envs", "make", "wrappers"]
