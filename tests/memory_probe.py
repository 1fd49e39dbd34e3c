"""Run a script in a fresh process and read how much its peak resident memory grew."""

import subprocess
import sys


def growth_mb(script, path) -> float:
    """Run ``python script path``; the script prints its peak memory before and after the work (MiB)."""
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = (float(v) for v in result.stdout.split()[-2:])
    return after - before
