"""One shard file of a teacher cache: the top-K rows of a run of blocks, plain or compressed block by block.

Every shard is a safetensors file with `offsets` `[blocks + 1]` (each block's first row). Then either

- plain (`compression: none`): `ids` `[positions, K]` (uint16 when the vocabulary fits, else int32) and
  `log_probs` `[positions, K]` (float16 or float32), read by slicing the memory-mapped file; or
- `zstd`: each block's ids and log-probabilities compressed on their own (zstd level 3, their bytes shuffled
  most significant first, which groups the log-probabilities' exponents and the ids' high bits), stored as the
  byte tensors `ids_zstd` and `log_probs_zstd` with each block's byte offsets (`ids_bytes`, `log_probs_bytes`):
  a student reads a block by decompressing that block only, in the order it is taught.

The codec is pyarrow's zstd (already a dependency of `datasets`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kinherit.core.atomic import staging_path
from kinherit.data.blocks import token_type
from kinherit.inheritance.topk import TopKTarget

COMPRESSIONS = ("zstd", "none")
ZSTD_LEVEL = 3
LOG_PROB_DTYPES = ("float16", "float32")
FIELDS = ("ids", "log_probs")


def stored_types(vocab: int, log_prob_dtype: str) -> dict[str, np.dtype]:
    """The types a shard stores: ids in the fewest bytes the vocabulary needs (as the blocks hold them), log-probs
    in `log_prob_dtype`."""
    return {"ids": np.dtype(token_type(vocab)[1]), "log_probs": np.dtype(log_prob_dtype)}


def _shuffled(values: np.ndarray) -> bytes:
    """The bytes of `values` grouped by significance, most significant first (all high bytes, then the next...)."""
    raw = values.reshape(-1).view(np.uint8).reshape(-1, values.itemsize)
    return np.ascontiguousarray(raw[:, ::-1].T).tobytes()


def _unshuffled(raw: bytes, dtype: np.dtype, columns: int) -> np.ndarray:
    """`_shuffled` undone: `[rows, columns]` values of `dtype`."""
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes[::-1].T).view(dtype).reshape(-1, columns)


def write_shard(path: Path, target: TopKTarget, counts: list[int], vocab: int, log_prob_dtype: str,
                compression: str) -> None:
    """Write one shard atomically: each block's rows (`counts` of them, in order) of ids and log-probs."""
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(counts, dtype=torch.int64).cumsum(0)
    types = stored_types(vocab, log_prob_dtype)
    fields = {"ids": target.ids.cpu().numpy().astype(types["ids"]),
              "log_probs": target.log_probs.cpu().float().numpy().astype(types["log_probs"])}
    tensors = {"offsets": offsets}
    if compression == "none":
        tensors.update({name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in fields.items()})
    else:
        codec = pa.Codec("zstd", compression_level=ZSTD_LEVEL)
        for name, array in fields.items():
            frames = [codec.compress(_shuffled(array[lo:hi]), asbytes=True)
                      for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
            sizes = torch.zeros(len(frames) + 1, dtype=torch.int64)
            sizes[1:] = torch.tensor([len(frame) for frame in frames], dtype=torch.int64).cumsum(0)
            data = b"".join(frames)
            tensors[f"{name}_zstd"] = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
                                       else torch.zeros(0, dtype=torch.uint8))
            tensors[f"{name}_bytes"] = sizes
    staging = staging_path(path)
    save_file(tensors, str(staging))
    os.replace(staging, path)


class ShardReader:
    """An open shard: each block's row range, and its rows' first `columns` ids and log-probs."""

    def __init__(self, path: Path, compression: str, top_k: int, vocab: int, log_prob_dtype: str) -> None:
        self.handle: Any = safe_open(str(path), "pt")
        self.offsets = self.handle.get_tensor("offsets")
        self.compression, self.top_k = compression, top_k
        if compression != "none":
            self.codec = pa.Codec("zstd")
            self.types = stored_types(vocab, log_prob_dtype)
            self.frames = {name: self.handle.get_tensor(f"{name}_bytes") for name in FIELDS}

    def rows(self, block: int) -> tuple[int, int]:
        """The first and past-the-last row of the shard's `block`-th block."""
        return int(self.offsets[block]), int(self.offsets[block + 1])

    def read(self, block: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `block`-th block's ids and log-probs, their first `columns` tokens, in their stored types."""
        lo, hi = self.rows(block)
        if self.compression == "none" or lo == hi:
            return tuple(self.handle.get_slice(name)[lo:hi, :columns] for name in FIELDS)
        read = []
        for name in FIELDS:
            start, stop = int(self.frames[name][block]), int(self.frames[name][block + 1])
            dtype = self.types[name]
            packed = self.handle.get_slice(f"{name}_zstd")[start:stop].numpy().tobytes()
            raw = self.codec.decompress(packed, decompressed_size=(hi - lo) * self.top_k * dtype.itemsize,
                                        asbytes=True)
            values = _unshuffled(raw, dtype, self.top_k)[:, :columns]
            read.append(torch.from_numpy(values))
        return read[0], read[1]
