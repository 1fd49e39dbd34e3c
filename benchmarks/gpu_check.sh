#!/usr/bin/env bash
# The GPU half of issue 6, prepared for one short device session (~10 minutes of a 15-minute budget).
# Run from the repository root on the GPU machine:  bash benchmarks/gpu_check.sh
# It runs the tests marked `gpu`, then our NB throughput on the GPU at 100k cells (device-resident CSR,
# batch 1024 and 4096 with a sqrt-scaled learning rate), printing markdown tables. (Simulating 1M cells takes
# ~5 minutes of single-threaded numpy, too long for the budget: cells/s per epoch at 100k is the figure to read.)
# scvi-tools is compared only when it is importable there (the device machines have no internet).
set -euo pipefail
python -m pip install -q --no-deps --no-build-isolation -e . || echo "could not install the package; running from the checkout"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -m gpu -p no:cacheprovider
methods=("sciencevae (NB, linear)")
python -c "import scvi" 2>/dev/null && methods+=(LinearSCVI SCVI)
for batch in 1024 4096; do
  python benchmarks/throughput.py --device cuda --cells 100000 --epochs 3 --batch-size "$batch" \
      --lr "$(python -c "print(1e-3 * ($batch / 256) ** 0.5)")" --threads 8 --methods "${methods[@]}"
done
# our NB kernel eager instead of compiled (Triton), ours only: what the compile buys on the GPU
python benchmarks/throughput.py --device cuda --cells 100000 --epochs 3 --batch-size 4096 --lr 4e-3 --threads 8 \
    --compile off --methods "sciencevae (NB, linear)"
