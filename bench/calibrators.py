"""Time every calibration method on real statistics (the issue's entropy target: well under 1 s per quantizer).

Usage: python bench/calibrators.py RUN_DIR/calibration_stats.npz
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from quant_workbench.config.vocabulary import CALIB_METHODS
from quant_workbench.quantize.observers import load_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stats", type=Path)
    args = ap.parse_args()
    calibrators, _ = load_stats(args.stats)
    print(f"{len(calibrators)} quantizers from {args.stats}")
    for method in CALIB_METHODS:
        times = []
        for cal in calibrators.values():
            t0 = time.perf_counter()
            cal.compute_amax(method)
            times.append(time.perf_counter() - t0)
        print(
            f"{method:>10}: median {statistics.median(times) * 1e3:7.2f} ms  max {max(times) * 1e3:7.2f} ms  "
            f"total {sum(times):6.2f} s per quantizer set"
        )


if __name__ == "__main__":
    main()
