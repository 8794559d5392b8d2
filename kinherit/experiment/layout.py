"""The layout of an experiment's output folder: where each run, cache, manifest and report lives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kinherit.core.atomic import write_json_atomic
from kinherit.core.errors import KinheritError

GROWN = "grown"  # the folder of a run's grown initial model


START = "run:"  # a run's model when it starts from another run (`start:`): that run's final checkpoint


LAUNCH_FILE = "launch.json"  # a run's `kinherit pretrain` arguments when it runs under a launcher


CACHES = "caches"  # OUTPUT/caches/KEY: teacher caches the runner built for runs with `cache:`


EVALUATION = "evaluation.json"  # a run's losses on the corpora its `evaluate:` lists


FINETUNING = "finetune.json"  # a run's downstream results on the tasks its `finetune:` lists, per experiment


FINETUNING_ALONG = "finetune_steps.json"  # ... and of its checkpoints at the steps its `finetune_steps:` lists


MANIFESTS = "experiments"  # OUTPUT/experiments/NAME.json: each experiment that uses the folder


REPORTS = "reports"  # OUTPUT/reports/NAME/: each experiment's report


def manifest_path(output_dir: Path, name: str) -> Path:
    """Where experiment `name` keeps its manifest in a shared output folder."""
    return output_dir / MANIFESTS / f"{name}.json"


def report_folder(output_dir: Path, name: str) -> Path:
    """Where experiment `name`'s report, report.json and plots go."""
    return output_dir / REPORTS / name


def check_current_layout(folder: Path) -> None:
    """Refuse an output folder written by kinherit before 0.1 (one `experiment.json`, no `experiments/`)."""
    if (folder / "experiment.json").exists() and not (folder / MANIFESTS).is_dir():
        raise KinheritError(f"{folder} was written by an earlier version of kinherit (it holds experiment.json, not "
                            f"{MANIFESTS}/NAME.json); give the experiment a new output_dir")


def read_results(path: Path, experiment: str) -> dict[str, Any]:
    """One experiment's results in a run's fine-tuning file: experiments sharing a run keep theirs apart, since
    each may fine-tune the same task with other options (a file written before that holds one set: all of it)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["experiments"].get(experiment, {}) if "experiments" in data else data


def write_results(path: Path, experiment: str, results: dict[str, Any]) -> None:
    """Keep `results` as experiment `experiment`'s in a run's fine-tuning file, beside other experiments'."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    write_json_atomic(path, {"experiments": {**data.get("experiments", {}), experiment: results}})
