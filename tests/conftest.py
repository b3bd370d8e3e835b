"""Fixtures: one local Ray per test session, tiny data. Shared functions are in helpers.py."""

from __future__ import annotations

import os

import pytest
from helpers import ROOT


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
