"""Write files so that a reader never sees half of one: write a temporary sibling, flush it to disk, then rename
it. The folder is flushed too, so that after a power loss the new name points at the whole file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def staging_path(path: Path) -> Path:
    """The temporary sibling a file is written to before it is renamed to `path` (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk and rename it into place."""
    staging = staging_path(path)
    with staging.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    fsync_folder(path.parent)


def save_figure_atomic(figure: Any, path: Path, **options: Any) -> None:
    """`figure.savefig` to a temporary file beside `path` (same format), then rename it into place."""
    staging = staging_path(path)
    figure.savefig(staging, format=path.suffix.lstrip("."), **options)
    os.replace(staging, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
