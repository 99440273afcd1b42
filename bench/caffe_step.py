"""One net's forward and forward+backward time through the pycaffe API: the child of
``bench/engine_speed.py --caffe``, run once under real Caffe's interpreter and once under the
engine (``import caffe`` = caffeseg's engine), so both backends run the very same code.

Python 3 + numpy + ``caffe`` only (real Caffe's interpreter has no torch). Prints one JSON line
``{"backend", "forward_s", "fwdbwd_s", "forward_cpu_s", "fwdbwd_cpu_s", "threads_env"}`` (best of
``--repeat`` after a warm-up; ``*_cpu_s``: this process's CPU time).

    python bench/caffe_step.py --net NET.prototxt --weights W.caffemodel --data D.npy --label L.npy
"""
import argparse
import json
import os
import time

import numpy as np


def best(fn, repeat):
    """(best wall seconds, best CPU seconds of this process) of ``repeat`` runs after a warm-up.
    CPU time hardly moves with other processes' load; wall time is what a user waits."""
    fn()  # warm-up: allocations, the engine's lazy kernels, OpenBLAS' pool
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", required=True, help="TRAIN net with Input blobs data and label")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(args.net, args.weights, caffe.TRAIN)
    net.blobs["data"].data[...] = np.load(args.data)
    net.blobs["label"].data[...] = np.load(args.label)

    def step():
        net.forward()
        net.backward()

    forward, forward_cpu = best(net.forward, args.repeat)
    fwdbwd, fwdbwd_cpu = best(step, args.repeat)
    engine = bool(getattr(caffe, "__caffeseg_engine__", False))
    print(json.dumps({"backend": "engine" if engine else "caffe", "forward_s": forward, "fwdbwd_s": fwdbwd,
                      "forward_cpu_s": forward_cpu, "fwdbwd_cpu_s": fwdbwd_cpu,
                      "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}),
          flush=True)


if __name__ == "__main__":
    main()
