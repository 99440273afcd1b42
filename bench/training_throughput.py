"""Training throughput of the engine in images per second: ``solver.step(1)`` as a job runs it.

For each net and batch it writes the bench's train net (``engine_speed.input_net_text``: Input
blobs ``data`` and ``label``), the engine's filler weights and one random input, builds an SGD
solver on it (momentum 0.9, weight decay 5e-4, a fixed rate), runs ``--warmup`` steps (cuDNN's
algorithm search, the allocator, lazy kernels), then times ``--steps`` steps and prints seconds
per step and images per second (batch × steps / seconds). On CUDA every step ends with the
solver's host copy of the loss, so the figure is a synchronised one; TF32 is off
(``engine.set_mode_gpu``), as Caffe computes.

The issue-20 targets on a GPU are FCN-AlexNet ≥ 500 and FCN-8s ≥ 100 images/s at 256², batch 8.

    .venv/bin/python bench/training_throughput.py --device cuda --nets fcn_alexnet fcn_8s --batches 8
    .venv/bin/python bench/training_throughput.py --device cpu --nets fcn_alexnet --batches 1 4 --steps 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import caffe_step  # noqa: E402  (the benches' solver file)
import engine_speed  # noqa: E402  (the case files both benches use)

def time_steps(folder, net_name, channels, batch, size, warmup, steps, device):
    """(seconds per step, images per second) of the engine's SGD solver on one case."""
    from caffeseg import engine
    files = engine_speed.prepare_case(folder, net_name, channels, batch, size)  # weights made on the CPU
    solver_path = caffe_step.write_solver(os.path.join(folder, f"{net_name}-{channels}-{batch}-solver.prototxt"),
                                          files["net"])
    if device == "cuda":
        engine.set_mode_gpu()
    try:
        solver = engine.get_solver(solver_path)
        solver.net.copy_from(files["weights"])
        solver.net.blobs["data"].data[...] = np.load(files["data"])
        solver.net.blobs["label"].data[...] = np.load(files["label"])
        solver.step(warmup)
        start = time.perf_counter()
        solver.step(steps)  # each step reads the loss back to the host: synchronised
        seconds = (time.perf_counter() - start) / steps
        del solver
    finally:
        engine.set_mode_cpu()
    return seconds, batch / seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--nets", nargs="+", default=["fcn_alexnet"], choices=["fcn_alexnet", "fcn_8s"])
    ap.add_argument("--batches", nargs="+", type=int, default=[8])
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0 = torch's default)")
    args = ap.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        where = f"{torch.cuda.get_device_name(0)}, TF32 off"
    else:
        where = f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(f"torch {torch.__version__}, {where}; SGD solver.step, {args.warmup} warm-up + {args.steps} timed steps; "
          f"loadavg {' '.join('%.2f' % v for v in os.getloadavg())}")
    print(f"{'net':<12} {'input':<16} {'s/step':>8} {'images/s':>9}")
    with tempfile.TemporaryDirectory(prefix="training-throughput-") as folder:
        for net_name in args.nets:
            for batch in args.batches:
                seconds, rate = time_steps(folder, net_name, args.channels, batch, args.size, args.warmup,
                                           args.steps, args.device)
                shape = f"{batch}x{args.channels}x{args.size}x{args.size}"
                print(f"{net_name:<12} {shape:<16} {seconds:>8.4f} {rate:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
