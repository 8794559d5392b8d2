"""Start one of the paper's experiments (configs/paper/*.yaml) on this machine: its data path at its own settings,
with tiny models.

The YAML is read as it is committed and changed only where this machine or the measurement needs it: the corpus
source and tokenizer point at local copies (`--corpus`, `--tokenizer`), every run's model becomes `--model`, runs
stop after `--steps` optimizer steps with no evaluation or checkpoint on the way, the launcher is dropped (one
process) and so is `bf16` (a CPU). Block length, batch size, gradient accumulation, masking, optimizer, schedule,
the KI options and the validation split stay the paper's. The experiment then runs in a child process through
`kinherit experiment`, and its peak resident memory (the largest child's) and wall-clock seconds are reported:
what a machine of this size needs to start the paper's setting on a corpus of the given size.

    python benchmarks/paper_start.py configs/paper/roberta-base-to-base-plus.yaml --corpus corpus.jsonl \
        --tokenizer runs/tokenizer --workdir /tmp/paper-start [--steps 2] [--set block_size=64 ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml


def adapted(config: dict, corpus: str, tokenizer: str, model: str, steps: int, output: Path,
            overrides: dict[str, object]) -> dict:
    """The paper's experiment, pointed at local data and tiny models, stopping after `steps` steps."""
    config = dict(config, output_dir=str(output), tokenizer={"path": tokenizer})
    config.pop("launcher", None)
    config["corpora"] = {name: dict(corpus_spec, source=corpus) for name, corpus_spec in config["corpora"].items()}
    defaults = dict(config.get("defaults", {}), max_steps=steps, eval_steps=10**9, save_steps=10**9,
                    logging_steps=1, **overrides)
    defaults["training_args"] = {k: v for k, v in defaults.get("training_args", {}).items() if k != "bf16"}
    config["defaults"] = defaults
    config["runs"] = [dict(run, model=model, max_steps=steps) for run in config["runs"]]
    return config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a paper experiment YAML (configs/paper/)")
    parser.add_argument("--corpus", required=True, help="the corpus source to train on (a file, folder or glob)")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder")
    parser.add_argument("--model", default="roberta-1x64", help="the model of every run (default: a tiny RoBERTa)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run")
    parser.add_argument("--workdir", default="/tmp/kinherit-paper-start")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a default (YAML value), e.g. block_size=64 for a quick check")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    config = adapted(yaml.safe_load(Path(args.config).read_text()), args.corpus, args.tokenizer, args.model,
                     args.steps, work / "runs", overrides)
    path = work / Path(args.config).name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kinherit", "experiment", str(path), "--finetune", "false"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the experiment failed:\n{done.stderr[-4000:]}")
    defaults = config["defaults"]
    report = {"config": args.config, "corpus": args.corpus, "model": args.model, "steps": args.steps,
              "runs": [run["name"] for run in config["runs"]], "block_size": defaults.get("block_size"),
              "blocks_per_step": defaults.get("per_device_train_batch_size", 8)
              * defaults.get("gradient_accumulation_steps", 1),
              "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "seconds": seconds}
    print(f"{Path(args.config).name}: {len(report['runs'])} runs ({', '.join(report['runs'])}) of {args.steps} "
          f"step(s), {report['blocks_per_step']} blocks of {report['block_size']} tokens per step, on {args.corpus}: "
          f"{seconds:.0f} s, peak {report['peak_mb']:,.0f} MB resident")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
