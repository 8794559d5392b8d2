"""Writing Arrow files that `datasets.Dataset.from_file` memory-maps: batch by batch, so a file of any size is
written in the memory of one batch."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa


def write_arrow(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Write `batches` as one Arrow stream file at `path`; returns the rows written."""
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows
