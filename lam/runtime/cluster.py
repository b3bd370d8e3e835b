"""Ray start-up: join the cluster in RAY_ADDRESS, or start a private local one on 127.0.0.1.

    from lam.runtime.cluster import init_ray
    init_ray(min_cpus=4)

Training, sweeps and export all start Ray here, so the same command runs on a laptop
and, with RAY_ADDRESS set (e.g. inside `ray job submit`), on a cluster.
"""

from __future__ import annotations

import math
import os
import socket

import ray
from ray._private import ray_constants

from lam.config import RunConfig
from lam.runtime.console import attach_forwarded_lines


def init_ray(min_cpus: int = 0) -> None:
    """Join the cluster in RAY_ADDRESS, or start a private local one on 127.0.0.1.

    A bare `ray.init()` would join any cluster recorded under /tmp/ray; address="local"
    always starts our own. Logical CPUs are at least `min_cpus` so Ray Data read tasks
    have room beside the training workers on small machines.
    """
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": True, "logging_level": "WARNING"}
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints once, not twice
    os.environ.setdefault("WANDB_SILENT", "true")  # we print where the wandb run is ourselves
    # Train gives up on starting a worker group after 60 s by default; a busy small machine
    # (several trials starting at once) can take longer. Inherited by every Ray process.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
        attach_forwarded_lines()
        return
    # Ray turns 127.0.0.1 into the machine's routable address unless cluster mode is
    # off; off, every process of the local cluster (and DDP's rendezvous) uses loopback.
    # The env var reaches the processes Ray starts; this process read it at import.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")
    # Ray Train's placement-group cleaner finds the dashboard (state API) by looking for "the"
    # local cluster, and gives up when it sees several on one machine: name ours explicitly.
    dashboard_port = free_local_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, min_cpus),
        include_dashboard=True,  # Ray Train's state API (placement-group cleanup) needs it
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        **quiet,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    attach_forwarded_lines()


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Logical CPUs left for Ray Data read tasks beside a run's training workers. A sweep packs
# several trials on a cluster and gives each one (lam.tune.sweep.DATA_CPUS_PER_TRIAL).
DATA_CPUS_PER_RUN = 2


def cpus_needed(cfg: RunConfig, data_cpus: int = DATA_CPUS_PER_RUN) -> int:
    """Logical CPUs a run needs: its training workers' plus `data_cpus` for read tasks."""
    return math.ceil(cfg.train.num_workers * cfg.train.cpus_per_worker) + data_cpus
