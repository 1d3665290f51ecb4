#!/usr/bin/env bash
# Alternate umbra's and PyTorch's training-step benchmark on the same machine, in the same run.
# Needs PyTorch in your own Python (pip install torch); never used by CI.
# Usage: scripts/compare_torch.sh [rounds]   (from the repository root, with ../shared beside it)
#
# Each round runs umbra, stock PyTorch, and PyTorch with glibc malloc set the way umbra sets it
# (no mmap for big buffers, trim threshold 512 MiB). Stock PyTorch returns its activation buffers to
# the OS every step and page-faults them back (≈190k faults per step here); the third column shows
# how much of the gap that is.
set -euo pipefail
rounds=${1:-5}
cargo build --release -q
for round in $(seq 1 "$rounds"); do
  echo "=== round $round $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  ./target/release/umbra bench train-step --iters 5 --warmup 2 --threads 2 2>&1 | grep -iE "median|images/s|peak"
  python3 ../shared/bench/torch_unet_step.py model 5 2>&1 | grep -E "MODEL" | sed 's/^/stock    /'
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=536870912 \
    python3 ../shared/bench/torch_unet_step.py model 5 2>&1 | grep -E "MODEL" | sed 's/^/tuned    /'
done
