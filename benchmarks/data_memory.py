"""Peak memory and speed of preparing a corpus (read, split, tokenise, pack into cached blocks) against its size.

Synthetic corpora of the requested sizes are written as JSONL from the built-in corpora's documents, cycled with
new document ids (one JSON line each, so every line is its own document), and a byte-level BPE of 8,192 tokens is
trained once on the built-in Wikipedia. Each size is then prepared from an empty block cache in a fresh child
process, which reports its peak resident memory (Linux VmHWM, which counts the pages of memory-mapped files it
has read) and its peak anonymous memory (RssAnon, sampled every 20 ms: what it allocated), the seconds and the
tokens packed; the
tokenizer's own batch-encode speed on a 20 MB sample of the same text is the pipeline's ceiling. A second child
then trains a tiny model (llama-1x64) for two steps on the prepared corpus (its blocks cached, as every run after
the first finds them) and reports its peak: the memory a run needs to start.

    python benchmarks/data_memory.py --sizes 100 400 1000 --workdir /tmp/kinherit-data --json data.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

SAMPLER = """
import threading, time
def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
anon = [0.0]
def sample():
    while True:
        anon[0] = max(anon[0], status_mb("RssAnon"))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
"""
CHILD = SAMPLER + """
import json, sys
from kinherit.data import CorpusSpec, build_blocks, load_corpus, load_tokenizer
path, tokenizer_dir, cache, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = load_tokenizer(tokenizer_dir)
start_rss, started = status_mb("VmRSS"), time.perf_counter()
corpus = load_corpus([CorpusSpec(source=path, validation_fraction=0.01)])
loaded = time.perf_counter()
train = build_blocks(corpus.train, tokenizer, block, corpus.domains, corpus.fingerprint, "train", cache)
validation = build_blocks(corpus.validation, tokenizer, block, corpus.domains, corpus.fingerprint, "validation", cache)
done = time.perf_counter()
print(json.dumps({"peak_mb": status_mb("VmHWM"), "peak_anon_mb": anon[0], "start_mb": start_rss,
                  "load_seconds": loaded - started,
                  "seconds": done - started, "blocks": len(train) + len(validation),
                  "tokens": (len(train) + len(validation)) * block,
                  "documents": len(corpus.train) + len(corpus.validation)}))
"""
TRAIN_CHILD = SAMPLER + """
import json, sys
from kinherit.commands.pretrain import pretrain
from kinherit.training.options import DataArguments, InheritanceArguments, KinheritTrainingArguments, ModelArguments
path, tokenizer_dir, cache, block, output = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
data = DataArguments(corpus=[path], tokenizer=tokenizer_dir, cache_dir=cache, block_size=block,
                     validation_fraction=0.01)
args = KinheritTrainingArguments(output_dir=output, max_steps=2, per_device_train_batch_size=8, report_to="none",
                                 eval_strategy="no", save_strategy="no", disable_tqdm=True, use_cpu=True)
pretrain(ModelArguments(model="llama-1x64"), data, InheritanceArguments(), args)
print(json.dumps({"train_peak_mb": status_mb("VmHWM"), "train_peak_anon_mb": anon[0]}))
"""


def write_corpus(path: Path, megabytes: float) -> int:
    """A JSONL corpus of about `megabytes` MB of text from the built-in corpora; returns its documents."""
    from kinherit.data import BUILTIN_CORPORA

    documents = [text for name in ("wikipedia", "shakespeare", "bible", "python-code")
                 for _id, text in BUILTIN_CORPORA[name]() if text.strip()]
    written, count = 0, 0
    with open(path, "w", encoding="utf-8") as handle:
        for text in itertools.cycle(documents):
            if written >= megabytes * 2**20:
                break
            handle.write(json.dumps({"text": text}) + "\n")
            written += len(text.encode("utf-8"))
            count += 1
    return count


def encode_rate(tokenizer_dir: Path, corpus: Path, megabytes: int = 20) -> float:
    """Tokens per second of the tokenizer's own batch encoding of the corpus's first `megabytes` MB."""
    from kinherit.data import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    texts, size = [], 0
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1])
            if size > megabytes * 2**20:
                break
    started = time.perf_counter()
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return tokens / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[100, 400], help="corpus sizes in MB of text")
    parser.add_argument("--workdir", default="/tmp/kinherit-data", help="where the corpora and caches are written")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--no-train", action="store_true", help="measure the preparation only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    from kinherit.data import CorpusSpec, load_corpus, train_tokenizer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = work / f"tokenizer-{args.vocab_size}"
    if not tokenizer_dir.exists():
        train_tokenizer(load_corpus([CorpusSpec("wikipedia")]).train, args.vocab_size, tokenizer_dir)
    results = {"sizes": {}}
    for megabytes in args.sizes:
        corpus = work / f"corpus-{megabytes}MB.jsonl"
        if not corpus.exists():
            write_corpus(corpus, megabytes)
        cache = work / f"cache-{megabytes}MB-{time.time_ns()}"
        child = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(tokenizer_dir), str(cache),
                                str(args.block_size)], capture_output=True, text=True, check=True)
        entry = json.loads(child.stdout.strip().splitlines()[-1])
        entry["train_peak_mb"] = entry["train_peak_anon_mb"] = None
        if not args.no_train:
            trained = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(corpus), str(tokenizer_dir), str(cache),
                                      str(args.block_size), str(cache / "run")], capture_output=True, text=True,
                                     check=True)
            entry.update(json.loads(trained.stdout.strip().splitlines()[-1]))
        entry["encode_tokens_per_second"] = encode_rate(tokenizer_dir, corpus)
        entry["tokens_per_second"] = entry["tokens"] / entry["seconds"]
        entry["text_mb"] = megabytes
        results["sizes"][megabytes] = entry
        training = "" if entry["train_peak_mb"] is None else \
            f"; training to step 2: {entry['train_peak_mb']:,.0f} MB ({entry['train_peak_anon_mb']:,.0f} MB anonymous)"
        print(f"{megabytes:>6g} MB text: preparing {entry['peak_mb']:,.0f} MB ({entry['peak_anon_mb']:,.0f} MB "
              f"anonymous){training}; {entry['seconds']:.1f} s "
              f"({entry['load_seconds']:.1f} s reading and splitting), {entry['tokens']:,} tokens, "
              f"{entry['tokens_per_second']:,.0f} tokens/s (the tokenizer alone: "
              f"{entry['encode_tokens_per_second']:,.0f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
