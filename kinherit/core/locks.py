"""Exclusive locks on output folders (`flock` on a lock file beside them), so that two processes sharing a folder
never build the same tokenizer, cache or run at once. The kernel releases a lock when its process dies, so a
killed builder never leaves a stale one."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from kinherit.core.errors import KinheritError


def lock_file(target: str | os.PathLike) -> Path:
    """The lock file of `target`: a hidden sibling, `.NAME.lock` (the folder itself may not exist yet)."""
    target = Path(os.path.abspath(target))
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, wait: bool = True, waiting: str = "") -> Iterator[None]:
    """Hold `target`'s lock for the block. If another process holds it: wait for it (printing `waiting` first),
    or with `wait=False` raise an error naming the folder."""
    path = lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise KinheritError(f"another process is writing to {target} (it holds {path}); wait for it to end, "
                                    "or choose another folder") from None
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
