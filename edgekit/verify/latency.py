"""Host latency: median and p90 of repeated single-input runs after warm-up, in the artifact's runtime.

The thread count is the runtime's own (set when the runtime was created) and is
recorded with every number, as is the provenance `measured-host`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import numpy as np


def host_description() -> dict[str, object]:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}


def time_runs(fn: Callable[[], object], *, warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Milliseconds per call of `fn`: median, p90, min, mean over `repeats` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    arr = np.asarray(samples)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()),
        "mean_ms": float(arr.mean()),
        "warmup": warmup,
        "repeats": repeats,
    }
