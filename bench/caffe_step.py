"""One net's forward and forward+backward time through the pycaffe API: the child of
``bench/engine_speed.py --caffe``, run once under real Caffe's interpreter and once under the
engine (``import caffe`` = caffeseg's engine), so both backends run the very same code.

With ``--solver TYPE`` it also times one training iteration as a job runs it,
``solver.step(1)``: clearing the diffs, forward+backward, and the update (weight decay 5e-4,
momentum 0.9 where the type has one, a fixed rate), through a solver built on the same net file
once the plain net is gone (so the two never hold memory together).

Python 3 + numpy + ``caffe`` only (real Caffe's interpreter has no torch). Prints one JSON line
``{"backend", "forward_s", "fwdbwd_s", "forward_cpu_s", "fwdbwd_cpu_s", "threads_env"}``, plus
``"step_s", "step_cpu_s"`` with ``--solver`` (best of ``--repeat`` after ``--warmup`` runs; ``*_cpu_s``:
this process's CPU time). The engine allocates its activations afresh each pass and glibc's heap
takes a few passes to stop growing (each new page is a fault, ~12 µs on a KVM guest measured
here); Caffe allocates once. ``--warmup 4`` therefore times both in their steady state.

    python bench/caffe_step.py --net NET.prototxt --weights W.caffemodel --data D.npy --label L.npy [--solver SGD]
"""
import argparse
import gc
import json
import os
import shutil
import tempfile
import time

import numpy as np


def best(fn, repeat, warmup=1):
    """(best wall seconds, best CPU seconds of this process) of ``repeat`` runs after ``warmup``.
    CPU time hardly moves with other processes' load; wall time is what a user waits."""
    for _ in range(warmup):  # allocations, the engine's lazy kernels, OpenBLAS' pool
        fn()
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
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before each figure")
    ap.add_argument("--solver", default="", help="also time solver.step(1) with this solver type (SGD, Adam, ...)")
    args = ap.parse_args(argv)
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(args.net, args.weights, caffe.TRAIN)
    feed(net, args)

    def step():
        net.forward()
        net.backward()

    forward, forward_cpu = best(net.forward, args.repeat, args.warmup)
    fwdbwd, fwdbwd_cpu = best(step, args.repeat, args.warmup)
    engine = bool(getattr(caffe, "__caffeseg_engine__", False))
    result = {"backend": "engine" if engine else "caffe", "forward_s": forward, "fwdbwd_s": fwdbwd,
              "forward_cpu_s": forward_cpu, "fwdbwd_cpu_s": fwdbwd_cpu,
              "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    if args.solver:
        del net
        gc.collect()
        result["step_s"], result["step_cpu_s"] = time_solver_step(caffe, args)
    print(json.dumps(result), flush=True)


def feed(net, args):
    net.blobs["data"].data[...] = np.load(args.data)
    net.blobs["label"].data[...] = np.load(args.label)


SOLVER_TEXT = """net: "{net}"
type: "{type}"
base_lr: 1e-10
lr_policy: "fixed"
momentum: {momentum}
weight_decay: 0.0005
display: 0
max_iter: 1000000
snapshot: 0
snapshot_prefix: "{prefix}"
"""


def write_solver(path, net, solver_type="SGD"):
    """The benches' solver file at ``path`` for ``net``: ``solver_type`` with weight decay 5e-4,
    momentum 0.9 where the type has one, a fixed rate, no snapshots (prefix beside ``path``)."""
    momentum = 0.0 if solver_type in ("AdaGrad", "RMSProp") else 0.9
    with open(path, "w") as f:
        f.write(SOLVER_TEXT.format(net=os.path.abspath(net), type=solver_type, momentum=momentum,
                                   prefix=os.path.join(os.path.dirname(os.path.abspath(path)), "snap")))
    return path


def time_solver_step(caffe, args):
    """(best wall s, best CPU s) of ``solver.step(1)`` on the same net, weights and input."""
    folder = tempfile.mkdtemp(prefix="caffe-step-")
    try:
        path = write_solver(os.path.join(folder, "solver.prototxt"), args.net, args.solver)
        solver = caffe.get_solver(path)
        solver.net.copy_from(args.weights)
        feed(solver.net, args)  # Input layers keep what is written into their tops
        return best(lambda: solver.step(1), args.repeat, args.warmup)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
