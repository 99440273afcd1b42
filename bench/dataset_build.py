"""Dataset build speed on a full-size Sunnybrook phantom (260 inner contours, 15 cases).

    .venv/bin/python bench/dataset_build.py [--workers N] [--phantom DIR] [--keep]

Generates the phantom once (or reuses --phantom), then builds the dataset with 1 worker and
with N workers (threads and processes), for both feature encodings, and prints records/s.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffeseg.jobs.dataset import build_dataset  # noqa: E402
from caffeseg.plugin.sunnybrook import SunnybrookPlugin, phantom  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2))
    parser.add_argument("--phantom", help="reuse (or create) the phantom release here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="caffeseg-bench-ds-")
    release = args.phantom or os.path.join(work, "release")
    try:
        if not os.path.isdir(os.path.join(release, "challenge_training")):
            t = time.time()
            summary = phantom.generate(release, cases=15, seed=0)
            print("phantom: %d images, %d inner contours in %.1fs"
                  % (summary["images"], summary["contours"]["icontour"], time.time() - t))
        form = {"image_folder": os.path.join(release, "challenge_training"),
                "contour_folder": os.path.join(release, "TrainingDataContours")}
        configs = [(1, "inline")] + [(args.workers, kind) for kind in ("thread", "process")]
        print("%-9s %-8s %-8s %8s %9s %10s" % ("encoding", "workers", "executor", "records",
                                               "seconds", "records/s"))
        for encoding in ("none", "png"):
            for workers, kind in configs:
                out = os.path.join(work, "ds-%s-%d-%s" % (encoding, workers, kind))
                t = time.time()
                info = build_dataset(SunnybrookPlugin(), form, out, encoding=encoding,
                                     workers=workers,
                                     executor="thread" if kind == "inline" else kind)
                dt = time.time() - t
                n = sum(s["count"] for s in info["stages"].values())
                print("%-9s %-8d %-8s %8d %9.2f %10.0f" % (encoding, workers, kind, n, dt, n / dt))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
