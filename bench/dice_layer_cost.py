"""How much of an FCN-AlexNet training step the numpy Dice Python layer costs (target < 5%).

Builds the train net of ``prototxt/fcn_alexnet_dice.prototxt`` (stage "train") with its Data
layers replaced by Input layers of the lab's shape, runs SGD steps through the engine solver,
and compares the step time with and without the Dice layer (best of three runs each).

    .venv/bin/python bench/dice_layer_cost.py [--size 256] [--channels 1] [--steps 5] [--gpu]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def train_net_param(size: int, channels: int, with_python: bool = True):
    from engine.proto import caffe_pb2
    from engine.prototxt import read_net
    net = read_net(os.path.join(ROOT, "prototxt", "fcn_alexnet_dice.prototxt"))
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer.type == "Data":
            if any("val" in rule.stage for rule in layer.include):
                continue
            dims = [1, channels, size, size] if layer.top[0] == "data" else [1, 1, size, size]
            text = f'name: "{layer.name}" type: "Input" top: "{layer.top[0]}" ' \
                   f'input_param {{ shape {{ {" ".join(f"dim: {d}" for d in dims)} }} }}'
            from google.protobuf import text_format
            replacement = caffe_pb2.LayerParameter()
            text_format.Parse(text, replacement)
            out.layer.add().CopyFrom(replacement)
        elif layer.type == "Python" and not with_python:
            continue
        else:
            out.layer.add().CopyFrom(layer)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args(argv)

    import engine
    import torch
    from engine.layers.python import PythonLayer
    from engine.proto import caffe_pb2
    from engine.solvers import SGDSolver

    if args.gpu:
        engine.set_mode_gpu()

    def sync():
        if args.gpu:
            torch.cuda.synchronize()

    def ms_per_step(with_python: bool) -> float:
        sp = caffe_pb2.SolverParameter()
        sp.train_net_param.CopyFrom(train_net_param(args.size, args.channels, with_python))
        sp.train_state.stage.append("train")
        sp.base_lr, sp.lr_policy, sp.momentum, sp.weight_decay = 1e-4, "fixed", 0.9, 5e-4
        sp.max_iter, sp.display, sp.snapshot, sp.random_seed = args.steps + 1, 0, 0, 1
        solver = SGDSolver(sp)
        rng = np.random.default_rng(0)
        solver.net.blobs["data"].data[...] = rng.integers(0, 256, solver.net.blobs["data"].shape)
        solver.net.blobs["label"].data[...] = rng.integers(0, 2, solver.net.blobs["label"].shape)
        solver.step(2)  # warm-up (allocations, autotuning)
        best = float("inf")
        for _ in range(3):  # best of three runs: the machine may be shared
            sync()
            start = time.perf_counter()
            solver.step(args.steps)
            sync()
            best = min(best, (time.perf_counter() - start) / args.steps)
        return best * 1000

    # Time inside the adapter too (on an accelerator this includes waiting for the queued
    # kernels before the host copy, so the difference of the two nets is the fair number)
    inside = {"s": 0.0, "calls": 0}
    original_forward, original_backward = PythonLayer.forward, PythonLayer.backward

    def timed(fn):
        def wrapper(self, *a, **k):
            start = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                inside["s"] += time.perf_counter() - start
                inside["calls"] += 1
        return wrapper

    PythonLayer.forward, PythonLayer.backward = timed(original_forward), timed(original_backward)
    with_dice = ms_per_step(True)
    inside_ms = inside["s"] * 1000 / max(1, inside["calls"])
    without = ms_per_step(False)
    share = max(0.0, with_dice - without) / with_dice
    print(f"FCN-AlexNet train step, {args.channels}x{args.size}x{args.size}, {'GPU' if args.gpu else 'CPU'}: "
          f"{without:.1f} ms without the Dice layer, {with_dice:.1f} ms with it -> Dice costs "
          f"{share * 100:.1f}% of the step ({'within' if share < 0.05 else 'ABOVE'} the 5% target); "
          f"time inside one Python-layer call incl. device sync: {inside_ms:.2f} ms")
    return 0 if share < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
