"""What the entrypoints in this folder share: run one `lam` command with the job's arguments.

LAM_STORAGE_PATH, when the cluster's nodes set it (cluster/*.yaml, cluster/kuberay/*.yaml),
is where `train` and `tune` write runs unless the command line names a --storage_path:
one place per cluster for its bucket. It takes precedence over storage_path in a --config file.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's `lam`, installed or not

from lam.commands import main

STORAGE_COMMANDS = ("train", "tune")


def run(command: str) -> None:
    args = sys.argv[1:]
    storage = os.environ.get("LAM_STORAGE_PATH")
    given = any(a.split("=", 1)[0] in ("--storage_path", "--storage-path") for a in args)
    if storage and command in STORAGE_COMMANDS and not given:
        args += ["--storage_path", storage]
    sys.exit(main([command, *args]))
