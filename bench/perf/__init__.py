"""Speed: ingest, the training step, MFU, DDP scaling and the checkpoint stall (`python -m bench`),
and the GPU check (`bash bench/perf/gpu_check.sh`)."""
