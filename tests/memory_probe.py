"""Check that streaming keeps a process's memory independent of the size of its input."""

import os
import subprocess
import sys
from pathlib import Path


def growth_mb(script: Path, data: Path) -> float:
    """Run ``python script data``; the script prints its peak memory before and after the work (MiB).

    The child runs with one malloc arena, a fixed mmap threshold (1 MiB) and one BLAS thread. Otherwise
    glibc raises its mmap threshold as large arrays are freed, so later arrays of up to 32 MiB come from a
    heap that is not given back, and the same run's peak varied by up to ~90 MB from run to run (the case
    study on one field: +251 to +431 MB), more than the test's margin; with these settings three runs agree
    to 1 MB (+206 MB on the short field, +198 MB on the long one).
    """
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "1048576", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(data)], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = (float(v) for v in result.stdout.split()[-2:])
    return after - before


def assert_growth_does_not_follow_the_input(script_text: str, folder: Path, small: tuple[Path, float],
                                            large: tuple[Path, float]) -> None:
    """Run the script on a small and a large input ((path, size in MB) each); the growth may not follow the size."""
    script = folder / "stream.py"
    script.write_text(script_text)
    (small_path, small_mb), (large_path, large_mb) = small, large
    small_growth, large_growth = growth_mb(script, small_path), growth_mb(script, large_path)
    print(f"{small_mb:.0f} MB -> +{small_growth:.0f} MB; {large_mb:.0f} MB -> +{large_growth:.0f} MB")
    assert large_growth - small_growth < 0.2 * (large_mb - small_mb), (
        f"a {large_mb:.0f} MB input grew the process by {large_growth:.0f} MB, "
        f"a {small_mb:.0f} MB one by {small_growth:.0f} MB"
    )
