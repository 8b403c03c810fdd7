"""One persistent JAX compilation cache for the whole test session, shared by the pytest-xdist
workers and the processes the tests start: many tests compile the same small programs (a run and
its resume, a registered task and the same task passed by hand, the contract's runs and the
determinism tests'), and on a 2-core CI machine compiling is most of their time. The cache holds
the compiled programs only; every test still runs them and compares what they compute. A fresh
directory each session, so nothing carries over between CI runs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mbrlax-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)  # by the process that made it
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # Every program, however quick to compile or small.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import jax  # noqa: E402  (after the variables, which jax reads when imported)

for _option, _variable, _type in (
    ("jax_compilation_cache_dir", "JAX_COMPILATION_CACHE_DIR", str),
    ("jax_persistent_cache_min_compile_time_secs", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", float),
    ("jax_persistent_cache_min_entry_size_bytes", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", int),
):
    if _variable in os.environ:
        jax.config.update(_option, _type(os.environ[_variable]))
