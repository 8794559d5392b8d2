#!/usr/bin/env bash
# One prepared check on a CUDA machine, writing JSON under $OUT (default runs/device_check):
#   device.json      the GPU, torch's version, fp32 and bf16 matmul throughput
#   step_cost.json   benchmarks/step_cost.py on the GPU (teachers in bf16: --teacher_dtype auto)
#   ki_bf16.json     a short teacher + KI run with --bf16 (final losses, tokens/s, training seconds)
#   fsdp2.json       a 1-GPU FSDP2 smoke run (--fsdp full_shard, fsdp_config version 2)
#
# It runs from the repository root with the machine's own python3 (which holds a CUDA torch) and this
# checkout on PYTHONPATH. Packages that machine lacks (datasets and its dill and multiprocess) are installed
# from wheels in $WHEELS when that folder exists (fill it here with
# `pip download --no-deps -d .wheels datasets==5.2.0 dill multiprocess`, and carry it). The corpus is the
# interpreter's standard library (`python-code`), which needs no extra package.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_check}
WHEELS=${WHEELS:-.wheels}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d "$WHEELS" ]; then
    $PY -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl
fi

$PY - "$OUT/device.json" <<'EOF'
import json, sys, time
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"

def tflops(dtype, n=8192, repeats=10):
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12

info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "fp32_tflops": tflops(torch.float32), "bf16_tflops": tflops(torch.bfloat16)}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
EOF

$PY benchmarks/step_cost.py --device cuda --json "$OUT/step_cost.json"

COMMON=(--corpus python-code --max_documents 400 --validation_fraction 0.05 --block_size 256 --vocab_size 8192
        --per_device_train_batch_size 32 --report_to none --disable_tqdm true --save_strategy no --eval_steps 100
        --logging_steps 50 --cache_dir "$OUT/cache")
$PY -m kinherit pretrain --model llama-2x256 --output_dir "$OUT/teacher" --max_steps 300 --bf16 true "${COMMON[@]}"
$PY -m kinherit pretrain --model llama-4x512 --output_dir "$OUT/ki" --max_steps 300 --bf16 true \
    --tokenizer "$OUT/teacher" --teacher "$OUT/teacher" --inherit_steps 200 --temperature 1 "${COMMON[@]}"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m kinherit pretrain --model llama-4x512 \
    --output_dir "$OUT/fsdp2" --max_steps 50 --bf16 true --tokenizer "$OUT/teacher" --teacher "$OUT/teacher" \
    --inherit_steps 40 --fsdp full_shard --fsdp_config '{"version": 2}' "${COMMON[@]}"

$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name, runs in (("ki_bf16.json", ["teacher", "ki"]), ("fsdp2.json", ["fsdp2"])):
    summary = {run: {key: json.loads((out / run / "run.json").read_text())[key]
                     for key in ("final_val_loss", "steps", "tokens_per_second", "train_seconds")} for run in runs}
    (out / name).write_text(json.dumps(summary, indent=2))
    print(name, summary)
EOF
