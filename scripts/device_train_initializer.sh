#!/usr/bin/env bash
# A prepared run of train_initializer.py for mini on a lent GPU machine (README, "Fitting: the
# reference's procedure against ours"). It has never run: the one machine lent was refused at the
# first call. Run from the repository root on a machine with CUDA torch, where .whl/ holds
# the wheels it lacks (diffusers, construct, importlib_metadata) and .train-data/ holds copies of
# the training sources as PACKAGE/RELATIVE (scripts/DATA.md; their SHA-256s are checked).
#
#   BUDGET_S=360 OUT=out bash scripts/device_train_initializer.sh
#
# It times 30 steps, then trains for as many steps (rounded down to 100) as fit in BUDGET_S.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PROMPTUS_TRAINING_DATA=.train-data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-out}
BUDGET_S=${BUDGET_S:-360}
BATCH=${BATCH:-32}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
train() { python3 scripts/train_initializer.py --model mini --device cuda --batch "$BATCH" --threads "$(nproc)" "$@"; }
train --steps 30 -o /tmp/probe.safetensors
steps=$(python3 -c "import json; s = json.load(open('/tmp/probe.safetensors.json'))['wall_s'] / 30; print(max(100, int($BUDGET_S / s) // 100 * 100))")
echo "probe: $(python3 -c "import json; print(json.load(open('/tmp/probe.safetensors.json'))['wall_s'])") s for 30 steps -> $steps steps"
train --steps "$steps" -o "$OUT/mini-initializer.safetensors"
