"""Multi-host runs (jax.distributed): each process runs a contiguous share of the runs on its own
devices, and process 0 gathers every process's rows into the run folder.

The functions that gather (`gather_rows`, `processes_where`) are collectives: every process must
call them, in the same order, or the others wait for it forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import numpy as np

from mbrlax.training import ConfigError

if TYPE_CHECKING:
    from mbrlax.runner.planning import RunOptions


def start_distributed(options: RunOptions) -> None:
    """Join the multi-host run the options name, if any."""
    if not (options.distributed or options.coordinator):
        if options.num_processes is not None or options.process_id is not None:
            raise ConfigError(
                "--num-processes and --process-id join a multi-host run only with --coordinator host:port "
                "(or --distributed under a cluster's launcher); alone they would run every run in every process"
            )
        return
    try:
        jax.distributed.initialize(options.coordinator, options.num_processes, options.process_id)
    except (RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"--distributed: could not join the multi-host run: {message}") from None


def multi_host() -> bool:
    return jax.process_count() > 1


def share_of_runs(runs: list[dict]) -> list[dict]:
    """This process's contiguous share of `runs` (all of them on a single host)."""
    count, index = jax.process_count(), jax.process_index()
    if len(runs) % count:
        raise ConfigError(
            f"{len(runs)} runs do not divide among {count} processes; make seeds x sweep values a multiple of {count}"
        )
    share = len(runs) // count
    return runs[index * share : (index + 1) * share]


def processes_where(flag: bool) -> list[int]:
    """The processes for which `flag` holds, known to every process (a collective)."""
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(flag))).ravel()
    return [int(process) for process in np.flatnonzero(flags)]


def gather_rows(rows: list[dict], shares: list[int], every_run: list[dict]) -> list[dict]:
    """Every process's metric rows, on every process, with global run indices, in the order a single
    host writes them. Each process ran `shares[g]` runs of static program g, so all hold rows of the
    same layout: only the metrics travel (one float table); the runs' seeds and settings are known
    everywhere (`every_run`), and the steps are the same for every process's j-th row."""
    from jax.experimental import multihost_utils

    known = {"run", "update", "env_steps", *every_run[0]}
    metrics = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in known]
    table = np.array([[r.get(k, np.nan) for k in metrics] for r in rows], np.float32).reshape(len(rows), len(metrics))
    tables = np.asarray(multihost_utils.process_allgather(table))
    starts = np.cumsum([0, *shares])  # where each static program's runs start, locally
    count = jax.process_count()
    gathered = []
    for process in range(count):
        for row, values in zip(rows, tables[process]):
            program = int(np.searchsorted(starts, row["run"], side="right")) - 1
            run = int(count * starts[program] + process * shares[program] + row["run"] - starts[program])
            new = {"run": run, **every_run[run], "update": row["update"], "env_steps": row["env_steps"]}
            new.update({k: float(v) for k, v in zip(metrics, values) if k in row})
            gathered.append((program, row["update"], run, new))
    return [new for *_, new in sorted(gathered, key=lambda item: item[:3])]
