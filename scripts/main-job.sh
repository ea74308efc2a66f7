#!/usr/bin/env bash
# Set up the environment if needed, then train a small PixelCNN++ flow on real MNIST and evaluate it.
#
# Usage: bash scripts/main-job.sh [MNIST_NPZ] [RUN_DIR] [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."

data=${1:-../shared/data/mnist/mnist.npz}
run_dir=${2:-runs/mnist-pixelcnn-pp}
minutes=${3:-5}

if [ ! -f "$data" ]; then
    echo "MNIST not found at $data: pass the path of mnist.npz as the first argument" >&2
    exit 2
fi

if [ ! -x .venv/bin/arflows ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    # The pinned CPU build first: an unpinned torch requirement would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet torch==2.13.0
    .venv/bin/python -m pip install --quiet -e ".[dev]"
fi

.venv/bin/arflows train --model pixelcnn_pp --data "mnist:$data" --out "$run_dir" --force \
    --blocks 1 --filters 32 --components 5 --dropout 0.0 --batch-size 32 --lr 0.002 \
    --max-minutes "$minutes" --eval-every 5min
.venv/bin/arflows evaluate "$run_dir" --data "mnist:$data" --split test
