"""One interface over local files, `datasets` datasets and the built-in corpora.

A corpus is a list of documents, each with an id, a text and a domain tag. The train/validation
split is by document and deterministic: documents are ordered by a hash of their id and the first
`validation_fraction` of them are held out, so no document ever appears in both splits.

Loading streams: a first pass reads only the documents' ids (8 bytes of hash each), a second computes the
corpus's fingerprint, and a split's documents are written to a memory-mapped Arrow file in the cache only when
something reads them (a run whose blocks are cached never does). Memory grows with the number of documents
(a few bytes each), not with their text. The split and fingerprint are remembered under a signature of the
sources (`source_signature`), so a later start with unchanged sources makes neither pass.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import os
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset

from kinherit.core.arrow import write_arrow
from kinherit.core.errors import KinheritError
from kinherit.core.sealed import settled, staged_folder, verify
from kinherit.data.builtin import BUILTIN_CORPORA, BUILTIN_FILES
from kinherit.data.input_files import jsonl_records, read_text, reading
from kinherit.data.split_memo import memo_folder, recall_split, remember_split

FILE_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
TEXT_FILE_LIMIT = 256 * 2**20  # a .txt/.md file is one document, read whole
TRAIN, VALIDATION = 1, 2  # a document's split code (0: in neither)
SPLITS = {TRAIN: "train", VALIDATION: "validation"}
DOCUMENTS_FILE = "documents.arrow"
DOCUMENT_SCHEMA = pa.schema([("text", pa.string()), ("domain", pa.string()), ("doc_id", pa.string())])


def default_cache_dir() -> Path:
    """`$KINHERIT_CACHE` or `~/.cache/kinherit`: where documents, blocks and their manifests are cached."""
    return Path(os.environ.get("KINHERIT_CACHE", Path.home() / ".cache" / "kinherit"))


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder a `--cache_dir` names, the default one when it names none."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


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


def _read_file(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    if path.suffix in (".txt", ".md"):
        if path.stat().st_size > TEXT_FILE_LIMIT:
            raise KinheritError(f"{path} is {path.stat().st_size / 2**20:,.0f} MiB, and a .txt or .md file is one "
                                f"document (at most {TEXT_FILE_LIMIT // 2**20} MiB); split it into one file per "
                                "document, or write its documents as the lines of a .jsonl file")
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
        yield from _column_texts(table, text_field, str(path))


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


def _hf_table(spec: CorpusSpec, name_or_path: str) -> Dataset:
    """The split `spec.hf_split` of a saved dataset folder or a hub dataset, with its text column checked."""
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
    return table


def _column_texts(table: Dataset, field: str, name: str) -> Iterator[tuple[str, str]]:
    """`(NAME:ROW, text)` of a dataset's text column, read a batch of rows at a time."""
    number = 0
    for batch in table.select_columns([field]).iter(batch_size=1024):
        for text in batch[field]:
            yield f"{name}:{number}", str(text)
            number += 1


def iter_documents(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    """Yield the `(doc_id, text)` pairs of one corpus, in a stable order."""
    source = spec.source
    if source in BUILTIN_CORPORA:
        yield from BUILTIN_CORPORA[source]()
    elif (dataset := _dataset_name(spec)) is not None:
        yield from _column_texts(_hf_table(spec, dataset), spec.text_field, dataset)
    else:
        for path in _source_files(spec):
            yield from _read_file(path, spec.text_field)


def _dataset_name(spec: CorpusSpec) -> str | None:
    """The hub name or saved-dataset folder a source names, or None when it names files (or a built-in corpus)."""
    if spec.source.startswith("hf:"):
        return spec.source[3:]
    expanded = os.path.expanduser(spec.source)
    return expanded if spec.source not in BUILTIN_CORPORA and _is_saved_dataset(expanded) else None


def _source_files(spec: CorpusSpec) -> list[Path]:
    """The local files a source names (a built-in corpus: the files it reads), with a clear error when none exist."""
    source = spec.source
    if source in BUILTIN_FILES:
        return BUILTIN_FILES[source]()
    if not _looks_like_path(source):
        known = ", ".join(BUILTIN_CORPORA)
        raise KinheritError(f"unknown corpus {source!r}: it is not a built-in corpus ({known}), not an existing "
                            "path, and hub datasets need the prefix 'hf:' (for example hf:wikitext)")
    expanded = os.path.expanduser(source)
    if not any(ch in expanded for ch in "*?[") and not os.path.exists(expanded):
        raise KinheritError(f"corpus path {source!r} does not exist; check the path")
    return _local_files(source)


def source_signature(spec: CorpusSpec) -> str | None:
    """What stands for a source's contents without reading them: each file's path, size and modification time
    (built-in corpora, local files, saved datasets), or a hub dataset's own fingerprint (`datasets` derives it
    from the files it downloaded). None while a file is too fresh for its times to show a change (`settled`)."""
    dataset = _dataset_name(spec)
    if dataset is not None and not _is_saved_dataset(dataset):
        return f"hub:{_hf_table(spec, dataset)._fingerprint}"
    files = sorted(p for p in Path(dataset).rglob("*") if p.is_file()) if dataset else _source_files(spec)
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        if not settled(stat):
            return None
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"files:{len(files)}:{digest.hexdigest()}"


def check_train_slice(train_fraction: float, train_offset: float) -> None:
    """Refuse a training slice [train_offset, train_offset + train_fraction) that is not inside [0, 1]."""
    if not (0.0 < train_fraction <= 1.0 and 0.0 <= train_offset < 1.0 and train_offset + train_fraction <= 1.0 + 1e-9):
        raise KinheritError(f"--train_fraction {train_fraction} and --train_offset {train_offset} must keep a slice "
                            "of the training documents: 0 < train_fraction <= 1, 0 <= train_offset, and their sum "
                            "at most 1")


def _rank(doc_id: str) -> int:
    """A document's place in the split order: the first 8 bytes of the SHA-1 of its id."""
    return int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "big")


def _stream(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    """The corpus's `(doc_id, text)` pairs, at most `max_documents` of them."""
    docs = iter_documents(spec)
    return itertools.islice(docs, spec.max_documents) if spec.max_documents is not None else docs


def split_codes(docs: Iterable[tuple[str, str]], validation_fraction: float, name: str, train_fraction: float = 1.0,
                train_offset: float = 0.0) -> np.ndarray:
    """Each document's split, by its place in `docs`: TRAIN, VALIDATION, or 0 (empty, a repeated id, or outside
    the training slice). One pass that keeps 16 bytes per document, never its text.

    The documents with text are ordered by a hash of their id (the first of a repeated id counts); the first
    `validation_fraction` of them are held out, and of the rest, in the same order, the slice
    [train_offset, train_offset + train_fraction) is kept for training. So the validation split never depends
    on the slice, smaller fractions are subsets of larger ones, and the slices [0, 0.5) and [0.5, 1) are two
    disjoint halves.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise KinheritError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    check_train_slice(train_fraction, train_offset)
    ranks, places, count = array("Q"), array("q"), 0
    for count, (doc_id, text) in enumerate(docs, start=1):
        if text and not text.isspace():
            ranks.append(_rank(doc_id))
            places.append(count - 1)
    if not ranks:
        raise KinheritError(f"corpus {name!r} has no documents with text; check the source")
    _ranks, first = np.unique(np.frombuffer(ranks, dtype=np.uint64), return_index=True)
    ranked = np.frombuffer(places, dtype=np.int64)[first]  # hash order, each id once
    n_val = 0 if validation_fraction == 0 else max(1, round(validation_fraction * len(ranked)))
    if n_val >= len(ranked):
        raise KinheritError(f"corpus {name!r} has {len(ranked)} document(s), too few to hold out "
                            f"{validation_fraction:.0%} for validation; add documents or lower validation_fraction")
    rest = ranked[n_val:]
    kept = rest[round(train_offset * len(rest)):round(min(1.0, train_offset + train_fraction) * len(rest))]
    if not len(kept):
        raise KinheritError(f"corpus {name!r} keeps no training document: {len(rest)} training documents and "
                            f"train_fraction {train_fraction}; raise train_fraction")
    codes = np.zeros(count, dtype=np.int8)
    codes[kept] = TRAIN
    codes[ranked[:n_val]] = VALIDATION
    return codes


def split_documents(docs: Iterable[tuple[str, str]], validation_fraction: float, name: str,
                    train_fraction: float = 1.0, train_offset: float = 0.0
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """`split_codes` applied to documents held in memory: the (train, validation) lists, in their given order."""
    docs = list(docs)
    codes = split_codes(docs, validation_fraction, name, train_fraction, train_offset)
    return ([doc for doc, code in zip(docs, codes, strict=True) if code == TRAIN],
            [doc for doc, code in zip(docs, codes, strict=True) if code == VALIDATION])


@dataclass
class _Part:
    """One corpus of a `Corpus`: where it comes from, its domain, and each document's split."""

    spec: CorpusSpec
    domain: str
    codes: np.ndarray

    def documents(self, code: int) -> Iterator[tuple[str, str]]:
        """The `(doc_id, text)` of this part's documents of one split, in the source's order."""
        for (doc_id, text), mine in zip(_stream(self.spec), self.codes, strict=False):
            if mine == code:
                yield doc_id, text


class Corpus:
    """A split corpus: `train` and `validation` documents (memory-mapped datasets with columns text, domain,
    doc_id, written to the cache on first use), the domains in order, and a fingerprint of the whole."""

    def __init__(self, parts: list[_Part], cache_dir: str | os.PathLike | None = None,
                 fingerprint: str | None = None) -> None:
        self.parts = parts
        self.domains = list(dict.fromkeys(part.domain for part in parts))
        self.cache_root = cache_root(cache_dir)
        self.fingerprint = fingerprint or self._fingerprint()
        self._splits: dict[int, Dataset] = {}

    def _fingerprint(self) -> str:
        """A digest of every document's split, domain, id and text: what blocks and caches are keyed by."""
        digest = hashlib.sha256()
        for part in self.parts:  # per corpus, its training documents then its validation ones, in the source's order
            held_out = []
            for code, (doc_id, text) in zip(part.codes, _stream(part.spec), strict=False):
                if code:
                    piece = (f"{SPLITS[code]}\0{part.domain}\0{doc_id}\0".encode()
                             + hashlib.sha256(text.encode("utf-8")).digest())
                    if code == TRAIN:
                        digest.update(piece)
                    else:
                        held_out.append(piece)
            for piece in held_out:
                digest.update(piece)
        return digest.hexdigest()

    def count(self, split: str) -> int:
        """How many documents a split ("train" or "validation") holds, without reading them."""
        code = TRAIN if split == "train" else VALIDATION
        return int(sum((part.codes == code).sum() for part in self.parts))

    @property
    def train(self) -> Dataset:
        return self._documents(TRAIN)

    @property
    def validation(self) -> Dataset:
        return self._documents(VALIDATION)

    def _documents(self, code: int) -> Dataset:
        """A split's documents, written once per fingerprint into the cache and memory-mapped from there."""
        if code not in self._splits:
            target = self.cache_root / "documents" / f"{SPLITS[code]}-{self.fingerprint[:24]}"
            if not target.exists():
                with staged_folder(target) as staging:
                    write_arrow(staging / DOCUMENTS_FILE, DOCUMENT_SCHEMA, self._batches(code))
            verify(target, "document cache", remember=True)
            self._splits[code] = Dataset.from_file(str(target / DOCUMENTS_FILE))
        return self._splits[code]

    def _in_order(self, code: int) -> Iterator[tuple[str, str, str]]:
        """(doc_id, text, domain) of a split's documents in the split's order, read from their sources."""
        for part in self.parts:
            for doc_id, text in part.documents(code):
                yield doc_id, text, part.domain

    def texts(self, split: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, str]]:
        """(text, domain) of the split's documents `start` to `stop` (places in the split's order), read from their
        sources without writing the split to the cache: what one part of a parallel preparation reads."""
        code = TRAIN if split == "train" else VALIDATION
        for _doc_id, text, domain in itertools.islice(self._in_order(code), start, stop):
            yield text, domain

    def _batches(self, code: int, rows: int = 1024) -> Iterator[pa.RecordBatch]:
        documents = self._in_order(code)
        while batch := list(itertools.islice(documents, rows)):
            doc_ids, texts, domains = zip(*batch, strict=True)
            yield pa.record_batch([list(texts), list(domains), list(doc_ids)], schema=DOCUMENT_SCHEMA)


def load_corpus(specs: list[CorpusSpec], cache_dir: str | os.PathLike | None = None) -> Corpus:
    """Split one or more corpora, tagged by domain, into one `Corpus` (its documents are read when used, into
    `cache_dir`, default `$KINHERIT_CACHE` or ~/.cache/kinherit). The split and fingerprint are remembered there
    (`kinherit.data.split_memo`), so a start whose sources are unchanged reads no document."""
    if not specs:
        raise KinheritError("no corpus given; name at least one (for example --corpus wikipedia)")
    signatures = [source_signature(spec) for spec in specs]
    settings = [dataclasses.asdict(spec) for spec in specs]
    memo = None if None in signatures else memo_folder(cache_root(cache_dir), settings, signatures)
    remembered = recall_split(memo) if memo else None
    codes = remembered[0] if remembered else [
        split_codes(_stream(spec), spec.validation_fraction, spec.source, spec.train_fraction, spec.train_offset)
        for spec in specs]
    corpus = Corpus([_Part(spec, spec.domain_tag, part) for spec, part in zip(specs, codes, strict=True)], cache_dir,
                    fingerprint=remembered[1] if remembered else None)
    if memo and not remembered:
        remember_split(memo, codes, corpus.fingerprint)
    return corpus
