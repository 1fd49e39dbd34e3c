"""Training on a shared machine: the README's two fits, quiet and beside CPU-bound processes.

Runs with torch's default threads (do not set OMP_NUM_THREADS): each setting in
a fresh process, in the same run,

- quiet: nothing else running;
- busy: ``--competitors`` processes spinning (``while True: pass``) beside it,
  with the thread choice of ``sciencevae.threads`` (fewer threads when cores are busy);
- busy, threads not adapted: the same, with the load measurement switched off
  (torch's default threads, what fit did before).

Prints seconds per setting and the busy/quiet slow-down. Not run by the tests.

    python benchmarks/busy_machine.py --competitors 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

WORKLOAD = """
import json, sys, time
import torch
import sciencevae
from sciencevae import threads
from sciencevae.datasets import count_programmes, linear_factors
if sys.argv[1] == "off":
    threads.cores_busy_elsewhere = lambda window: None  # torch's default threads, unadapted
started = time.perf_counter()
X, _ = linear_factors(4000)
vae = sciencevae.BetaVAE(n_features=50, n_latent=6, beta=1.0, hidden=(64, 32))
history = vae.fit(X, epochs=100, batch_size=128, progress=False)
counts, _ = count_programmes(2000)
nb = sciencevae.BetaVAE(counts.shape[1], n_latent=4, likelihood="nb", decoder="linear")
nb.fit(counts, epochs=50, progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "threads": int(history["threads"].iloc[0]),
                  "default_threads": torch.get_num_threads()}))
"""


def measure(adapt: bool, competitors: int) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        time.sleep(0.5 if competitors else 0)
        out = subprocess.run([sys.executable, "-c", WORKLOAD, "on" if adapt else "off"], check=True,
                             capture_output=True, text=True).stdout
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitors", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        for name, adapt, competitors in (("quiet", True, 0), ("busy, threads chosen", True, args.competitors),
                                         ("busy, torch's default threads", False, args.competitors)):
            rows.append({"setting": name, "repeat": repeat, **measure(adapt, competitors)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    quiet = min(r["seconds"] for r in rows if r["setting"] == "quiet")
    print(f"README fit examples (linear_factors 4000 x 50, 100 epochs; count_programmes 2000, 50 epochs); "
          f"{args.competitors} spinning process(es) beside the busy runs; best of {args.repeats}")
    print("| setting | threads | seconds | slow-down against quiet |\n|---|---|---|---|")
    for name in dict.fromkeys(r["setting"] for r in rows):
        best = min((r for r in rows if r["setting"] == name), key=lambda r: r["seconds"])
        print(f"| {name} | {best['threads']} of {best['default_threads']} | {best['seconds']:.1f} | "
              f"{best['seconds'] / quiet:.2f}× |")


if __name__ == "__main__":
    main()
