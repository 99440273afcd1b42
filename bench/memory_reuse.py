"""A training step with glibc's allocator keeping freed memory (jobs/allocator.py) against its default.

The engine allocates every top, diff and scratch tensor afresh each step (Caffe keeps its blobs).
glibc serves a block of 32 MiB or more (less, until its threshold has adapted) from a new mmap and
unmaps it on free, so every step faults those pages in again: FCN-8s at 256² touches about 1 GB
of new pages per step. ``jobs.allocator`` gives a runner variables under which freed blocks stay
in the heap and are reused.

Each variant runs in its own process (glibc reads the variables when the process starts), rounds
alternate the order; each process builds the net, takes --warmup steps, then --steps timed TRAIN
forward+backward steps through engine.Net (Input layers, 1 thread each). It prints, per variant,
the best and mean CPU seconds per step, the minor page faults per timed step, and the ratio
retain/default of the best and the mean CPU time, taken in the same run.

    .venv/bin/python bench/memory_reuse.py --nets fcn_alexnet fcn_8s --batches 1 4 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffeseg.jobs import allocator, threads  # noqa: E402  (stdlib only: the parent never loads torch)

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, %(root)r); sys.path.insert(0, %(bench)r)
import torch
torch.set_num_threads(1)
import step_profile
net = step_profile.build_net(%(net)r, %(batch)d, %(channels)d, %(size)d)
def step():
    net.clear_param_diffs()
    net._forward_backward()
for _ in range(%(warmup)d):
    step()
cpus, faults = [], []
for _ in range(%(steps)d):
    before, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    step()
    cpus.append(time.process_time() - cpu)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"cpu": cpus, "faults": faults}))
"""

VARIANTS = ("default", "retain")


def variant_env(name):
    base = {k: v for k, v in os.environ.items() if k not in allocator.RETAIN_FREED_MEMORY}
    base.update(threads.ThreadPlan("training", 1, threads.usable_cores()).environment())
    return allocator.runner_environment(base) if name == "retain" else base


def run_child(args, net, batch):
    code = CHILD % {"root": ROOT, "bench": os.path.join(ROOT, "bench"), "net": net, "batch": batch,
                    "channels": args.channels, "size": args.size, "warmup": args.warmup, "steps": args.steps}
    results = {}
    for rnd in range(args.rounds):
        for name in (VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]):
            out = subprocess.run([sys.executable, "-c", code], env=variant_env(name), capture_output=True,
                                 text=True, check=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            slot = results.setdefault(name, {"cpu": [], "faults": []})
            slot["cpu"] += got["cpu"]
            slot["faults"] += got["faults"]
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["fcn_alexnet", "fcn_8s"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"1 thread, {args.rounds} rounds x {args.steps} steps per variant after {args.warmup} warm-up steps; "
          f"retain = {' '.join(f'{k}={v}' for k, v in allocator.RETAIN_FREED_MEMORY.items())}")
    print(f"{'net':<12} {'input':<14} {'variant':<8} {'best cpu s':>10} {'mean cpu s':>10} {'faults/step':>12} "
          f"{'best ratio':>10} {'mean ratio':>10}  loadavg")
    for net in args.nets:
        for batch in args.batches:
            with open("/proc/loadavg") as f:
                load = " ".join(f.read().split()[:3])
            results = run_child(args, net, batch)
            ref = results["default"]
            for name in VARIANTS:
                r = results[name]
                best, mean = min(r["cpu"]), sum(r["cpu"]) / len(r["cpu"])
                faults = sum(r["faults"]) / len(r["faults"])
                ratio = (f"{best / min(ref['cpu']):>9.2f}x {mean / (sum(ref['cpu']) / len(ref['cpu'])):>9.2f}x"
                         if name != "default" else f"{'':>10} {'':>10}")
                shape = f"{batch}x{args.channels}x{args.size}x{args.size}"
                print(f"{net:<12} {shape:<14} {name:<8} {best:>10.3f} {mean:>10.3f} {faults:>12.0f} {ratio}  {load}",
                      flush=True)


if __name__ == "__main__":
    main()
