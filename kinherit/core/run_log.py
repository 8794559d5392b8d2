"""A run's `log.jsonl`: one JSON record per line, appended as training goes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
LOG_FILE = "log.jsonl"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a log file, leaving out blank lines and lines that are not a JSON object (the last line of a
    run killed while writing it; any other such line is reported)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number != len(lines):
                logger.warning("%s line %d is not a JSON record; left out", path, number)
            continue
        records.append(record)
    return records
