"""Teachers with another tokenizer, measured on the demo's student: how much of the same-tokenizer saving a teacher
keeps when its tokenizer differs, by method, and what a real open model (SmolLM2-135M) does through a cache.

Every run is a `kinherit` command (run in this process as the command line runs it), with the demo's
settings; finished runs are skipped (a run folder with run.json), so the study resumes. The same-tokenizer
teacher, scratch and KI students come from a finished demo-style experiment folder (`--same`, e.g.
runs/analyses of configs/analyses/temperature.yaml).

    python benchmarks/cross_tokenizer.py --same runs/analyses --stage vocab      # 1: a 16,384-token teacher
    python benchmarks/cross_tokenizer.py --same runs/analyses --stage code       # 2: a tokenizer of Wikipedia + code
    python benchmarks/cross_tokenizer.py --same runs/analyses --stage smollm2 --smollm2 PATH  # 3: a real model
    python benchmarks/cross_tokenizer.py --same runs/analyses --stage table --out docs/results/cross-tokenizer
    python benchmarks/cross_tokenizer.py --same runs/analyses --stage tokens --teacher_tokenizers DIR ...

`--smoke` runs everything at a tiny size (for the test suite).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kinherit.cli import main as main_command  # noqa: E402
from kinherit.core.atomic import save_figure_atomic, write_json_atomic  # noqa: E402
from kinherit.experiment.compute_saved import compute_saved  # noqa: E402
from kinherit.experiment.report import read_curve  # noqa: E402

DEMO = {"block_size": 128, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 0.05,
        "weight_decay": 0.01, "max_grad_norm": 1.0, "eval_steps": 50, "logging_steps": 25, "save_steps": 200,
        "seed": 0, "data_seed": 0, "eval_on_start": "true"}
SMOKE = {**DEMO, "block_size": 32, "eval_steps": 4, "logging_steps": 4, "save_steps": 1000}


def kinherit(*args: str) -> None:
    """One `kinherit` command, run as the command line runs it; a failure stops the study."""
    print("$ kinherit", " ".join(args), flush=True)
    if main_command(list(args)) != 0:
        raise SystemExit(f"kinherit {args[0]} failed")


def options(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


class Study:
    """The study's folders and commands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.work = Path(args.workdir)
        self.same = Path(args.same)
        self.smoke = args.smoke
        self.settings = SMOKE if args.smoke else DEMO
        self.corpus = ["--corpus", "wiki=wikipedia", "--validation_fraction", "0.075",
                       "--cache_dir", str(self.same / "cache")]
        if args.smoke:
            self.corpus += ["--max_documents", "20"]
        self.student_steps = 8 if args.smoke else 800
        self.teacher_steps = 8 if args.smoke else 1500
        self.student_model = "llama-1x64" if args.smoke else "llama-4x256"
        self.teacher_model = "llama-1x64" if args.smoke else "llama-2x128"
        self.vocab = 400 if args.smoke else 16384  # the smoke same-tokenizer side has 300 tokens

    def tokenizer(self, name: str, corpus: list[str]) -> Path:
        folder = self.work / name
        if not (folder / "tokenizer.json").exists():
            kinherit("tokenizer", str(folder), *corpus, "--vocab_size", str(self.vocab))
        return folder

    def pretrain(self, name: str, *args: str, tokenizer: Path, model: str, steps: int) -> Path:
        folder = self.work / "runs" / name
        if not (folder / "run.json").exists():
            kinherit("pretrain", "--model", model, "--tokenizer", str(tokenizer), *self.corpus,
                     *options(self.settings), "--max_steps", str(steps), "--output_dir", str(folder),
                     "--report_to", "none", *args)
        return folder

    def student(self, name: str, *args: str) -> Path:
        return self.pretrain(name, "--temperature", "0.5", "--inherit_schedule", "linear", "--inherit_steps",
                             str(self.student_steps), *args, tokenizer=self.same / "tokenizer",
                             model=self.student_model, steps=self.student_steps)

    def vocab_size_stage(self) -> None:
        """1: the demo's teacher trained with a 16,384-token BPE of the same text, teaching by each method."""
        tokenizer = self.tokenizer("tokenizer-16k", ["--corpus", "wikipedia", "--validation_fraction", "0.075"]
                                   + (["--max_documents", "20"] if self.smoke else []))
        teacher = self.pretrain("teacher-16k", tokenizer=tokenizer, model=self.teacher_model,
                                steps=self.teacher_steps)
        for method in ("map", "uld"):
            self.student(f"ki-16k-{method}", "--teacher", str(teacher), "--cross_tokenizer", method)

    def code_stage(self) -> None:
        """2: a teacher whose tokenizer was trained on Wikipedia and Python code, teaching the Wikipedia student."""
        tokenizer = self.tokenizer("tokenizer-code", ["--corpus", "wikipedia", "python-code",
                                                      "--validation_fraction", "0.075"]
                                   + (["--max_documents", "20"] if self.smoke else []))
        teacher = self.pretrain("teacher-code", tokenizer=tokenizer, model=self.teacher_model,
                                steps=self.teacher_steps)
        self.student("ki-code-map", "--teacher", str(teacher), "--cross_tokenizer", "map")

    def smollm2_stage(self, checkpoint: str) -> None:
        """3: SmolLM2-135M-Instruct (a plain checkpoint) cached once over the student's data, then one student."""
        cache = self.work / "smollm2-cache"
        if not (cache / "cache.json").exists():
            kinherit("cache-teacher", "--teacher", checkpoint, "--tokenizer", str(self.same / "tokenizer"),
                     *self.corpus, "--block_size", str(self.settings["block_size"]), "--temperature", "0.5",
                     "--top_k", "32", "--batch_size", "8", "--output", str(cache))
        self.student("ki-smollm2", "--teacher_cache", str(cache))

    def plot(self, path: Path) -> None:
        """Validation loss against steps of scratch and every KI student."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 4.5))
        curves = {"scratch": self.same / "runs" / "scratch", "ki (same tokenizer)": self.same / "runs" / "ki"}
        curves |= {f.name: f for f in sorted((self.work / "runs").glob("ki-*")) if (f / "run.json").exists()}
        for name, folder in curves.items():
            curve = [p for p in read_curve(folder) if p.step > 0]
            axis.plot([p.step for p in curve], [p.loss for p in curve], label=name,
                      linestyle="--" if name == "scratch" else "-")
        axis.axhline(read_curve(self.same / "runs" / "scratch")[-1].loss, color="grey", linewidth=0.6)
        axis.set_xlabel("step")
        axis.set_ylabel("validation loss (student tokens)")
        axis.set_title("Students of teachers with another tokenizer")
        axis.legend()
        figure.tight_layout()
        save_figure_atomic(figure, path, dpi=120)
        plt.close(figure)

    def tokens(self, teacher_tokenizers: list[str], every: int = 20) -> dict:
        """Teacher tokens and aligned positions per student token, over every `every`-th training block."""
        from kinherit.data import CorpusSpec, corpus_blocks, load_corpus, load_tokenizer
        from kinherit.data.token_text import Bridge

        student = load_tokenizer(self.same / "tokenizer")
        spec = CorpusSpec("wikipedia", validation_fraction=0.075, max_documents=20 if self.smoke else None)
        corpus = load_corpus([spec], str(self.same / "cache"))
        blocks = corpus_blocks(corpus, "train", student, self.settings["block_size"], str(self.same / "cache"))
        counts = {}
        for path in teacher_tokenizers:
            bridge = Bridge.build(student, load_tokenizer(path))
            seen = teacher = aligned = 0
            for index in range(0, len(blocks), every):
                ids = blocks[index]["input_ids"]
                teacher_ids, pairs = bridge.align(ids)
                seen, teacher, aligned = seen + len(ids), teacher + len(teacher_ids), aligned + len(pairs)
            counts[path] = {"teacher_tokens_per_student_token": teacher / seen, "aligned_share": aligned / seen}
        return counts

    def table(self) -> dict:
        """Steps to scratch's final loss for every student, and the share of the same-tokenizer saving kept."""
        scratch = read_curve(self.same / "runs" / "scratch")
        rows = {}
        same = compute_saved(read_curve(self.same / "runs" / "ki"), scratch, None)
        rows["ki (same tokenizer)"] = same
        for folder in sorted((self.work / "runs").glob("ki-*")):
            if (folder / "run.json").exists():
                row = compute_saved(read_curve(folder), scratch, None)
                row["cross_tokenizer"] = json.loads((folder / "run.json").read_text())["cross_tokenizer"]
                rows[folder.name] = row
        for row in rows.values():
            row.pop("ki_val_loss_at_equal_steps")
            saved = 1 - row["steps_fraction"] if row["steps_fraction"] is not None else 0.0
            row["saving_kept"] = saved / (1 - same["steps_fraction"]) if same["steps_fraction"] else None
        return {"scratch_final_val_loss": scratch[-1].loss, "rows": rows}


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--same", required=True, help="a finished experiment folder with teacher, scratch and ki")
    parser.add_argument("--workdir", default="runs/cross-tokenizer")
    parser.add_argument("--stage", choices=["vocab", "code", "smollm2", "table", "tokens"], required=True)
    parser.add_argument("--teacher_tokenizers", nargs="+", default=[], help="stage tokens: teacher tokenizer folders")
    parser.add_argument("--smollm2", help="SmolLM2-135M as a plain checkpoint folder (stage smollm2)")
    parser.add_argument("--smoke", action="store_true", help="everything at a tiny size")
    parser.add_argument("--out", help="stage table: write table.json and validation_loss.png to this folder")
    args = parser.parse_args(argv)
    study = Study(args)
    if args.stage == "vocab":
        study.vocab_size_stage()
    elif args.stage == "code":
        study.code_stage()
    elif args.stage == "smollm2":
        study.smollm2_stage(args.smollm2)
    elif args.stage == "tokens":
        counts = study.tokens(args.teacher_tokenizers)
        print(json.dumps(counts, indent=2))
        return counts
    else:
        table = study.table()
        print(json.dumps(table, indent=2))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_json_atomic(Path(args.out) / "table.json", table)
            study.plot(Path(args.out) / "validation_loss.png")
        return table
    return None


if __name__ == "__main__":
    main()
