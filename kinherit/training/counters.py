"""What a KI run counts beside its loss: the inheritance statistics between log records, and the training seconds,
FLOPs and skipped batches, which each checkpoint keeps so that a resumed run continues them."""

from __future__ import annotations

import json
import time
from dataclasses import astuple, dataclass
from pathlib import Path

import torch

from kinherit.core.atomic import write_json_atomic
from kinherit.inheritance.loss import LossSums

COUNTERS = "kinherit_counters.json"  # in each checkpoint: training seconds, FLOPs and skipped batches so far


@dataclass
class InheritStats:
    """Loss sums over the training batches since the last log record (float64, summed over processes)."""

    self_loss: float = 0.0
    ki_loss: float = 0.0
    agreements: float = 0.0
    positions: float = 0.0
    taught: float = 0.0  # positions taught by a teacher (the KI terms are computed only there)

    def add(self, sums: LossSums, taught: bool) -> None:
        """Add one batch's sums."""
        self.self_loss += sums.self_loss
        self.ki_loss += sums.ki_loss
        self.agreements += sums.agreements
        self.positions += sums.positions
        self.taught += sums.positions if taught else 0

    def as_tensor(self, device: torch.device) -> torch.Tensor:
        """The fields as one float64 tensor, for a reduction over processes."""
        return torch.tensor(astuple(self), dtype=torch.float64, device=device)

    @classmethod
    def of(cls, values: torch.Tensor) -> InheritStats:
        """The inverse of `as_tensor`."""
        return cls(*values.tolist())

    def records(self, alpha: float | None) -> dict[str, float]:
        """The log record's `inherit/...` entries (the KI terms only where a teacher taught)."""
        if self.positions == 0:
            return {}
        records = {"inherit/self_loss": self.self_loss / self.positions}
        if alpha is not None:
            records["inherit/alpha"] = alpha
        if self.taught > 0:
            records["inherit/ki_loss"] = self.ki_loss / self.taught
            records["inherit/agreement"] = self.agreements / self.taught
        return records


@dataclass
class RunCounters:
    """Training wall-clock seconds (evaluation excluded), FLOPs and skipped batches, continued across resumes."""

    train_flops: float = 0.0
    skipped_batches: int = 0
    seconds_before: float = 0.0  # training seconds of the run before this process started (a resume)
    clock_start: float | None = None
    eval_seconds: float = 0.0
    cross_tokenizer: list[float] | None = None  # teachers with another tokenizer: their counts over all processes

    def start_clock(self) -> None:
        """Training starts (or resumes) now."""
        self.clock_start = time.perf_counter()
        self.eval_seconds = 0.0

    def train_seconds(self) -> float:
        """Training wall-clock seconds so far (evaluation excluded)."""
        if self.clock_start is None:
            return self.seconds_before
        return self.seconds_before + time.perf_counter() - self.clock_start - self.eval_seconds

    def save(self, checkpoint: str | Path) -> None:
        """Write the counters into a checkpoint folder (before it is sealed)."""
        write_json_atomic(Path(checkpoint) / COUNTERS, {"train_seconds": self.train_seconds(),
                                                       "train_flops": self.train_flops,
                                                       "skipped_batches": self.skipped_batches,
                                                       "cross_tokenizer": self.cross_tokenizer})

    def restore(self, checkpoint: str | Path) -> None:
        """The counters as they were when `checkpoint` was saved (unchanged if it holds none)."""
        path = Path(checkpoint) / COUNTERS
        if path.exists():
            counters = json.loads(path.read_text(encoding="utf-8"))
            self.seconds_before = counters["train_seconds"]
            self.train_flops = counters["train_flops"]
            self.skipped_batches = counters["skipped_batches"]
            self.cross_tokenizer = counters.get("cross_tokenizer")
