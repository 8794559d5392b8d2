"""A corpus's split and fingerprint, remembered under a signature of its sources.

Splitting a corpus and fingerprinting it read every document twice; at 4 GB of text that is about 20 seconds at
every start of every process, even when the blocks are cached. Once done, the result (one byte per document and
the fingerprint) is kept in the cache under a key made of the corpus settings and a signature of the sources
that does not read them (`kinherit.data.corpora.source_signature`: each file's size and modification time, or a
hub dataset's own fingerprint), so a later start with unchanged sources reads neither. Like `make`, a file
rewritten with the same size and modification time is not noticed; a changed file is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from kinherit.core.errors import KinheritError
from kinherit.core.sealed import staged_folder, verify

logger = logging.getLogger(__name__)

MEMO_FORMAT = "corpus-split-v1"
MEMO_FILE = "split.json"


def memo_folder(root: Path, settings: list[dict], signatures: list[str]) -> Path:
    """Where the split of corpora with these `settings` and source `signatures` is remembered."""
    key = hashlib.sha256(json.dumps([MEMO_FORMAT, settings, signatures], sort_keys=True).encode()).hexdigest()[:24]
    return Path(os.path.abspath(root / "corpora" / key))


def recall_split(folder: Path) -> tuple[list[np.ndarray], str] | None:
    """Each corpus's split codes and the corpus fingerprint remembered in `folder`; None when there is nothing
    (or nothing whole) to recall, so the caller splits the corpus again."""
    if not folder.is_dir():
        return None
    try:
        verify(folder, "corpus split memo")
        memo = json.loads((folder / MEMO_FILE).read_text(encoding="utf-8"))
        codes = [np.load(folder / name, allow_pickle=False) for name in memo["codes"]]
    except (KinheritError, OSError, ValueError, KeyError) as error:
        logger.warning("ignoring the corpus split memo %s (%s); splitting the corpus again", folder, error)
        return None
    return codes, memo["fingerprint"]


def remember_split(folder: Path, codes: list[np.ndarray], fingerprint: str) -> None:
    """Keep the split codes and fingerprint in `folder` (sealed; an unreadable earlier memo is replaced)."""
    with staged_folder(folder, replace=True) as staging:
        names = [f"codes-{index}.npy" for index in range(len(codes))]
        for name, part in zip(names, codes, strict=True):
            np.save(staging / name, part, allow_pickle=False)
        (staging / MEMO_FILE).write_text(json.dumps({"format": MEMO_FORMAT, "fingerprint": fingerprint,
                                                     "codes": names}), encoding="utf-8")
