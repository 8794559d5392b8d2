"""One interface over local files, `datasets` datasets and the built-in corpora.

A corpus is a list of documents, each with an id, a text and a domain tag. The train/validation
split is by document and deterministic: documents are ordered by a hash of their id and the first
`validation_fraction` of them are held out, so no document ever appears in both splits.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from kinherit.core.errors import KinheritError
from kinherit.data.builtin import BUILTIN_CORPORA
from kinherit.data.input_files import jsonl_records, read_text, reading

FILE_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus comes from and how to split it.

    `source` is a built-in name (`wikipedia`, `shakespeare`, `bible`, `python-code`, `python-docs`),
    a local file, folder or glob of `.txt`/`.md`/`.jsonl`/`.parquet` files, a folder written by
    `datasets.Dataset.save_to_disk`, or `hf:NAME` for a dataset on the HuggingFace hub.
    `train_fraction` and `train_offset` keep a slice of the training documents (see `split_documents`).
    """

    source: str
    domain: str | None = None
    text_field: str = "text"
    validation_fraction: float = 0.05
    max_documents: int | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    train_fraction: float = 1.0
    train_offset: float = 0.0

    @property
    def domain_tag(self) -> str:
        """The domain of every document of this corpus (defaults to the source's short name)."""
        if self.domain:
            return self.domain
        if self.source.startswith("hf:"):
            return self.source[3:].split("/")[-1]
        if self.source in BUILTIN_CORPORA:
            return self.source
        path = Path(os.path.expanduser(self.source.rstrip("/")))
        while any(ch in path.name for ch in "*?[") and path.parent != path:
            path = path.parent
        return path.stem or "local"


@dataclass
class Corpus:
    """A split corpus: train and validation documents (columns text, domain, doc_id) and a fingerprint."""

    train: Dataset
    validation: Dataset
    domains: list[str]
    fingerprint: str


def _read_file(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    if path.suffix in (".txt", ".md"):
        yield str(path), read_text(path)
    elif path.suffix == ".jsonl":
        for number, record in jsonl_records(path):
            if text_field not in record:
                raise KinheritError(f"{path}:{number} has no field {text_field!r} (fields: "
                                    f"{sorted(record)}); set the corpus's text_field to the right one")
            yield f"{path}:{number - 1}", str(record[text_field])
    elif path.suffix == ".parquet":
        with reading(path):
            table = Dataset.from_parquet(str(path))
        if text_field not in table.column_names:
            raise KinheritError(f"{path} has no column {text_field!r} (columns: {table.column_names}); "
                                "set the corpus's text_field to the right one")
        for number, text in enumerate(table[text_field]):
            yield f"{path}:{number}", str(text)


def _local_files(source: str) -> list[Path]:
    expanded = os.path.expanduser(source)
    if any(ch in expanded for ch in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(expanded, recursive=True))]
    elif Path(expanded).is_dir():
        paths = sorted(p for p in Path(expanded).rglob("*") if p.suffix in FILE_SUFFIXES)
    else:
        paths = [Path(expanded)]
    files = [p for p in paths if p.is_file() and p.suffix in FILE_SUFFIXES]
    if not files:
        raise KinheritError(f"no {'/'.join(FILE_SUFFIXES)} files found at {source!r}; "
                            "check the path or glob")
    return files


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", ".", "~")) or any(ch in source for ch in "*?[")
            or source.endswith(FILE_SUFFIXES) or os.path.exists(os.path.expanduser(source)))


def _is_saved_dataset(path: str) -> bool:
    folder = Path(path)
    return folder.is_dir() and any((folder / name).exists() for name in ("dataset_info.json", "dataset_dict.json"))


def _hf_documents(spec: CorpusSpec, name_or_path: str) -> Iterator[tuple[str, str]]:
    import datasets

    try:
        if _is_saved_dataset(name_or_path):
            loaded = datasets.load_from_disk(name_or_path)
            table = loaded[spec.hf_split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            table = datasets.load_dataset(name_or_path, spec.hf_config, split=spec.hf_split)
    except KinheritError:
        raise
    except Exception as error:  # datasets raises many types for an unreachable hub
        raise KinheritError(f"could not load dataset {name_or_path!r} with `datasets` ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''}). If you are offline, download "
                            "it elsewhere, save it with `save_to_disk` and pass the folder, or use local "
                            "files or a built-in corpus") from error
    if spec.text_field not in table.column_names:
        raise KinheritError(f"dataset {name_or_path!r} has no column {spec.text_field!r} (columns: "
                            f"{table.column_names}); set the corpus's text_field")
    for number, text in enumerate(table[spec.text_field]):
        yield f"{name_or_path}:{number}", str(text)


def iter_documents(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    """Yield the `(doc_id, text)` pairs of one corpus, in a stable order."""
    source = spec.source
    if source in BUILTIN_CORPORA:
        yield from BUILTIN_CORPORA[source]()
    elif source.startswith("hf:"):
        yield from _hf_documents(spec, source[3:])
    elif _looks_like_path(source):
        expanded = os.path.expanduser(source)
        if _is_saved_dataset(expanded):
            yield from _hf_documents(spec, expanded)
            return
        if not any(ch in expanded for ch in "*?[") and not os.path.exists(expanded):
            raise KinheritError(f"corpus path {source!r} does not exist; check the path")
        for path in _local_files(source):
            yield from _read_file(path, spec.text_field)
    else:
        known = ", ".join(BUILTIN_CORPORA)
        raise KinheritError(f"unknown corpus {source!r}: it is not a built-in corpus ({known}), not an existing "
                            "path, and hub datasets need the prefix 'hf:' (for example hf:wikitext)")


def _split_rank(doc_id: str) -> str:
    return hashlib.sha1(doc_id.encode("utf-8")).hexdigest()


def check_train_slice(train_fraction: float, train_offset: float) -> None:
    """Refuse a training slice [train_offset, train_offset + train_fraction) that is not inside [0, 1]."""
    if not (0.0 < train_fraction <= 1.0 and 0.0 <= train_offset < 1.0 and train_offset + train_fraction <= 1.0 + 1e-9):
        raise KinheritError(f"--train_fraction {train_fraction} and --train_offset {train_offset} must keep a slice "
                            "of the training documents: 0 < train_fraction <= 1, 0 <= train_offset, and their sum "
                            "at most 1")


def split_documents(docs: Iterable[tuple[str, str]], validation_fraction: float, name: str,
                    train_fraction: float = 1.0, train_offset: float = 0.0
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split documents into (train, validation) by document, deterministically by a hash of the id.

    The first `validation_fraction` of the documents in hash order are held out; of the rest, in the same
    order, the slice [train_offset, train_offset + train_fraction) is kept for training. So the validation
    split never depends on the slice, smaller fractions are subsets of larger ones, and the slices
    [0, 0.5) and [0.5, 1) are two disjoint halves.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise KinheritError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    check_train_slice(train_fraction, train_offset)
    unique: dict[str, str] = {}
    for doc_id, text in docs:
        if text.strip():
            unique.setdefault(doc_id, text)
    if not unique:
        raise KinheritError(f"corpus {name!r} has no documents with text; check the source")
    ranked = sorted(unique, key=_split_rank)
    n_val = 0 if validation_fraction == 0 else max(1, round(validation_fraction * len(ranked)))
    if n_val >= len(ranked):
        raise KinheritError(f"corpus {name!r} has {len(ranked)} document(s), too few to hold out "
                            f"{validation_fraction:.0%} for validation; add documents or lower validation_fraction")
    held_out = set(ranked[:n_val])
    rest = ranked[n_val:]
    kept = set(rest[round(train_offset * len(rest)):round(min(1.0, train_offset + train_fraction) * len(rest))])
    if not kept:
        raise KinheritError(f"corpus {name!r} keeps no training document: {len(rest)} training documents and "
                            f"train_fraction {train_fraction}; raise train_fraction")
    train = [(d, unique[d]) for d in unique if d in kept]
    validation = [(d, unique[d]) for d in unique if d in held_out]
    return train, validation


def load_corpus(specs: list[CorpusSpec]) -> Corpus:
    """Load, tag and split one or more corpora into a single `Corpus`."""
    if not specs:
        raise KinheritError("no corpus given; name at least one (for example --corpus wikipedia)")
    rows: dict[str, dict[str, list[str]]] = {
        split: {"text": [], "domain": [], "doc_id": []} for split in ("train", "validation")
    }
    digest = hashlib.sha256()
    domains: list[str] = []
    for spec in specs:
        docs = iter_documents(spec)
        if spec.max_documents is not None:
            docs = (doc for i, doc in zip(range(spec.max_documents), docs, strict=False))
        train, validation = split_documents(docs, spec.validation_fraction, spec.source, spec.train_fraction,
                                            spec.train_offset)
        domain = spec.domain_tag
        if domain not in domains:
            domains.append(domain)
        for split, part in (("train", train), ("validation", validation)):
            for doc_id, text in part:
                rows[split]["text"].append(text)
                rows[split]["domain"].append(domain)
                rows[split]["doc_id"].append(doc_id)
                digest.update(f"{split}\0{domain}\0{doc_id}\0".encode())
                digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return Corpus(train=Dataset.from_dict(rows["train"]), validation=Dataset.from_dict(rows["validation"]),
                  domains=domains, fingerprint=digest.hexdigest())
