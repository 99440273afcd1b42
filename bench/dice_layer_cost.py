"""How much of an FCN-AlexNet training step the numpy Dice Python layer costs (target < 5%).

Builds the train net of ``prototxt/fcn_alexnet_dice.prototxt`` (stage "train") with its Data
layers replaced by Input layers of the lab's shape, runs SGD steps through the engine solver,
and compares the step time without the Dice layer, with it run in turn (the CPU default) and
with it deferred until backward is queued (the accelerator default,
``Net.defer_metric_layers``). The nets run alternately, best of ``--rounds`` runs each; the
time spent inside the Python layer is printed beside them.

    .venv/bin/python bench/dice_layer_cost.py [--size 256] [--channels 1] [--steps 5] [--rounds 5] [--gpu]
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
    from caffeseg.engine.proto import caffe_pb2
    from caffeseg.engine.prototxt import read_net
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
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed runs per net")
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args(argv)

    from caffeseg import engine
    import torch
    from caffeseg.engine.layer_types.python import PythonLayer
    from caffeseg.engine.proto import caffe_pb2
    from caffeseg.engine.solvers import SGDSolver

    if args.gpu:
        engine.set_mode_gpu()

    def sync():
        if args.gpu:
            torch.cuda.synchronize()

    def make_solver(with_python: bool, defer: bool = False):
        sp = caffe_pb2.SolverParameter()
        sp.train_net_param.CopyFrom(train_net_param(args.size, args.channels, with_python))
        sp.train_state.stage.append("train")
        sp.base_lr, sp.lr_policy, sp.momentum, sp.weight_decay = 1e-4, "fixed", 0.9, 5e-4
        sp.max_iter, sp.display, sp.snapshot, sp.random_seed = 10 ** 6, 0, 0, 1
        solver = SGDSolver(sp)
        solver.net.defer_metric_layers = defer
        rng = np.random.default_rng(0)
        solver.net.blobs["data"].data[...] = rng.integers(0, 256, solver.net.blobs["data"].shape)
        solver.net.blobs["label"].data[...] = rng.integers(0, 2, solver.net.blobs["label"].shape)
        solver.step(2)  # warm-up (allocations, autotuning)
        return solver

    def seconds_per_step(solver) -> float:
        sync()
        start = time.perf_counter()
        solver.step(args.steps)
        sync()
        return (time.perf_counter() - start) / args.steps

    # Time inside the adapter too (on an accelerator, run in turn, this includes waiting for
    # the queued kernels before the host copy, so the difference of two nets is the fair number)
    inside = {}
    current = [None]

    def timed(fn):
        def wrapper(self, *a, **k):
            start = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                inside[current[0]] = inside.get(current[0], 0.0) + time.perf_counter() - start
        return wrapper

    for method in ("forward", "backward", "stage", "forward_staged"):
        setattr(PythonLayer, method, timed(getattr(PythonLayer, method)))
    # The nets run alternately, best of --rounds each, so that load from other work on a
    # shared machine falls on all alike. "deferred" is what a solver does on an accelerator
    # (the metric layer runs after backward is queued), "in turn" what it does on the CPU.
    variants = {"without Dice": make_solver(False), "Dice in turn": make_solver(True, defer=False),
                "Dice deferred": make_solver(True, defer=True)}
    default = "Dice deferred" if args.gpu else "Dice in turn"
    inside.clear()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.rounds):
        for name, solver in variants.items():
            current[0] = name
            best[name] = min(best[name], seconds_per_step(solver))
    without = best["without Dice"] * 1000
    print(f"FCN-AlexNet train step, {args.channels}x{args.size}x{args.size}, {'GPU' if args.gpu else 'CPU'}, "
          f"best of {args.rounds} x {args.steps} steps")
    print(f"{'variant':<16}{'step ms':>9}{'difference':>12}{'in layer ms':>13}{'in layer':>10}")
    print(f"{'without Dice':<16}{without:9.1f}")
    shares = {}
    for name in ("Dice in turn", "Dice deferred"):
        step = best[name] * 1000
        difference = max(0.0, step - without) / step
        inside_ms = inside.get(name, 0.0) * 1000 / (args.rounds * args.steps)
        direct = inside_ms / step
        # On the CPU the time inside the layer is its whole cost; the difference of two nets
        # is the fair figure on an accelerator but is noisy on a shared CPU: the larger counts.
        shares[name] = max(difference, direct)
        mark = "  <- this device's default" if name == default else ""
        print(f"{name:<16}{step:9.1f}{difference * 100:11.1f}%{inside_ms:13.2f}{direct * 100:9.1f}%{mark}")
    share = shares[default]
    print(f"Dice share ({default}) {share * 100:.1f}%: {'within' if share < 0.05 else 'ABOVE'} the 5% target")
    return 0 if share < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
