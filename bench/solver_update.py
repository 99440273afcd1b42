"""What the solver's update costs per iteration, on the CPU: whole parameters against slices.

``Solver.apply_update`` runs each parameter's update (iter_size normalisation, weight decay, the
rule, ``W -= diff``) either over the whole tensor, as it did before, or slice by slice
(``updates.slices``, ``updates.UPDATE_SLICE`` elements), so that the rule's 4-10 element-wise
passes run in cache instead of through memory. This script builds the real nets' parameters
(FCN-AlexNet 57M, FCN-8s 134M), fills the diffs with random numbers, and times
``apply_update`` both ways for each solver type, interleaved, best of ``--rounds``, plus the
diff-clearing pass that starts every iteration (``_clear_param_diffs``), for scale.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/solver_update.py --threads 1
    .venv/bin/python bench/solver_update.py --nets fcn_alexnet --types SGD Adam --slices 65536 262144 1048576
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from caffeseg.engine.solvers import get_solver, updates  # noqa: E402

import caffe_step  # noqa: E402  (the benches' solver file)
import engine_speed  # noqa: E402  (the side-by-side bench's net text)

WHOLE = 1 << 62  # a slice size no parameter reaches: the whole-tensor update


def build_solver(folder, net_name, solver_type):
    net_path = os.path.join(folder, f"{net_name}.prototxt")
    if not os.path.exists(net_path):
        source = os.path.join(ROOT, "prototxt", f"{net_name}.prototxt")
        with open(net_path, "w") as f:
            f.write(engine_speed.input_net_text(source, (1, 1, 64, 64), (1, 1, 64, 64)))
    solver_path = caffe_step.write_solver(os.path.join(folder, f"{net_name}-{solver_type}.prototxt"), net_path,
                                          solver_type)
    solver = get_solver(solver_path)
    generator = torch.Generator().manual_seed(0)
    for blob in solver._params:
        blob.grad_tensor.copy_(torch.randn(blob.grad_tensor.shape, generator=generator))
    return solver


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(solver, slice_sizes, rounds):
    """{label: (best wall s, best CPU s)} for the clearing pass and each slice size."""
    results = {}

    def update_with(size):
        saved = updates.UPDATE_SLICE
        updates.UPDATE_SLICE = size
        try:
            solver.apply_update()
        finally:
            updates.UPDATE_SLICE = saved

    variants = [("clear diffs", solver._clear_param_diffs), ("whole", lambda: update_with(WHOLE))]
    variants += [(f"slices {size}", lambda size=size: update_with(size)) for size in slice_sizes]
    for _, fn in variants:
        fn()  # warm-up: first-touch of any temporaries
    for _ in range(rounds):
        for label, fn in variants:
            wall, cpu = timed(fn)
            best = results.get(label)
            results[label] = (min(wall, best[0]), min(cpu, best[1])) if best else (wall, cpu)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", default=["fcn_alexnet", "fcn_8s"], choices=["fcn_alexnet", "fcn_8s"])
    ap.add_argument("--types", nargs="+", default=["SGD", "Nesterov", "Adam"], choices=list(updates.SOLVER_TYPES))
    ap.add_argument("--slices", nargs="+", type=int, default=[1 << 16, updates.UPDATE_SLICE, 1 << 20, 1 << 22])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.threads > 1:
        print("note: updates.slices keeps whole tensors with more than one torch thread, so every row below "
              "measures the whole-tensor update")
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.rounds} interleaved rounds, "
          f"default slice {updates.UPDATE_SLICE} elements; loadavg {os.getloadavg()}")
    print(f"{'net':12} {'type':9} {'params':>8} {'variant':>16} {'wall s':>8} {'CPU s':>8} {'/ whole':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for net_name in args.nets:
            for solver_type in args.types:
                solver = build_solver(folder, net_name, solver_type)
                count = sum(b.tensor.numel() for b in solver._params)
                results = measure(solver, args.slices, args.rounds)
                whole = results["whole"][1]
                for label, (wall, cpu) in results.items():
                    ratio = "" if label == "clear diffs" else f"{cpu / whole:.2f}x"
                    print(f"{net_name:12} {solver_type:9} {count / 1e6:7.1f}M {label:>16} {wall:8.4f} {cpu:8.4f} {ratio:>8}",
                          flush=True)
                del solver


if __name__ == "__main__":
    main()
