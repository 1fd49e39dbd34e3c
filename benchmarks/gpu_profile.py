"""What bounds a training epoch on the GPU: device busy time against wall time, and kernel launches per step.

Trains our NB model (the throughput benchmark's model) for one epoch to warm up (compile, allocator), then
times one epoch plainly, one under torch's sync debug mode (where the host waits for the GPU, by source
line) and one under the torch profiler, and prints the wall time per step, the summed device time of the
kernels per step, the kernel launches per step, the kernels that took longest and the operators that took
the most host time. When the device is busy for a small part of the wall time, the steps are bound by the
host: launching kernels from Python, or waiting for the device where a step synchronises.

    python benchmarks/gpu_profile.py /tmp/gpu_check_data/train_100000.npz --batch-size 4096
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections import Counter
from pathlib import Path

import scipy.sparse as sp
import torch
from torch.profiler import ProfilerActivity, profile

from sciencevae import BetaVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", help="a CSR .npz of counts (written by throughput.py --data-dir)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--compile", choices=["on", "off"], default="on")
    parser.add_argument("--cuda-graph", choices=["on", "off"], default="on")
    args = parser.parse_args()
    counts = sp.load_npz(args.counts).tocsr()
    vae = BetaVAE(counts.shape[1], n_latent=10, likelihood="nb", decoder="linear", hidden=(128,))
    options = dict(batch_size=args.batch_size, lr=4e-3, validation=0.0, progress=False, device="cuda",
                   compile=args.compile == "on", cuda_graph=args.cuda_graph == "on")
    vae.fit(counts, epochs=1, **options)  # warm-up: compile, allocator, cuBLAS handles
    steps = math.ceil(counts.shape[0] / args.batch_size)
    # the second epoch alone: not the setup, nor the first epoch's eager warm-up steps and graph capture
    epoch = float(vae.fit(counts, epochs=2, **options)["seconds"].iloc[-1])
    syncs = synchronising_calls(vae, counts, options)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        vae.fit(counts, epochs=1, **options)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]  # the setup's copies of the data are not steps
    busy_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    print(f"{counts.shape[0]} cells, batch {args.batch_size}, {steps} steps, NB kernel compiled: {args.compile}, "
          f"CUDA graph: {args.cuda_graph}")
    print(f"epoch {epoch:.3f} s = {epoch / steps * 1e3:.2f} ms per step; {counts.shape[0] / epoch:,.0f} cells/s")
    print(f"device busy {busy_ms / steps:.3f} ms per step ({busy_ms / 1e3 / epoch:.0%} of the epoch); "
          f"{len(kernels) / steps:.0f} kernel launches per step")
    print(f"host waits for the device {sum(syncs.values())} times in the epoch (setup included): "
          + "; ".join(f"{where} ×{n}" for where, n in syncs.most_common(6)))
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    print(averages.table(sort_by="device_time_total", row_limit=15, max_name_column_width=60))


def synchronising_calls(vae: BetaVAE, counts: sp.csr_matrix, options: dict) -> Counter:
    """Source lines where one epoch's fit makes the host wait for the GPU (torch's sync debug mode), counted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            vae.fit(counts, epochs=1, **options)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


if __name__ == "__main__":
    main()
