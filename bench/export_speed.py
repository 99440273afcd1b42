"""Model download archive: gzip level 1 (what jobs/export.py uses) against level 6 and 9 on a
caffemodel-like file (xavier-scaled float32 weights, the content of a trained FCN-AlexNet), all in
one run. Prints seconds, MB/s and the archive size relative to the input.

    .venv/bin/python bench/export_speed.py [--mb 100]
"""
import argparse
import io
import os
import tarfile
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="size of the weight file (FCN-AlexNet: 230)")
    args = ap.parse_args()
    rng = np.random.RandomState(0)
    weights = (rng.randn(args.mb * 1024 * 1024 // 4) * np.sqrt(2.0 / 9216)).astype(np.float32)
    folder = tempfile.mkdtemp(prefix="caffeseg-export-bench-")
    src = os.path.join(folder, "snapshot.caffemodel")
    weights.tofile(src)
    size = os.path.getsize(src)
    rows = []
    for level in (1, 6, 9):
        out = io.BytesIO()
        t0 = time.perf_counter()
        with tarfile.open(fileobj=out, mode="w:gz", compresslevel=level) as tar:
            tar.add(src, arcname="snapshot.caffemodel")
        seconds = time.perf_counter() - t0
        rows.append((level, seconds, size / seconds / 1e6, len(out.getvalue()) / size))
    os.unlink(src)
    os.rmdir(folder)
    base = rows[0][1]
    print("%-6s %9s %9s %10s %12s" % ("level", "seconds", "MB/s", "size/input", "time/level1"))
    for level, seconds, rate, ratio in rows:
        print("%-6d %9.2f %9.1f %10.4f %12.2f" % (level, seconds, rate, ratio, seconds / base))


if __name__ == "__main__":
    main()
