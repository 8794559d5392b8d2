"""Sealed folders: a manifest of every file's size and SHA-256, written last, so that a folder whose
writing was interrupted (no manifest) or whose files changed since (truncated, corrupt) is detected
before anything reads it. Checkpoints, final models, tokenizers and data caches are sealed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kinherit.core.atomic import fsync_folder, write_json_atomic
from kinherit.core.errors import KinheritError

logger = logging.getLogger(__name__)

MANIFEST = "kinherit-manifest.json"
MANIFEST_FORMAT = "kinherit-manifest-v1"
SETTLED_SECONDS = 2.0  # see `settled`
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def file_digest(path: Path, flush: bool = False) -> str:
    """SHA-256 of a file, read in blocks (`flush`: also make sure its contents are on disk)."""
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if flush:
            os.fsync(handle.fileno())
        return digest


def weights_digest(checkpoint: str | os.PathLike) -> str:
    """The SHA-256 of each weight file of a checkpoint (safetensors or bin), as one string: what a cache built
    from the checkpoint, or a result measured on it, is keyed by."""
    files = sorted(p for p in Path(checkpoint).iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise KinheritError(f"{checkpoint} holds no weight files (.safetensors or .bin)")
    return ",".join(f"{p.name}:{file_digest(p)}" for p in files)


def _files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """The files and folders under a sealed `folder` that its manifest does not list (hidden ones included):
    what replacing the folder would delete that is not its own."""
    folder = Path(folder)
    listed = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"])
    parents = {str(parent) for name in listed for parent in Path(name).parents}
    return sorted(rel for p in folder.rglob("*") if (rel := str(p.relative_to(folder))) != MANIFEST
                  and rel not in listed and not (p.is_dir() and rel in parents))


def seal(folder: str | os.PathLike, files: Iterable[str] | None = None) -> None:
    """Write the manifest of `files` (default: every file under `folder`); call once the folder is complete.

    Every file and folder is flushed to disk before the manifest is written (and the manifest after), so a
    power loss never leaves a sealed folder whose files are not whole.
    """
    folder = Path(folder)
    names = sorted(files) if files is not None else _files_of(folder)
    entries = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_digest(folder / name, flush=True)}
               for name in names}
    for sub in sorted({folder / parent for name in names for parent in Path(name).parents}, reverse=True):
        fsync_folder(sub)  # deepest first: each folder's entry in its parent is flushed after it
    write_json_atomic(folder / MANIFEST, {"format": MANIFEST_FORMAT, "files": entries})
    fsync_folder(folder.parent)  # the folder's own entry


def unseal(folder: str | os.PathLike) -> None:
    """Remove the manifest before a folder's files are rewritten, so a rewrite cut short never reads as sealed."""
    (Path(folder) / MANIFEST).unlink(missing_ok=True)


def is_sealed(folder: str | os.PathLike) -> bool:
    """Whether `folder` has a manifest (its files are not checked here)."""
    return (Path(folder) / MANIFEST).is_file()


def verify(folder: str | os.PathLike, what: str,
           hash_now: Callable[[str], bool] = lambda name: True, remember: bool = False) -> dict[str, dict[str, Any]]:
    """Raise a `KinheritError` naming the file if `folder` is unsealed, or a file is missing, truncated or corrupt;
    returns the manifest's entries. Files for which `hash_now(name)` is false are checked for size only: their
    reader checks each one's digest with `verify_file` when it first opens it (a large cache is then not read
    whole at every start). With `remember`, a file hashed once is not hashed again while its inode, size,
    modification and change times stay those it had then (`verified_stamp`: the change time moves whenever its
    contents or times are changed, so only a fault of the disk itself goes unseen)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise KinheritError(f"{what} {folder} is incomplete: it has no {MANIFEST}, so writing it was interrupted; "
                            "delete that folder (and resume from an earlier one, or rebuild it)")
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise KinheritError(f"{what} {folder}: its manifest {manifest} is unreadable ({error}); delete that "
                            "folder and rebuild it") from error
    stamp_path = verified_stamp(folder)
    known = _read_stamp(stamp_path) if remember else {}
    stamps = {}
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            raise KinheritError(f"{what} {folder} is missing {path}; delete that folder and rebuild it")
        stat = path.stat()
        if stat.st_size != entry["bytes"]:
            raise KinheritError(f"{what} file {path} has {stat.st_size} bytes where its manifest says "
                                f"{entry['bytes']}: it is truncated or was changed; delete that folder and rebuild it")
        if not hash_now(name):
            continue
        if not settled(stat):  # written so recently that a change within one clock tick would not show
            verify_file(path, entry, what)
            continue
        stamps[name] = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, entry["sha256"]]
        if known.get(name) != stamps[name]:
            verify_file(path, entry, what)
    if remember and stamps != known:
        write_json_atomic(stamp_path, stamps)
    return entries


def settled(stat: os.stat_result) -> bool:
    """Whether a file was last changed long enough ago that any later change shows in its times (file times move
    in clock ticks of a few milliseconds: a file rewritten within one tick keeps them)."""
    return time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > SETTLED_SECONDS * 1e9


def verified_stamp(folder: Path) -> Path:
    """Where `verify(..., remember=True)` keeps what each file of `folder` looked like when it was last hashed:
    a hidden file beside the folder, so the sealed folder itself holds only its own files."""
    return folder.parent / f".{folder.name}.verified.json"


def _read_stamp(path: Path) -> dict[str, list]:
    try:
        stamps = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def verify_file(path: Path, entry: dict[str, Any], what: str) -> None:
    """Raise a `KinheritError` if the file's SHA-256 differs from its manifest `entry`."""
    if file_digest(path) != entry["sha256"]:
        raise KinheritError(f"{what} file {path} is corrupt (its SHA-256 differs from the manifest); delete "
                            "that folder and rebuild it")


@contextmanager
def staged_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; when the block ends, seal it and rename it to `target`.

    If the block raises, the staging folder is removed and `target` is untouched. If another process
    renamed its own copy into place first, this copy is dropped (both come from the same inputs).
    With `replace`, an existing `target` is first moved aside (then deleted), so it is replaced whole.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        seal(staging)
        old = None
        if replace and target.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
        fsync_folder(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_sealed(target):
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a `checkpoint-N` folder, or None for another name."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    return sorted((step, p) for p in run_dir.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None)


def sealed_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete (sealed) `checkpoint-N` folders under `run_dir`, oldest first."""
    run_dir = Path(run_dir)
    return [path for _step, path in _checkpoints(run_dir) if is_sealed(path)] if run_dir.is_dir() else []


def rotate_checkpoints(run_dir: str | os.PathLike, keep: int | None, step: int, protect: str | None = None,
                       kept_steps: Collection[int] = ()) -> None:
    """Keep the newest `keep` sealed checkpoints up to `step`; delete older ones and unsealed leftovers below it.

    Checkpoints above `step` (left by a run that went further before it was stopped) are not touched:
    this run overwrites each of them when it gets there. Sealed checkpoints of `kept_steps` are kept besides
    (and not counted in) the newest `keep`.
    """
    if keep is None or keep <= 0:
        return
    run_dir = Path(run_dir)
    upto = [(s, p) for s, p in _checkpoints(run_dir) if s <= step]
    sealed = [p for s, p in upto if is_sealed(p) and s not in kept_steps]
    doomed = [p for _s, p in upto if not is_sealed(p)] + sealed[:-keep]
    for path in doomed:
        if protect is None or Path(protect).resolve() != path.resolve():
            shutil.rmtree(path, ignore_errors=True)


def last_good_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The newest sealed, verified `checkpoint-N` under `run_dir`, skipping (with a warning) unsealed ones.

    An unsealed checkpoint is one whose writing was cut short; a sealed one whose files no longer match
    its manifest is corrupt and raises, since resuming silently from an older one would lose work unseen.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    for _step, path in reversed(_checkpoints(run_dir)):
        if not is_sealed(path):
            logger.warning("skipping %s: it has no %s, so writing it was interrupted", path, MANIFEST)
            continue
        verify(path, "checkpoint")
        return str(path)
    return None
