"""Export one latent action per transition of every selected file, as Parquet.

Schema (one row per transition z[t-1] -> z[t], t >= 1):
    file (string, relative to the data dir), t (int64), codes (list<int64>, num_codes),
    action_id (int64, mixed radix of the codes: sum_k code_k * M**(K-1-k))
    vector (list<float32>, num_codes * codebook_dim): only for a continuous bottleneck
        (`quantizer: gaussian`), the action vector before k-means, for users who cluster
        it themselves
The file's metadata records the checkpoint it came from (`lam.checkpoint`) and the
bottleneck (`lam.quantizer`).

Tiling (`lam.eval.tiling`, the same one `lam eval` scores with). The encoder is
causal: the action of t-1 -> t is computed from the window's frames up to t. A
file of n frames is cut into windows of T frames (the run's sequence_length)
starting at 0, T-1, 2(T-1), ...: consecutive windows share one frame, so each
transition falls in exactly one window. When n - 1 is not a multiple of T - 1 the
last window is moved back to end at frame n - 1 and keeps only the transitions
not covered yet. A file shorter than T is one window of its own length. So every
t >= 1 of every file gets exactly one row.

Inference runs as Ray Data batch inference over a pool of actors, each holding
the model once (CPU, or one GPU each with --use_gpu); locally on the local Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from tqdm import tqdm

from lam.data.h5 import LatentShape
from lam.data.manifest import Manifest, load_manifest
from lam.data.windows import WindowReader, frame_count
from lam.eval.tiling import transition_windows as export_windows
from lam.runtime.checkpoint import load_model
from lam.runtime.cluster import init_ray
from lam.runtime.console import route_console

SCHEMA = pa.schema([("file", pa.string()), ("t", pa.int64()), ("codes", pa.list_(pa.int64())), ("action_id", pa.int64())])
VECTOR = pa.field("vector", pa.list_(pa.float32()))


def export_schema(continuous: bool, checkpoint: str, quantizer: str) -> pa.Schema:
    schema = SCHEMA.append(VECTOR) if continuous else SCHEMA
    return schema.with_metadata({"lam.checkpoint": str(checkpoint), "lam.quantizer": quantizer})


class ActionLabeler:
    """Ray Data actor: holds the model and one H5 reader per window length."""

    def __init__(self, checkpoint: str, data_dir: str, dataset_key: str, shape: tuple, use_gpu: bool = False):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model, _ = load_model(checkpoint, self.device)
        self.data_dir, self.dataset_key, self.shape = data_dir, dataset_key, LatentShape(*shape)
        self.readers: dict[int, WindowReader] = {}

    def _reader(self, length: int) -> WindowReader:
        if length not in self.readers:
            self.readers[length] = WindowReader(self.data_dir, length, self.dataset_key, self.shape)
        return self.readers[length]

    @torch.no_grad()
    def __call__(self, rows: pd.DataFrame) -> pd.DataFrame:
        out = []
        for length, group in rows.groupby("length", sort=False):
            x = torch.from_numpy(self._reader(int(length)).read_batch(group["file"].tolist(), group["start"].tolist())).to(self.device)
            indices, z = self.model.encode_actions(x)  # (B, L-1, K), (B, L-1, K, D)
            ids = self.model.action_ids(indices).cpu().numpy()
            codes = indices.cpu().numpy()
            continuous = self.model.quantizer.continuous
            vectors = z.flatten(2).cpu().numpy().astype(np.float32) if continuous else None  # (B, L-1, K*D)
            for i, (file, start, first_t) in enumerate(zip(group["file"], group["start"], group["first_t"])):
                ts = np.arange(first_t, start + length)
                j = ts - start - 1  # index of transition t-1 -> t within the window
                columns = {"file": file, "t": ts, "codes": list(codes[i, j]), "action_id": ids[i, j]}
                if continuous:
                    columns["vector"] = list(vectors[i, j])
                out.append(pd.DataFrame(columns))
        return pd.concat(out, ignore_index=True) if out else pd.DataFrame({k: [] for k in SCHEMA.names})


def plan(manifest: Manifest, files: list[str], T: int) -> tuple[list[dict], int]:
    rows, transitions = [], 0
    for rel in files:
        n = frame_count(manifest, rel)
        transitions += max(0, n - 1)
        rows += [{"file": rel, "start": s, "length": length, "first_t": first} for s, length, first in export_windows(n, T)]
    return rows, transitions


def export_actions(checkpoint: str, data_dir: str, out: str, manifest_path: str | None = None, split: str | None = None,
                   batch_size: int = 16, num_actors: int = 1, use_gpu: bool = False, progress: bool = True) -> dict:
    """Write the actions of every transition of the selected files to `out` (a Parquet file)."""
    model, cfg = load_model(checkpoint)
    schema = export_schema(model.quantizer.continuous, checkpoint, cfg.model.quantizer)
    manifest = load_manifest(manifest_path or Path(data_dir) / "manifest.json", data_dir)
    files = manifest.split_files(split) if split else sorted({f for fs in manifest.splits.values() for f in fs})
    rows, transitions = plan(manifest, files, cfg.data.sequence_length)

    route_console()  # progress is the bar below; Ray's lines stay in its session logs
    init_ray(min_cpus=num_actors + 1)
    shape = manifest.latent_shape
    ds = ray.data.from_items(rows).map_batches(
        ActionLabeler,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "data_dir": str(manifest.data_dir), "dataset_key": manifest.dataset_key,
                               "shape": shape.as_tuple(), "use_gpu": use_gpu},
        batch_size=batch_size, batch_format="pandas", concurrency=num_actors, num_gpus=1 if use_gpu else 0,
    )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    written = 0
    with pq.ParquetWriter(tmp, schema) as writer, tqdm(total=transitions, unit="transition", desc="exporting", file=sys.stderr, disable=not progress) as bar:
        for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
            if len(batch):
                writer.write_table(pa.Table.from_pandas(batch[schema.names], schema=schema, preserve_index=False))
                written += len(batch)
                bar.update(len(batch))
    tmp.replace(out_path)  # a crash never leaves a half-written file under the final name
    return {"out": str(out_path), "files": len(files), "rows": written, "expected_rows": transitions}
