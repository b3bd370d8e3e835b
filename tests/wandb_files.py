"""Read the metric keys back from a wandb offline run file (`run-*.wandb`).

The file is wandb's transaction log: a 7-byte header (":W&B", magic, version) and
then LevelDB-log framed records (4-byte CRC, 2-byte length, 1-byte type) in
32 KiB blocks, each payload a `wandb_internal_pb2.Record` protobuf. We parse it
with wandb's own protobuf definitions, so the test sees what wandb would sync.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield _parse(payload)
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield _parse(pending + payload)
            pending = b""
        else:
            break  # zero fill at the end of a file still being written


def _parse(payload: bytes):
    record = wandb_internal_pb2.Record()
    record.ParseFromString(payload)
    return record


def history_keys(path: str | Path) -> set[str]:
    keys = set()
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in r.history.item}
    return keys
