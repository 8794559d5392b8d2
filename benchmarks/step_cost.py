"""Cost of a KI training step against self-learning and a naive KD step: time, FLOP bound and peak memory.

For each configuration (a masked and a causal pair, demo-sized and large) this times, in one process
after warm-up and in turns (one step of each per round), the self-learning step (our own fast path:
logits only at valid positions, fused head and loss in chunks), our KI step (the same plus the teacher),
the KI step with the eager (not compiled) loss kernel, the KI step reading the teacher's top-K targets
from a teacher cache on disk instead of running the teacher, and a naive KD step as it is commonly
written (full-vocabulary logits at every position from the models' standard forward, then `F.kl_div`).
Peak memory of each step is measured in a separate child process by maximum resident set size on CPU,
and by `torch.cuda.max_memory_allocated` on CUDA, over a steady step (after a warm-up step that
compiles). Models are randomly initialised: timings do not depend on the weights.

    python benchmarks/step_cost.py --help
    python benchmarks/step_cost.py --configs causal-demo masked-demo --json step_cost.json
    python benchmarks/step_cost.py --quick     # a few minutes: the demo configurations, fewer repeats
    python benchmarks/step_cost.py --cross --configs causal-demo   # teachers with another tokenizer

`--cross` times, on real Wikipedia blocks, the same-tokenizer KI step against a teacher with another tokenizer (a
BPE of twice the vocabulary trained on the same text) teaching live by each `--cross_tokenizer` method, and from
a top-32 cache of its mapped targets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast, TrainingArguments

from kinherit.core.atomic import write_json_atomic
from kinherit.data import load_tokenizer
from kinherit.data.token_text import Bridge
from kinherit.inheritance.teachers import TeacherSet, freeze
from kinherit.models.lm import TEACHER_TENSORS, chunk_positions, target_labels, taught_positions
from kinherit.models.loading import load_model
from kinherit.training.cache_shards import write_shard
from kinherit.training.cross_teachers import CrossTokenizerTeachers
from kinherit.training.flops import FlopModel
from kinherit.training.options import CacheArguments, InheritanceArguments
from kinherit.training.teacher_cache import (
    CACHE_FORMAT,
    TeacherCache,
    batch_top_k,
    cache_settings,
    seal_cache,
)
from kinherit.training.trainer import InheritanceTrainer


@dataclass(frozen=True)
class Pair:
    """A student/teacher pair and the batch it is timed on."""

    student: str
    teacher: str
    vocab: int
    batch: int
    block: int

    @property
    def masked(self) -> bool:
        return not self.student.startswith(("llama", "gpt2"))


CONFIGS = {
    "causal-demo": Pair("llama-4x256", "llama-2x128", 8192, 16, 128),
    "masked-demo": Pair("roberta-4x256", "roberta-2x128", 8192, 16, 128),
    "causal-32k": Pair("llama-4x256", "llama-2x128", 32768, 16, 512),
    "masked-32k": Pair("roberta-4x256", "roberta-2x128", 32768, 16, 512),
    "causal-128k": Pair("llama-4x256", "llama-2x128", 131072, 8, 512),
}
VARIANTS = ("self", "ki", "ki_eager", "ki_cache", "naive")
CROSS_VARIANTS = ("self", "ki", "ki_cross_map", "ki_cross_uld", "ki_cross_cache")
CACHE_K = 32  # top-K of the `ki_cache` variant


def stand_in_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `size` ids: building a model reads only its size and special ids."""
    vocab = {f"t{i}": i for i in range(size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                   pad_token="t1", eos_token="t2", bos_token="t3", cls_token="t3", sep_token="t2",
                                   mask_token="t4")


class Bench:
    """The models, one batch, and a step function per variant for one configuration."""

    def __init__(self, pair: Pair, device: torch.device, temperature: float, cache_root: str | None = None,
                 chunk_size: int | None = None) -> None:
        torch.manual_seed(0)
        tokenizer = stand_in_tokenizer(pair.vocab)
        self.pair, self.device = pair, device
        self.tokenizer = tokenizer
        self.student = load_model(pair.student, tokenizer, pair.block).to(device)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, pair.vocab, (pair.batch, pair.block), generator=generator)
        labels = ids.clone()
        if pair.masked:
            masked = torch.rand(ids.shape, generator=generator) < 0.15
            labels[~masked] = -100
            ids = torch.where(masked, torch.full_like(ids, 4), ids)
        self.batch = {"input_ids": ids.to(device), "labels": labels.to(device),
                      "attention_mask": torch.ones_like(ids).to(device)}
        self.positions = int((labels != -100).sum()) if pair.masked else pair.batch * (pair.block - 1)
        self.temperature = temperature
        self.output_dir = tempfile.mkdtemp(prefix="kinherit-bench-")
        self.cache_root = cache_root  # where the `ki_cache` variant's cache is (built there when missing)
        self.chunk_size = chunk_size  # None: each step takes kinherit's default for what its chunks hold

    @cached_property
    def teacher(self) -> torch.nn.Module:
        """The frozen teacher, loaded on first use: a process that only steps on the cache never holds it."""
        torch.manual_seed(1)
        return freeze(load_model(self.pair.teacher, self.tokenizer, self.pair.block)).to(self.device)

    def trainer(self, teacher: str | None, kernels: str = "auto") -> InheritanceTrainer:
        """The trainer with the live teacher (`teacher="live"`), a teacher cache (`"cache"`), or none."""
        inherit = InheritanceArguments(inherit_schedule="constant", inherit_value=0.5, temperature=self.temperature,
                                       loss_kernels=kernels, chunk_size=self.chunk_size)
        args = TrainingArguments(self.output_dir, report_to="none", use_cpu=self.device.type == "cpu")
        return InheritanceTrainer(model=self.student, args=args, inherit_args=inherit, vocab_size=self.pair.vocab,
                                  teachers=self.live_teachers(teacher) if teacher not in (None, "cache") else None,
                                  teacher_cache=self.cache(CACHE_K) if teacher == "cache" else None)

    def live_teachers(self, teacher: str) -> TeacherSet:
        """The live teacher source a step runs (`teacher` names it; here there is one)."""
        return TeacherSet([self.teacher])

    cache_method: str | None = None  # the `--cross_tokenizer` method of the cache's source (None: same tokenizer)

    def cache(self, k: int) -> TeacherCache:
        """A one-shard teacher cache on disk holding the teacher's top-K targets for this batch's positions.

        Built as `kinherit cache-teacher` builds one: the teacher's head and softmax run one chunk of
        positions at a time, so no [positions, V] tensor exists for all positions at once.
        """
        folder = Path(self.cache_root or self.output_dir) / f"{'cross-' if self.cache_method else ''}cache-{k}"
        if not folder.exists():
            staging = folder.with_name(folder.name + ".partial")
            staging.mkdir(parents=True)
            kind = "masked" if self.pair.masked else "causal"
            labels = target_labels(self.batch["labels"], kind)
            source = self.live_teachers(self.cache_method or "live")
            with source.targets(self.batch, labels, self.temperature, self.pair.vocab) as target_of:
                target, counts = batch_top_k(target_of, labels, self.pair.batch, k, self.pair.vocab, self.chunk_size)
            compression = CacheArguments().compression  # what `kinherit cache-teacher` writes by default
            write_shard(staging / "epoch0-shard00000.safetensors", target, counts, self.pair.vocab, "float16",
                        compression)
            settings = cache_settings(tokenizer="benchmark", corpus="benchmark", block_size=self.pair.block,
                                      blocks=self.pair.batch, kind=kind, temperature=self.temperature, top_k=k,
                                      epochs=1, blocks_per_shard=self.pair.batch, log_prob_dtype="float16",
                                      compression=compression,
                                      seed=None, mlm_probability=None, teachers=[], teacher_weights=[],
                                      vocab_size=self.pair.vocab, cross_tokenizer=self.cache_method)
            seal_cache(staging, folder, {"format": CACHE_FORMAT, "settings": settings,
                                         "cross_tokenizer": source.report()})
        return TeacherCache(folder)

    def step(self, variant: str):
        """A function that runs one forward and backward of `variant` (gradients zeroed first); the cached variants
        read a cache of the source `cache_method` names."""
        if variant == "naive":
            return self.naive_step
        teacher = {"self": None, "ki_cache": "cache", "ki_cross_cache": "cache"}.get(variant, variant)
        trainer = self.trainer(teacher, "eager" if variant == "ki_eager" else "auto")
        batch = {**self.batch, "block_index": torch.arange(self.pair.batch), "mask_epoch": torch.tensor(0)}

        def ours() -> None:
            self.student.zero_grad(set_to_none=True)
            trainer.compute_loss(self.student, batch).backward()
        return ours

    def naive_step(self) -> None:
        """Full logits at every position from both models' standard forward, then F.kl_div over all of them."""
        self.student.zero_grad(set_to_none=True)
        out = self.student(**self.batch)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=self.batch["input_ids"]).logits
        tau = self.temperature
        kl = F.kl_div(F.log_softmax(out.logits / tau, -1), F.log_softmax(teacher_logits / tau, -1),
                      log_target=True, reduction="batchmean")
        (0.5 * out.loss + 0.5 * tau**2 * kl).backward()

    def bound(self) -> tuple[float, float, float]:
        """(bound, student step FLOPs, teacher forward FLOPs) counted for the actual models and batch."""
        tokens = self.pair.batch * self.pair.block
        student = FlopModel.of(self.student).train_step(tokens, self.pair.block, self.positions)
        teacher = FlopModel.of(self.teacher).forward(tokens, self.pair.block, self.positions)
        return 1.0 + teacher / student, float(student), float(teacher)


class CrossBench(Bench):
    """The causal pair on real text: the student's batch is Wikipedia blocks of a byte-level BPE of the pair's
    vocabulary, and a second teacher of the same shape reads them with a BPE of twice that vocabulary."""

    def __init__(self, pair: Pair, device: torch.device, temperature: float, cache_root: str | None = None,
                 chunk_size: int | None = None, documents: int | None = 60) -> None:
        from kinherit.data import CorpusSpec, corpus_blocks, load_corpus, train_tokenizer

        super().__init__(pair, device, temperature, cache_root, chunk_size)
        root = Path(self.cache_root or self.output_dir)
        corpus = load_corpus([CorpusSpec("wikipedia", validation_fraction=0.075, max_documents=documents)],
                             str(root / "blocks"))
        for name, size in (("student-tokenizer", pair.vocab), ("teacher-tokenizer", 2 * pair.vocab)):
            if not (root / name / "tokenizer.json").exists():
                train_tokenizer(corpus.train, size, root / name)
        self.student_tokenizer = load_tokenizer(root / "student-tokenizer")
        self.teacher_tokenizer = load_tokenizer(root / "teacher-tokenizer")
        blocks = corpus_blocks(corpus, "train", self.student_tokenizer, pair.block, str(root / "blocks"))
        ids = torch.tensor([blocks[i]["input_ids"] for i in range(pair.batch)])
        self.batch = {"input_ids": ids.to(device), "labels": ids.clone().to(device),
                      "attention_mask": torch.ones_like(ids).to(device)}

    @cached_property
    def cross_teacher(self) -> torch.nn.Module:
        torch.manual_seed(1)
        return freeze(load_model(self.pair.teacher, self.teacher_tokenizer, 4 * self.pair.block)).to(self.device)

    cache_method = "map"  # the cached variant reads the cross teacher's mapped targets

    def live_teachers(self, teacher: str) -> TeacherSet:
        """The same-tokenizer teacher (`ki`), or the cross teacher by a method (`ki_cross_map`, `map`, ...)."""
        if teacher in ("live", "ki", "ki_eager"):
            return super().live_teachers(teacher)
        return self.cross_teachers(teacher.removeprefix("ki_cross_"))

    def cross_teachers(self, method: str) -> CrossTokenizerTeachers:
        bridge = Bridge.build(self.student_tokenizer, self.teacher_tokenizer, self.cross_teacher.config.vocab_size)
        return CrossTokenizerTeachers([self.cross_teacher], [bridge], method)


def cross_entry(bench: CrossBench, warmup: int, repeats: int) -> dict:
    """Seconds per step of the cross-tokenizer variants and their in-round ratios to the same-tokenizer KI step."""
    times = time_rounds(bench, CROSS_VARIANTS, warmup, repeats)
    return {"pair": bench.pair.__dict__, "teacher_vocab": len(bench.teacher_tokenizer),
            "seconds": {v: {"median": statistics.median(t), "min": min(t), "max": max(t), "rounds": t}
                        for v, t in times.items()},
            "over_ki": {v: ratio(times, v, "ki") for v in CROSS_VARIANTS if v.startswith("ki_cross")},
            "aligned_share": _aligned_share(bench)}


def _aligned_share(bench: CrossBench) -> float:
    """The share of the batch's taught positions that have an aligned teacher position."""
    teachers = bench.cross_teachers("map")
    labels = target_labels(bench.batch["labels"], "causal")
    with teachers.targets(bench.batch, labels, bench.temperature, bench.pair.vocab) as target_of:
        target_of(taught_positions(labels))
    return teachers.report()["aligned_share"]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_rounds(bench: Bench, variants: Sequence[str], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, timed in turns: each of `repeats` rounds runs one step of every
    variant, after `warmup` untimed rounds (compilation included). A machine whose speed drifts during the
    run (this kind moved by 20% within minutes) then slows every variant alike, and the ratios are taken
    within rounds."""
    steps = {variant: bench.step(variant) for variant in variants}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant, step in steps.items():
            synchronise(bench.device)
            started = time.perf_counter()
            step()
            synchronise(bench.device)
            times[variant].append(time.perf_counter() - started)
    return times


def ratio(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over rounds of `top`'s step time over `bottom`'s in the same round."""
    return statistics.median(a / b for a, b in zip(times[top], times[bottom], strict=True))


def median_seconds(function: Callable[[], object], repeats: int, device: torch.device | None = None) -> float:
    """Median wall-clock seconds of `repeats` calls of `function` after one untimed call (synchronised on `device`,
    CPU when None); also the timer of the hand-run scripts under docs/results/performance."""
    device = device or torch.device("cpu")
    function()
    synchronise(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_flops_per_second(device: torch.device, size: int, repeats: int = 5) -> float:
    """Throughput of a large float32 matrix product: the machine's practical peak for our models."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats, device)


def measured_work(bench: Bench, variant: str, reset_peak: Callable[[], None]) -> None:
    """What a peak-memory measurement runs: building the cache (`cache_build`), or one warm-up step of
    `variant` (compiling its kernel) and, after `reset_peak`, the steady step whose peak is reported."""
    if variant == "cache_build":
        bench.cache(CACHE_K)
        return
    step = bench.step(variant)
    step()
    reset_peak()
    step()


LIVE_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # glibc: every block above 128 KiB mapped, returned when freed
LIVE_VARIANTS = ("self", "ki", "ki_cache")  # the steps the memory targets compare


def peak_memory_mb(config: str, variant: str, device: torch.device, options: argparse.Namespace,
                   cache_root: str, environment: dict[str, str] | None = None) -> float:
    """Peak memory of a steady step of `variant` (or of building the cache, `cache_build`): CUDA allocator peak in
    process, else a child's peak RSS (with `environment` added to the child's). The `ki_cache` step reads a cache
    a `cache_build` child wrote before."""
    if device.type == "cuda":
        bench = Bench(CONFIGS[config], device, options.temperature, cache_root, options.chunk_size)
        torch.cuda.reset_peak_memory_stats(device)
        measured_work(bench, variant, lambda: torch.cuda.reset_peak_memory_stats(device))
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        del bench
        torch.cuda.empty_cache()
        return peak
    command = [sys.executable, __file__, "--child", config, variant, "--temperature", str(options.temperature),
               "--cache-root", cache_root]
    if options.chunk_size:
        command += ["--chunk-size", str(options.chunk_size)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ | (environment or {}))
    if result.returncode != 0:
        raise RuntimeError(f"memory child for {config}/{variant} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def peak_rss_mb() -> float:
    """This process's peak resident set size. Linux's VmHWM starts afresh at exec; ru_maxrss is kept
    across exec (it would report the parent's peak), so it is only the fallback elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start this process's peak resident set size afresh from its current size (Linux's clear_refs "5"),
    so that a step's peak excludes the warm-up step's one-time compilation. Elsewhere the peak is kept."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        print("warning: cannot reset the peak RSS here; the peak includes the warm-up step", file=sys.stderr)


def child(config: str, variant: str, options: argparse.Namespace) -> None:
    """Run a warm-up and a steady step of one variant (or build the cache) and print the peak resident set size."""
    bench = Bench(CONFIGS[config], torch.device("cpu"), options.temperature, options.cache_root, options.chunk_size)
    measured_work(bench, variant, reset_peak_rss)
    print(json.dumps({"peak_mb": peak_rss_mb()}))


def main() -> None:
    """Parse options, measure every configuration, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed rounds, one step of each variant per round (medians and in-round ratios reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (compilation included)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--chunk-size", type=int, help="positions per chunk of the fused head and loss "
                        "(default: kinherit's for the vocabulary, as --chunk_size of kinherit pretrain)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--quick", action="store_true",
                        help="day-to-day check in a few minutes: the demo configurations, 3 timed steps, no memory")
    parser.add_argument("--cross", action="store_true",
                        help="time teachers with another tokenizer (live by each method, and cached) on real text")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-root", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(*options.child, options)
        return
    if options.quick:
        options.configs = [name for name in options.configs if name.endswith("-demo")]
        options.repeats, options.warmup, options.no_memory = min(options.repeats, 3), min(options.warmup, 2), True
    device = torch.device(options.device)
    peak = matmul_flops_per_second(device, options.matmul_size)
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "temperature": options.temperature, "matmul_flops_per_second": peak, "configs": {}}
    print(f"device {device}, {torch.get_num_threads()} threads; {options.matmul_size}^3 float32 matmul: "
          f"{peak / 1e9:.1f} GFLOP/s")
    for config in options.configs if options.cross else ():
        if CONFIGS[config].masked:
            continue  # teachers with another tokenizer teach causal students
        entry = cross_entry(CrossBench(CONFIGS[config], device, options.temperature, options.cache_root,
                                       options.chunk_size), options.warmup, options.repeats)
        results["configs"][config] = entry
        print(f"\n{config} (teacher vocabulary {entry['teacher_vocab']}, {entry['aligned_share']:.1%} of positions "
              f"aligned): " + ", ".join(f"{v} {s['median']:.3f} s" for v, s in entry["seconds"].items()) + "; over KI: "
              + ", ".join(f"{v} {r:.2f}" for v, r in entry["over_ki"].items()))
    for config in options.configs if not options.cross else ():
        pair = CONFIGS[config]
        bench = Bench(pair, device, options.temperature, chunk_size=options.chunk_size)
        bound, student_flops, teacher_flops = bench.bound()
        # the naive step churns through many GB: whichever step came after it in a round would pay for that,
        # so it runs in rounds of its own after the others (its ratio is then one of medians)
        times = time_rounds(bench, [v for v in VARIANTS if v != "naive"], options.warmup, options.repeats)
        times |= time_rounds(bench, ["naive"], 1, options.repeats)
        chunk = {"self": chunk_positions(bench.chunk_size, pair.vocab),
                 "ki": chunk_positions(bench.chunk_size, pair.vocab, TEACHER_TENSORS)}
        teacher_mb = sum(p.numel() * p.element_size() for p in bench.teacher.parameters()) / 2**20
        del bench
        median = {variant: statistics.median(t) for variant, t in times.items()}
        ki_over_self = ratio(times, "ki", "self")
        entry = {
            "pair": pair.__dict__, "chunk_size": chunk, "teacher_mb": teacher_mb, "bound": bound,
            "student_step_flops": student_flops,
            "teacher_forward_flops": teacher_flops,
            "seconds": {v: {"median": median[v], "min": min(t), "max": max(t), "rounds": t} for v, t in times.items()},
            "ki_over_self": ki_over_self,
            "ki_over_bound": ki_over_self / bound,
            "naive_over_ki": median["naive"] / median["ki"],
            "eager_over_compiled": ratio(times, "ki_eager", "ki"),
            "cache_over_ki": ratio(times, "ki_cache", "ki"),
            "cache_k": CACHE_K,
            "self_flops_per_second": student_flops / median["self"],
            "self_fraction_of_matmul": student_flops / median["self"] / peak,
        }
        if not options.no_memory:
            with tempfile.TemporaryDirectory(prefix="kinherit-bench-cache-") as cache_root:
                # the cache is built first, in its own child, so that the `ki_cache` step's peak is the step's
                entry["peak_mb"] = {v: peak_memory_mb(config, v, device, options, cache_root)
                                    for v in ("cache_build", *VARIANTS)}
                if device.type == "cpu":  # the heap's variance taken out: what the step's live tensors need
                    entry["live_peak_mb"] = {v: peak_memory_mb(config, v, device, options, cache_root, LIVE_THRESHOLD)
                                             for v in LIVE_VARIANTS}
        results["configs"][config] = entry
        report(config, entry)
    results["matmul_flops_per_second_after"] = matmul_flops_per_second(device, options.matmul_size)
    print(f"\n{options.matmul_size}^3 float32 matmul after the run: "
          f"{results['matmul_flops_per_second_after'] / 1e9:.1f} GFLOP/s")
    if options.json:
        write_json_atomic(Path(options.json), results)


def memory_targets(peaks: dict[str, float], teacher_mb: float, what: str) -> str:
    """The memory targets on one set of peaks: KI within self + teacher weights + 10% of self, and the cached step
    no heavier than the live one."""
    limit = peaks["self"] * 1.1 + teacher_mb
    within, lighter = ("met" if met else "MISSED" for met in (peaks["ki"] <= limit, peaks["ki_cache"] <= peaks["ki"]))
    return (f"{what}: self {peaks['self']:.0f}, KI {peaks['ki']:.0f} against self + teacher ({teacher_mb:.0f} MB) "
            f"+ 10% = {limit:.0f} ({within}); cached {peaks['ki_cache']:.0f} ({lighter}: at or below live KI)")


def report(config: str, entry: dict) -> None:
    """Print one configuration's table."""
    pair = entry["pair"]
    print(f"\n{config}: student {pair['student']}, teacher {pair['teacher']}, vocabulary {pair['vocab']}, "
          f"{pair['batch']}x{pair['block']} tokens")
    print(f"{'step':10s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'peak MB':>9s}")
    for variant, seconds in entry["seconds"].items():
        memory = entry.get("peak_mb", {}).get(variant)
        print(f"{variant:10s} {seconds['median']:9.3f} {seconds['min']:8.3f} {seconds['max']:8.3f} "
              f"{memory if memory is None else f'{memory:9.0f}'}")
    if "cache_build" in entry.get("peak_mb", {}):
        print(f"building the top-{entry['cache_k']} cache (its own process): "
              f"peak {entry['peak_mb']['cache_build']:.0f} MB")
    live = " ".join(f"{name}={value}" for name, value in LIVE_THRESHOLD.items())
    for key, what in (("peak_mb", "peak"), ("live_peak_mb", f"live tensors ({live})")):
        if key in entry:
            print(memory_targets(entry[key], entry["teacher_mb"], what))
    print(f"bound {entry['bound']:.3f}  ki/self {entry['ki_over_self']:.3f} ({entry['ki_over_bound']:.3f} x bound)  "
          f"naive/ki {entry['naive_over_ki']:.2f}  eager/compiled {entry['eager_over_compiled']:.2f}  "
          f"cache(top-{entry['cache_k']})/ki {entry['cache_over_ki']:.2f}  "
          f"self {entry['self_flops_per_second'] / 1e9:.1f} GFLOP/s = {entry['self_fraction_of_matmul']:.0%} of matmul")


if __name__ == "__main__":
    main()
