"""Peak memory (RSS) of one ``medfm-robust perturb`` call on a large RGB image, per perturbation type.

Each call runs in its own process (one thread); its peak resident set size is read from
``resource.getrusage(RUSAGE_CHILDREN)`` after it ends. The input is a generated textured RGB image
(``perturb_throughput.textured_image``, modality dermoscopy) of the given size, saved as PNG.

    .venv/bin/python benchmarks/perturb_memory.py [--size 2048] [--types gaussian_noise rotation ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perturb_throughput import textured_image

from medfm_robust.io import write_image

DEFAULT_TYPES = ["gaussian_noise", "gaussian_blur", "motion_blur", "jpeg_compression", "rotation", "hair"]


def peak_rss_mib(argv: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MiB, seconds, exit code) of one child process running ``argv``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    code = (
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    kib = int(proc.stdout.strip().splitlines()[-1])
    return kib / 1024, seconds, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    ap.add_argument("--level", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.png"
        image = textured_image("dermoscopy", 0, args.size)
        write_image(src, np.ascontiguousarray(image))
        base, _, _ = peak_rss_mib([sys.executable, "-c", "import medfm_robust.perturb, medfm_robust.io"])
        print(f"input {args.size} x {args.size} RGB ({image.nbytes / 2**20:.0f} MiB as uint8); "
              f"interpreter + imports {base:.0f} MiB; level {args.level}; one thread")
        for name in args.types:
            out = Path(tmp) / f"{name}.png"
            cmd = [sys.executable, "-m", "medfm_robust.cli", "perturb", str(src), str(out),
                   "--type", name, "--level", str(args.level), "--max-pixels", "0"]
            mib, sec, rc = peak_rss_mib(cmd)
            print(f"{name:<16} peak RSS {mib:7.0f} MiB  {sec:6.1f} s  rc={rc}")


if __name__ == "__main__":
    main()
