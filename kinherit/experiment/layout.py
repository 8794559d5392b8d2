"""The layout of an experiment's output folder: where each run, cache, manifest and report lives."""

from __future__ import annotations

from pathlib import Path

from kinherit.core.errors import KinheritError

GROWN = "grown"  # the folder of a run's grown initial model


START = "run:"  # a run's model when it starts from another run (`start:`): that run's final checkpoint


LAUNCH_FILE = "launch.json"  # a run's `kinherit pretrain` arguments when it runs under a launcher


CACHES = "caches"  # OUTPUT/caches/KEY: teacher caches the runner built for runs with `cache:`


EVALUATION = "evaluation.json"  # a run's losses on the corpora its `evaluate:` lists


FINETUNING = "finetune.json"  # a run's downstream results on the tasks its `finetune:` lists


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
