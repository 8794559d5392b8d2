"""Shared fixtures: a small tokenizer and corpus from the built-in Wikipedia slice, kept for the session."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# documents and blocks that a test caches without naming a folder go to this session's own folder, not the user's
os.environ["KINHERIT_CACHE"] = tempfile.mkdtemp(prefix="kinherit-test-cache-")


@pytest.fixture(scope="session")
def wiki_corpus():
    """The first 30 Wikipedia articles, split by document."""
    from kinherit.data import CorpusSpec, load_corpus

    return load_corpus([CorpusSpec("wikipedia", validation_fraction=0.1, max_documents=30)])


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, wiki_corpus):
    """A 512-token byte-level BPE trained on the corpus's train split."""
    from kinherit.data import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(wiki_corpus.train, 512, path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from kinherit.data import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(autouse=True)
def kernel_choice(request):
    """A test's "native" path fails where the native kernels could not be built, rather than test another backend
    under its name."""
    path = request.node.callspec.params.get("path") if hasattr(request.node, "callspec") else None
    if path == "native":
        require_native_kernels()


def require_native_kernels():
    """The native kernels, which must build wherever a C++ compiler is present; skipped where none is (kinherit
    then uses its torch.compile kernels, which the "compiled" paths test)."""
    from kinherit.inheritance.kernels import native

    if native.compiler() is None:
        pytest.skip("no C++ compiler on this machine, so no native kernels to test (kinherit uses torch.compile's)")
    module = native.kernels()
    assert module is not None, "the native loss kernels did not build although a C++ compiler is present"
    return module
