#!/usr/bin/env bash
# Run the paper's analyses at small scale (configs/analyses/), one after another, into runs/analyses.
# Finished runs are skipped and interrupted ones resume, so this can be stopped and started again at will.
# Every analysis is trained and scored first, then the downstream fine-tuning (the slow part) of all of them,
# so that every loss is reported early. With arguments, only those analyses run: bash scripts/analyses.sh schedules
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ORDER=(teacher-seed teacher-size schedules downstream-steps downstream-steps-128 masked switch-temperature temperature temperature-weight label-smoothing teacher-steps teacher-data-size teacher-overlap
       teacher-shape teacher-domain student-size batch-size causal-chain generations domain-adaptation
       several-teachers topk)
for finetune in false true; do
    for name in "${@:-${ORDER[@]}}"; do
        echo "=== $(date -u +%H:%M:%S) $name (fine-tuning: $finetune)"
        .venv/bin/kinherit experiment "configs/analyses/$name.yaml" --finetune "$finetune"
    done
done
