"""How `lam manifest` grows with the number of files: wall time and peak memory.

Writes N small latent files (one chunk each, float16 [1, 16, 2, 64, 64], 256 KiB) once per N
under $LAM_BENCH_HOME/manifest-scale/, then times `lam manifest DIR` as a user runs it, with
one process (`--jobs 1`) and with the default pool, each `--repeats` times (the median is
reported). Peak memory is the largest resident set of the command and, separately, of the
largest process it started (its checking workers; getrusage of the children, in a fresh
process per run). The files were
just written or read, so they come from the page cache: this measures the checking, not the disk.

    python -m bench.perf.manifest_scale --files 1000,10000 --out manifest-scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.home import bench_home

# A fresh interpreter runs the command and reports its own and its children's peak RSS (KiB on Linux).
RUNNER = """
import resource, runpy, sys
sys.argv = ["lam"] + sys.argv[1:]
try:
    runpy.run_module("lam", run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"PEAK_RSS_KIB {own} {children}", file=sys.stderr)
sys.exit(code)
"""


def write_files(folder: Path, n: int) -> Path:
    """N one-chunk files in folders of 1,000 (a data tree, not one flat folder), written once."""
    import h5py

    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    block = rng.standard_normal((1, 16, 2, 64, 64)).astype(np.float16)
    for i in range(n):
        path = folder / f"part{i // 1000:03d}" / f"video_{i:06d}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("latents", data=block)
        if (i + 1) % 1000 == 0:
            print(f"[manifest-scale] wrote {i + 1} of {n} files", flush=True)
    done.touch()
    return folder


def time_manifest(folder: Path, jobs: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, "manifest", str(folder), "--jobs", str(jobs),
                           "--out", str(folder / "manifest.json")], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"lam manifest failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    own, children = next(line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB"))
    return {"seconds": seconds, "peak_rss_mib": int(own) / 1024, "children_peak_rss_mib": int(children) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="1000,10000", help="comma-separated file counts (default 1000,10000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported (default 3)")
    parser.add_argument("--root", default=str(bench_home() / "manifest-scale"), help="where the files are written and reused")
    parser.add_argument("--out", default=str(bench_home() / "manifest-scale.json"), help="report path")
    args = parser.parse_args(argv)

    from lam.data.h5 import default_jobs

    rows = []
    for n in (int(x) for x in args.files.split(",")):
        folder = write_files(Path(args.root) / f"n{n}", n)
        for jobs in (1, 0):
            runs = [time_manifest(folder, jobs) for _ in range(args.repeats)]
            row = {"files": n, "jobs": jobs or default_jobs(), **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
                   "runs": runs}
            row["files_per_s"] = n / row["seconds"]
            rows.append(row)
            print(f"[manifest-scale] {n} files, {row['jobs']} process(es): {row['seconds']:.1f} s ({row['files_per_s']:.0f} files/s), "
                  f"peak RSS {row['peak_rss_mib']:.0f} MiB, started processes {row['children_peak_rss_mib']:.0f} MiB", flush=True)
    report = {"cpu_cores": os.cpu_count(), "load_avg_end": os.getloadavg(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"[manifest-scale] report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
