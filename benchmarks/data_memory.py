"""Peak memory and speed of preparing a corpus (read, split, tokenise, pack into cached blocks) against its size.

Synthetic corpora of the requested sizes are written as JSONL from the built-in corpora's documents, cycled with
new document ids (one JSON line each, so every line is its own document), and a byte-level BPE of 8,192 tokens is
trained once on the built-in Wikipedia. Each size is then prepared from an empty block cache in a fresh child
process, which reports its peak resident memory (Linux VmHWM, which counts the pages of memory-mapped files it
has read) and its peak anonymous memory (RssAnon, sampled every 20 ms: what it allocated), the seconds and the
tokens packed; the tokenizer's own batch-encode speed on a 20 MB sample of the same text is the pipeline's ceiling.
A second child then trains a tiny model (llama-1x64) for two steps on the prepared corpus (its blocks cached, as
every run after the first finds them; its validation pass skipped) and reports its peak: the memory a run needs to
start (`--starts`: a machine's first start, then a later one, which finds the corpus split and the blocks' hash
remembered). `--parts N` prepares with N processes at once (`kinherit prepare --parts`); `--train_processes N` starts N
training runs at once on the same blocks.

    python benchmarks/data_memory.py --sizes 100 400 1000 --workdir /tmp/kinherit-data --json data.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
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
from kinherit.data import CorpusSpec, corpus_blocks, load_corpus, load_tokenizer
from kinherit.data.blocks import prepare_part
path, tokenizer_dir, cache, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
part, parts = int(sys.argv[5]), int(sys.argv[6])
tokenizer = load_tokenizer(tokenizer_dir)
start_rss, started = status_mb("VmRSS"), time.perf_counter()
corpus = load_corpus([CorpusSpec(source=path, validation_fraction=0.01)])
loaded = time.perf_counter()
blocks = {}
for split in ("train", "validation"):
    if parts == 1 or prepare_part(corpus, split, tokenizer, block, part, parts, cache):
        blocks[split] = len(corpus_blocks(corpus, split, tokenizer, block, cache))
done = time.perf_counter()
print(json.dumps({"peak_mb": status_mb("VmHWM"), "peak_anon_mb": anon[0], "start_mb": start_rss,
                  "load_seconds": loaded - started, "seconds": done - started,
                  "blocks": sum(blocks.values()) if len(blocks) == 2 else None,
                  "documents": corpus.count("train") + corpus.count("validation")}))
"""
TRAIN_CHILD = SAMPLER + """
import json, sys
from kinherit.commands.pretrain import pretrain
from kinherit.training.trainer import InheritanceTrainer
InheritanceTrainer.evaluate = lambda self, *args, **kwargs: {"eval_loss": 0.0}  # measures the start, not validation
from kinherit.training.options import DataArguments, InheritanceArguments, KinheritTrainingArguments, ModelArguments
path, tokenizer_dir, cache, block, output = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
data = DataArguments(corpus=[path], tokenizer=tokenizer_dir, cache_dir=cache, block_size=block,
                     validation_fraction=0.01)
args = KinheritTrainingArguments(output_dir=output, max_steps=2, per_device_train_batch_size=8, report_to="none",
                                 eval_strategy="no", save_strategy="no", disable_tqdm=True, use_cpu=True)
started = time.perf_counter()
pretrain(ModelArguments(model="llama-1x64"), data, InheritanceArguments(), args)
print(json.dumps({"train_peak_mb": status_mb("VmHWM"), "train_peak_anon_mb": anon[0],
                  "train_seconds": time.perf_counter() - started}))
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


def _children(commands: list[list[str]]) -> list[dict]:
    """Run the commands at once; each one's last line of output, read as JSON."""
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command in commands]
    results = []
    for child in running:
        out, err = child.communicate()
        if child.returncode:
            raise SystemExit(f"a measuring process failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def prepare(corpus: Path, tokenizer_dir: Path, cache: Path, block_size: int, parts: int) -> dict:
    """Prepare `corpus` into `cache` with `parts` processes at once: the largest peak, the wall-clock seconds."""
    started = time.perf_counter()
    children = _children([[sys.executable, "-c", CHILD, str(corpus), str(tokenizer_dir), str(cache), str(block_size),
                           str(part), str(parts)] for part in range(parts)])
    seconds = time.perf_counter() - started
    blocks = next(child["blocks"] for child in children if child["blocks"] is not None)  # the one that packed
    return {"peak_mb": max(child["peak_mb"] for child in children),
            "peak_anon_mb": max(child["peak_anon_mb"] for child in children),
            "load_seconds": max(child["load_seconds"] for child in children), "seconds": seconds,
            "blocks": blocks, "tokens": blocks * block_size, "tokens_per_second": blocks * block_size / seconds,
            "documents": children[0]["documents"], "processes": parts}


def forget(cache: Path) -> None:
    """Remove what a first start on a machine leaves for later starts: the corpus split memo and the stamps of the
    caches already hashed, so that the next start is a first one."""
    shutil.rmtree(cache / "corpora", ignore_errors=True)
    for stamp in cache.rglob(".*.verified.json"):
        stamp.unlink()


def train(corpus: Path, tokenizer_dir: Path, cache: Path, block_size: int, processes: int) -> list[dict]:
    """Each of `processes` runs started at once on the prepared corpus, to step 2: its peak memory and seconds (a
    tiny model's two steps: nearly all of it is the start)."""
    return _children([[sys.executable, "-c", TRAIN_CHILD, str(corpus), str(tokenizer_dir), str(cache),
                       str(block_size), str(cache / f"run-{time.time_ns()}-{index}")] for index in range(processes)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[100, 400], help="corpus sizes in MB of text")
    parser.add_argument("--workdir", default="/tmp/kinherit-data", help="where the corpora and caches are written")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--parts", type=int, default=1,
                        help="prepare with this many processes at once (`kinherit prepare --parts`)")
    parser.add_argument("--no-train", action="store_true", help="measure the preparation only")
    parser.add_argument("--train_processes", type=int, default=1,
                        help="training processes started at once on the prepared corpus (each reports its peak)")
    parser.add_argument("--reuse", action="store_true",
                        help="train on this size's last prepared cache in --workdir, if there is one")
    parser.add_argument("--starts", action="store_true",
                        help="train twice: a machine's first start (the split memo and hash stamps removed), then a "
                             "later one")
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
        earlier = sorted(work.glob(f"cache-{megabytes}MB-*/blocks/train-*/blocks.arrow")) if args.reuse else []
        if earlier:
            cache = earlier[-1].parents[2]
            entry: dict = {"reused": str(cache)}
            print(f"{megabytes:>6g} MB text: reusing the blocks in {cache}", flush=True)
        else:
            cache = work / f"cache-{megabytes}MB-{time.time_ns()}"
            entry = prepare(corpus, tokenizer_dir, cache, args.block_size, args.parts)
            entry["encode_tokens_per_second"] = encode_rate(tokenizer_dir, corpus)
            print(f"{megabytes:>6g} MB text, {args.parts} process(es): preparing {entry['peak_mb']:,.0f} MB per "
                  f"process ({entry['peak_anon_mb']:,.0f} MB anonymous); {entry['seconds']:.1f} s "
                  f"({entry['load_seconds']:.1f} s reading and splitting), {entry['tokens']:,} tokens, "
                  f"{entry['tokens_per_second']:,.0f} tokens/s (the tokenizer alone: "
                  f"{entry['encode_tokens_per_second']:,.0f})", flush=True)
        for start in ([] if args.no_train else ["first", "later"] if args.starts else ["as found"]):
            if start == "first":
                forget(cache)
            runs = train(corpus, tokenizer_dir, cache, args.block_size, args.train_processes)
            entry.setdefault("training", []).extend(dict(run, start=start) for run in runs)
            for index, run in enumerate(runs):
                print(f"{megabytes:>6g} MB text, training process {index + 1} of {args.train_processes} ({start} "
                      f"start), to step 2: {run['train_peak_mb']:,.0f} MB ({run['train_peak_anon_mb']:,.0f} MB "
                      f"anonymous), {run['train_seconds']:.1f} s", flush=True)
        entry["text_mb"] = megabytes
        results["sizes"][megabytes] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
