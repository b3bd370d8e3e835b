"""Fixtures: one local Ray per test session, tiny data. Shared functions are in helpers.py."""

from __future__ import annotations

import os

import pytest
from helpers import ROOT

# Ray Train's controller looks at its workers every 2 s by default, so every run ends (and every
# report is registered) up to 2 s late. Tests run dozens of short runs: look 8 times as often.
# Set before any Ray process starts, so the session's Ray, the heads the tests start and the
# `lam` processes they run all inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Ray Train starts a preemption watcher (one more process) with every run; a local test
# cluster has no node that could be drained.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def ray_session():
    """The session's local Ray cluster (127.0.0.1), started the way `lam train` starts it."""
    import ray

    from lam.runtime.cluster import init_ray

    # Ray workers unpickle functions defined in test modules by module name; let them import those.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    init_ray(min_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """4 synthetic videos of 8 chunks (16 latent frames): 2 train, 1 val, 1 test."""
    from lam.data.manifest import create_manifest, write_manifest
    from lam.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    write_synthetic_dataset(root, files=4, chunks=8, seed=0)
    write_manifest(create_manifest(root, 0.5, 0.25, 0.25, seed=0), root / "manifest.json")
    return root
