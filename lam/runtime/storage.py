"""Reading and writing small files under a run's storage path: a local folder or a URI (s3://, gs://).

pyarrow's filesystems do the work, the same way Ray Train stores checkpoints,
so metrics and configs land next to the checkpoints wherever those go.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from lam.errors import UserError


class StorageFull(UserError):
    """A write found no space left; the message names the path."""

    def __init__(self, path, detail: str = ""):
        self.path, self.detail = str(path), detail
        super().__init__(f"{path}: no space left on device{detail}; free some space (or pass another --storage_path) "
                         "and run the same command again: it resumes from the last checkpoint")

    def __reduce__(self):  # pickled as its parts (Ray sends it between processes), not as the message
        return type(self), (self.path, self.detail)


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def check_free_space(path: str, needed_bytes: int) -> None:
    """A StorageFull naming `path` when its local filesystem has less than `needed_bytes` free
    (object stores are not checked: they do not fill up)."""
    if is_uri(path):
        return
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise StorageFull(path, f" ({needed_bytes / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)")


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve_storage_path(path: str) -> str:
    """Absolute local path (Ray Train requires one) or the URI unchanged."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def write_text(path: str, text: str) -> None:
    """Write a whole file; local writes go through a temp file + rename so readers never see half of it."""
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(text)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if is_no_space(e):
                raise StorageFull(target) from None
            raise
        os.replace(tmp, target)
        return
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:  # object stores make a whole object visible at once
        f.write(text.encode())


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def list_names(path: str) -> list[str]:
    """The names of the entries directly under the folder `path`; empty when it does not exist."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(p)))


def remove_dir(path: str) -> None:
    """Remove the folder `path` and everything in it."""
    fs, p = _fs(path)
    fs.delete_dir(p)

