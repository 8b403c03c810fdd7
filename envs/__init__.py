"""Environments on Brax's protocol: `make(name, ...) -> (env, EnvSpec)`; see `list_envs()`."""

import contextlib
import io

# Importing Brax imports mujoco.mjx, which prints a line about each optional GPU backend (warp) it
# cannot find; none is used here, so that noise stays out of every run's output.
with contextlib.redirect_stdout(io.StringIO()):
    import brax.envs  # noqa: F401

from . import wrappers  # noqa: E402
from .registry import EnvSpec, list_envs, make, restart_or_step, wrap  # noqa: E402

__all__ = ["EnvSpec", "list_envs", "make", "restart_or_step", "wrap", "wrappers"]
