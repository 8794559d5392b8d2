"""Reading a user's input files: every failure (unreadable file, bad encoding, a malformed line) becomes one error
naming the file, the line where there is one, and the fix."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kinherit.core.errors import KinheritError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn an OS, encoding or format error raised while reading `path` into an error naming it."""
    try:
        yield
    except KinheritError:
        raise
    except UnicodeDecodeError as error:
        raise KinheritError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); convert it to UTF-8, "
                            "for example with `iconv -f LATIN1 -t UTF-8`") from error
    except csv.Error as error:
        raise KinheritError(f"{path} is not a valid CSV file ({error}); check its quoting and delimiters") from error
    except OSError as error:
        raise KinheritError(f"cannot read {path}: {error.strerror or error}") from error
    except Exception as error:  # noqa: BLE001 - pyarrow and datasets raise their own kinds for a malformed file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise KinheritError(f"cannot read {path} ({type(error).__name__}: {first}); check that it is a valid, "
                            "complete file of its kind") from error


def read_text(path: Path) -> str:
    """A text file's contents; bytes that are not UTF-8 become U+FFFD, and how many is reported."""
    with reading(path):
        data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        logger.warning("%s is not valid UTF-8: %d characters were replaced by U+FFFD", path,
                       text.count("\ufffd") - data.count("\ufffd".encode()))
        return text


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each non-blank line of a JSON lines file; a line that is not a JSON object is an
    error naming it."""
    with reading(path), path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise KinheritError(f"{path}:{number} is not valid JSON ({error.msg}); every line of a .jsonl file "
                                    "must be one JSON object") from error
            if not isinstance(record, dict):
                raise KinheritError(f"{path}:{number} is a JSON {type(record).__name__}, not an object; every line "
                                    "of a .jsonl file must be one JSON object")
            yield number, record
