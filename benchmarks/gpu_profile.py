"""What bounds a training epoch on the GPU: device busy time against wall time, and kernel launches per step.

Trains our NB model (the throughput benchmark's model) for one epoch to warm up (compile, allocator), then
times one epoch plainly and one under the torch profiler, and prints the wall time per step, the summed
device time of the kernels per step, the kernel launches per step and the kernels that took longest.
When the device is busy for a small part of the wall time, the steps are bound by launching kernels from
Python, not by arithmetic or memory.

    python benchmarks/gpu_profile.py /tmp/gpu_check_data/train_100000.npz --batch-size 4096
"""

from __future__ import annotations

import argparse
import math

import scipy.sparse as sp
import torch
from torch.profiler import ProfilerActivity, profile

from sciencevae import BetaVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", help="a CSR .npz of counts (written by throughput.py --data-dir)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--compile", choices=["on", "off"], default="on")
    args = parser.parse_args()
    counts = sp.load_npz(args.counts).tocsr()
    vae = BetaVAE(counts.shape[1], n_latent=10, likelihood="nb", decoder="linear", hidden=(128,))
    options = dict(batch_size=args.batch_size, lr=4e-3, validation=0.0, progress=False, device="cuda",
                   compile=args.compile == "on")
    vae.fit(counts, epochs=1, **options)  # warm-up: compile, allocator, cuBLAS handles
    steps = math.ceil(counts.shape[0] / args.batch_size)
    epoch = float(vae.fit(counts, epochs=1, **options)["seconds"].iloc[0])  # the epoch alone, not the setup
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        vae.fit(counts, epochs=1, **options)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]  # the setup's copies of the data are not steps
    busy_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    print(f"{counts.shape[0]} cells, batch {args.batch_size}, {steps} steps, NB kernel compiled: {args.compile}")
    print(f"epoch {epoch:.3f} s = {epoch / steps * 1e3:.2f} ms per step; {counts.shape[0] / epoch:,.0f} cells/s")
    print(f"device busy {busy_ms / steps:.3f} ms per step ({busy_ms / 1e3 / epoch:.0%} of the epoch); "
          f"{len(kernels) / steps:.0f} kernel launches per step")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
