"""Reproducible runs. (Each epoch's data order from the seed and the epoch alone, on every rank:
tests/test_ingest.py. That a 2-worker run logs the same numbers and ends with the same weights, bit for bit,
straight through, after a killed worker and after a killed driver: tests/test_kill.py.)"""

import pytest
from helpers import tiny_config

from lam.train.launch import prepare


def test_a_negative_seed_is_refused_at_start_up(tmp_path):
    from lam.errors import UserError

    with pytest.raises(UserError, match="seed must be >= 0"):
        prepare(tiny_config(tmp_path, tmp_path, seed=-1))
