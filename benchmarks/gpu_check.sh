#!/usr/bin/env bash
# The GPU half of issue 6, for one short device session: one call of up to 600 s, of a 15-minute budget.
# Here first: bash benchmarks/gpu_wheels.sh (scvi-tools & co. as wheels; the GPU machine has no internet).
# Then on the GPU machine, from the repository root, carrying .whl:  bash benchmarks/gpu_check.sh [LOG_DIR]
#
# In order of importance, each step with its own time limit (a step cut short leaves the numbers of the ones
# before it; the last steps may not fit one call's 600 s):
# 1. the tests marked `gpu` (CUDA kernels against the CPU, CSR counts and streamed groups on the GPU, bf16,
#    training steps replayed from a CUDA graph);
# 2. throughput at 100k cells (held on the GPU), batch 4096, ours (fit's defaults: eager NB kernel, steps
#    replayed from a CUDA graph) against scvi-tools' LinearSCVI and SCVI in the same run, same data, epochs
#    and batch size; 3. ours step by step (--cuda-graph off), the A/B of the graph;
# 4. a profile of our epoch: device busy time against wall time, kernel launches per step, where the host
#    waits for the device (sync debug mode), the operators with the most host time;
# 5. ours at batch 1024 (fit's default on CUDA) and 8192; 6. ours on 10 copies of the 90k training cells
#    (900k cells an epoch, held on the GPU as CSR); 7. the compiled (Triton) kernel with the graph;
# 8. streamed training from a backed .h5ad (out_of_core.py, 200k cells; a code path not yet run on a GPU);
# 9. batch 1024 against the peers.
# Logs go to LOG_DIR (default $OUT). scvi-tools and anndata are used where importable.
# 2026-11-27 on an H200 (sixth session): 580 s in all, of which tests 30 s, each 100k run with the peers
# ~100 s, ours alone ~15-20 s (with the compile ~35 s), 900k cells ~60 s, the streamed 200k ~90 s.
set -uo pipefail
log_dir=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$log_dir"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  wheels=(.whl/*.whl)
  # anndata 0.12 needs pandas < 3: bring pandas 2 only where the machine's own pandas is newer
  python3 -c "import pandas, sys; sys.exit(int(pandas.__version__.split('.')[0]) >= 3)" || wheels+=(.whl/pandas2/*.whl)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "${wheels[@]}" && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, numpy, pandas; print('torch', torch.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)"
methods=("sciencevae (NB, linear)")
if python3 -c "import scvi" 2> "$log_dir/scvi_import.txt"; then methods+=(LinearSCVI SCVI)
else echo "scvi-tools not importable, ours only:"; tail -3 "$log_dir/scvi_import.txt"; fi

echo "== 1. tests marked gpu"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" \
    tests/test_data.py tests/test_fused_nb.py tests/test_train.py tests/test_streaming.py tests/test_graphed.py 2>&1 \
    | tee "$log_dir/gpu_tests.txt" | tail -15

data=/tmp/gpu_check_data
run() {  # run LIMIT_S NAME THROUGHPUT_ARGS...
  local limit=$1 name=$2; shift 2
  echo "== $name" | tee -a "$log_dir/throughput.txt"
  timeout "$limit" python3 benchmarks/throughput.py --device cuda --threads 8 --data-dir "$data" "$@" 2>&1 \
      | tee -a "$log_dir/throughput.txt" | grep -E '^(\||torch|Traceback|[A-Za-z]*Error)'
}
profile() {  # profile BATCH: one epoch of ours at 100k cells under the profiler and the sync debug mode
  echo "== profile, batch $1" | tee -a "$log_dir/profile.txt"
  timeout 60 python3 benchmarks/gpu_profile.py "$data/train_100000.npz" --batch-size "$1" --compile off \
      --cuda-graph on 2>&1 \
      | tee -a "$log_dir/profile.txt" | sed -n 1,24p
}
git log -1 --format="sciencevae %h %s" 2>/dev/null || true
run 170 throughput_100k_batch4096 --cuda-graph on --cells 100000 --epochs 4 --batch-size 4096 --lr 4e-3 \
    --methods "${methods[@]}"
run 45 throughput_100k_batch4096_step_by_step --cuda-graph off --cells 100000 --epochs 4 --batch-size 4096 \
    --lr 4e-3 --methods "sciencevae (NB, linear)"
profile 4096
run 45 throughput_100k_batch1024 --cells 100000 --epochs 4 --batch-size 1024 --lr 2e-3 --methods "sciencevae (NB, linear)"
run 45 throughput_100k_batch8192 --cells 100000 --epochs 4 --batch-size 8192 --lr 5.7e-3 \
    --methods "sciencevae (NB, linear)"
run 150 throughput_900k_batch4096 --cells 100000 --repeat 10 --epochs 3 --batch-size 4096 --lr 4e-3 \
    --methods "sciencevae (NB, linear)"
run 60 throughput_100k_batch4096_compiled --cells 100000 --epochs 4 --batch-size 4096 --lr 4e-3 --compile on \
    --methods "sciencevae (NB, linear)"
echo "== streamed from a backed .h5ad (200k cells written there first), groups moved to the GPU"
timeout 150 python3 benchmarks/out_of_core.py --cells 200000 --path /tmp/cells_200k.h5ad --epochs 2 --threads 8 2>&1 \
    | tee -a "$log_dir/throughput.txt" | grep -E '^(epoch|peak|wrote|Traceback|[A-Za-z]*Error)'
run 130 throughput_100k_batch1024_with_peers --cells 100000 --epochs 4 --batch-size 1024 --lr 2e-3 \
    --methods "${methods[@]}"
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader
