"""Back-test of `kinherit plan`'s forecast on finished KI / self-learning pairs.

Every pair in the committed analysis reports (docs/results/analyses/*/report.json, `compute_saved`: both runs'
validation curves at equal steps, the baseline's final loss, the KI run's steps fraction and its teacher's loss)
is cut to a pilot of the first 25%, 37.5% or 50% of its steps (fitted after the 5% warm-up); the forecast made
from the cut curves is compared with what the whole runs did: the steps fraction KI needed to reach the
baseline's final loss, and the step where KI passed its teacher. Pairs that several analyses share (the demo's
own runs) are counted once in the back-test, and in each analysis's ranking of its teachers.

    python benchmarks/plan_backtest.py [--reports 'docs/results/analyses/*/report.json'] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
from pathlib import Path

import numpy as np

from kinherit.experiment.compute_saved import EvalPoint, crossing
from kinherit.experiment.forecast import forecast

PILOTS = (0.25, 0.375, 0.5)
WARMUP = 0.05  # the analyses' learning-rate warm-up, as a fraction of the steps: the fits start after it
# analyses whose recorded teacher loss is not on the student's data, left out of the ranking (and why)
NOT_RANKED = {"teacher-domain": "its teachers' validation data mixes in code; their Wikipedia losses are in its "
                                "report's evaluation table"}


def pairs(pattern: str) -> list[dict]:
    """Every finished pair of every analysis: its name, both curves, what the full runs did, and a key that is
    the same for a pair that several analyses share."""
    found = []
    for path in sorted(glob.glob(pattern)):
        report = json.loads(Path(path).read_text())
        for run, saved in (report.get("compute_saved") or {}).items():
            points = [p for p in saved.get("ki_val_loss_at_equal_steps") or []
                      if p.get("ki") is not None and p.get("baseline") is not None]
            if len(points) < 8:
                continue
            teacher = saved.get("teacher_val_loss")
            curve = [EvalPoint(p["step"], p["ki"], 0.0, 0.0) for p in points]
            passed = crossing(curve, teacher) if teacher is not None else None
            found.append({"pair": f"{Path(path).parent.name}/{run}", "steps": [p["step"] for p in points],
                          "ki": [p["ki"] for p in points], "baseline": [p["baseline"] for p in points],
                          "steps_fraction": saved.get("steps_fraction"), "teacher_loss": teacher,
                          "passed_teacher_at": passed.step if passed else None,
                          "key": json.dumps([(p["step"], round(p["ki"], 9), round(p["baseline"], 9))
                                             for p in points])})
    return found


def distinct(found: list[dict]) -> list[dict]:
    """The pairs, each shared pair once (the first analysis that has it)."""
    seen: set[str] = set()
    return [pair for pair in found if not (pair["key"] in seen or seen.add(pair["key"]))]


def ranking(found: list[dict]) -> dict:
    """How well the teachers' validation loss alone ranks the KI runs of one analysis by the steps fraction they
    needed (Spearman's rho; a run that never reached the target ranks last), per analysis with at least three
    teachers of distinct loss, and over all such pairs pooled."""
    from scipy.stats import spearmanr

    groups: dict[str, list[dict]] = {}
    for pair in found:
        if pair["teacher_loss"] is not None and pair["pair"].split("/")[0] not in NOT_RANKED:
            groups.setdefault(pair["pair"].split("/")[0], []).append(pair)
    out, pooled = {}, []
    for analysis, members in sorted(groups.items()):
        if len({round(m["teacher_loss"], 6) for m in members}) < 3:
            continue
        pooled += members
        out[analysis] = _rho(spearmanr, members)
    pooled = distinct(pooled)
    out["all teacher-varying analyses"] = _rho(spearmanr, pooled) if pooled else None
    return out


def _rho(spearmanr, members: list[dict]) -> dict:
    fractions = [m["steps_fraction"] if m["steps_fraction"] is not None else math.inf for m in members]
    rho = spearmanr([m["teacher_loss"] for m in members], fractions).statistic
    return {"rho": float(rho), "runs": len(members)}


def backtest(found: list[dict], pilots: tuple[float, ...] = PILOTS) -> dict:
    """Per pilot length: each pair's forecast beside the truth, and the errors over all pairs."""
    results = {}
    for pilot in pilots:
        rows = []
        for pair in found:
            budget = pair["steps"][-1]
            keep = [i for i, step in enumerate(pair["steps"]) if step <= pilot * budget]
            cut = lambda name, keep=keep, pair=pair: ([pair["steps"][i] for i in keep],  # noqa: E731
                                                      [pair[name][i] for i in keep])
            try:
                made = forecast(cut("baseline"), cut("ki"), budget, pair["teacher_loss"], fit_from=WARMUP * budget)
            except Exception as error:  # noqa: BLE001 - a pilot too short to fit is a result, reported as such
                rows.append({"pair": pair["pair"], "error": str(error)})
                continue
            rows.append({"pair": pair["pair"], "actual": pair["steps_fraction"], "predicted": made["steps_fraction"],
                         "interval": made["steps_fraction_interval"], "verdict": made["verdict"],
                         "passed_teacher_at": pair["passed_teacher_at"],
                         "predicted_passes_teacher": made["passes_teacher_at_step"], "budget": budget})
        results[pilot] = {"rows": rows, **summary(rows)}
    return results


def summary(rows: list[dict]) -> dict:
    """The errors of the steps fraction (where both are finite) and of the step KI passes its teacher (as a
    fraction of the budget), the share of true values inside the 10-90% interval, and verdicts that were right."""
    fitted = [r for r in rows if "actual" in r]
    both = [r for r in fitted if r["actual"] is not None and r["predicted"] is not None]
    errors = np.array([r["predicted"] - r["actual"] for r in both])
    covered = [r for r in both if None not in r["interval"] and r["interval"][0] <= r["actual"] <= r["interval"][1]]
    passes = [(r["predicted_passes_teacher"] - r["passed_teacher_at"]) / r["budget"] for r in fitted
              if r["passed_teacher_at"] is not None and r["predicted_passes_teacher"] is not None]
    right = [r for r in fitted if (r["verdict"] == "pays") == (r["actual"] is not None and r["actual"] < 1)
             and r["verdict"] != "uncertain"]
    return {"pairs": len(rows), "fitted": len(fitted), "compared": len(both),
            "mean_abs_error": float(np.mean(np.abs(errors))) if len(errors) else None,
            "median_error": float(np.median(errors)) if len(errors) else None,
            "within_0.05": float(np.mean(np.abs(errors) <= 0.05)) if len(errors) else None,
            "within_0.10": float(np.mean(np.abs(errors) <= 0.10)) if len(errors) else None,
            "interval_coverage": len(covered) / len(both) if both else None,
            "passes_teacher_mean_abs_error": float(np.mean(np.abs(passes))) if passes else None,
            "passes_teacher_compared": len(passes),
            "verdicts_right": len(right), "verdicts_uncertain": sum(r["verdict"] == "uncertain" for r in fitted)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default="docs/results/analyses/*/report.json")
    parser.add_argument("--pilots", type=float, nargs="+", default=list(PILOTS),
                        help="pilot lengths, as fractions of each pair's steps")
    parser.add_argument("--json", help="write every pair's forecast and the summaries here")
    args = parser.parse_args(argv)
    every = pairs(args.reports)
    found = distinct(every)
    results = backtest(found, tuple(args.pilots))
    ranks = ranking(every)
    print(f"{len(found)} distinct KI / self-learning pairs")
    print("| pilot | pairs compared | mean abs. error of steps fraction | median error | within 0.05 | within 0.10 "
          "| 10-90% interval holds the truth | step passing the teacher: mean abs. error (of budget) "
          "| verdicts right / uncertain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pilot, result in results.items():
        def show(value, digits=3):
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
        print(f"| {pilot:.1%} | {result['compared']} of {result['pairs']} | {show(result['mean_abs_error'])} | "
              f"{show(result['median_error'])} | {show(result['within_0.05'], 2)} | {show(result['within_0.10'], 2)} | "
              f"{show(result['interval_coverage'], 2)} | {show(result['passes_teacher_mean_abs_error'])} "
              f"({result['passes_teacher_compared']}) | {result['verdicts_right']} / {result['verdicts_uncertain']} |")
    first = args.pilots[0]
    worst = sorted((r for r in results[first]["rows"] if r.get("actual") is not None
                    and r.get("predicted") is not None), key=lambda r: -abs(r["predicted"] - r["actual"]))[:5]
    print(f"largest errors at a {first:.1%} pilot: " + "; ".join(
        f"{r['pair']} {r['actual']:.3f} -> {r['predicted']:.3f}" for r in worst))
    print("teachers' validation loss as a ranking of their KI runs' steps fractions (Spearman's rho; "
          f"not ranked: {', '.join(NOT_RANKED)}): " + "; ".join(
        f"{name} {value['rho']:.2f} ({value['runs']} runs)" for name, value in ranks.items() if value))
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs": found, "results": results, "ranking": ranks}, indent=1),
                                   encoding="utf-8")
    return {"results": results, "ranking": ranks}


if __name__ == "__main__":
    main()
