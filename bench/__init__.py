"""Benchmarks of the training service against what users would otherwise write: `python -m bench --help`."""
