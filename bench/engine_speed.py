"""Engine speed on FCN-AlexNet (and optionally FCN-8s) at full widths, CPU by default.

Times forward and forward+backward per image at 1×1×256×256 and 1×3×256×256 for
  * the engine's layers, run in prototxt order from prototxt/<net>.prototxt (and, when
    ``engine.Net`` exists, through the Net itself),
  * a hand-written PyTorch nn.Module of the same FCN-AlexNet with the same weights (ratio),
  * BVLC Caffe's reference figures on the 2-core CI machine (CPU, per image, 1×1×256×256):
    FCN-AlexNet forward 0.33 s, forward+backward 0.89 s; FCN-8s 2.91 s / 8.87 s.

    python bench/engine_speed.py                 # table
    python bench/engine_speed.py --profile       # + time per layer (forward and backward)
    python bench/engine_speed.py --nets fcn_alexnet fcn_8s --repeat 3

The machine is usually shared: keep --repeat small and read the figures as the best of N.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffeseg import engine  # noqa: E402
from caffeseg.engine import layer_types  # noqa: E402,F401  (registers the layers)
from caffeseg.engine import rng  # noqa: E402
from caffeseg.engine.layer_types.base import layer_class  # noqa: E402
from caffeseg.engine.prototxt import read_net  # noqa: E402
from caffeseg.engine.proto import caffe_pb2  # noqa: E402

CAFFE_REFERENCE = {  # seconds per image at 1×1×256×256 on the 2-core CI machine
    "fcn_alexnet": (0.33, 0.89),
    "fcn_8s": (2.91, 8.87),
}
SKIPPED_TYPES = {"Data", "Accuracy", "Python", "Input"}


class LayerRunner:
    """The net's layers in prototxt order (train stage, no data/metric layers), with Input blobs
    'data' and 'label'. Each layer runs on detached leaf inputs when profiling, so its backward
    can be timed on its own; otherwise one autograd graph covers the whole net."""

    def __init__(self, path: str, input_shape, phase):
        net = read_net(path)
        self.layers = []
        shapes = {"data": tuple(input_shape), "label": (input_shape[0], 1) + tuple(input_shape[2:])}
        rng.set_seed(1)
        for lp in net.layer:
            if lp.type in SKIPPED_TYPES or any(r.stage and "train" not in r.stage for r in lp.include):
                continue
            layer = layer_class(lp.type)(lp, phase)
            bottoms = [shapes[b] for b in lp.bottom]
            params = layer.setup(bottoms)
            for name, shape in zip(lp.top, layer.reshape(bottoms)):
                shapes[name] = tuple(shape)
            learn = not getattr(layer, "fixed_params", False)
            params = [p.to(DEVICE).requires_grad_(learn and not (len(lp.param) > i and lp.param[i].lr_mult == 0))
                      for i, p in enumerate(params)]
            self.layers.append((lp, layer, params))

    def params_of(self, name):
        for lp, _, params in self.layers:
            if lp.name == name:
                return params
        raise KeyError(name)

    def forward(self, data, label, upto_loss=True, timings=None, leaves=False):
        blobs = {"data": data, "label": label}
        for lp, layer, params in self.layers:
            if not upto_loss and layer.is_loss:
                break
            bottoms = [blobs[b] for b in lp.bottom]
            if leaves:
                bottoms = [b.detach().requires_grad_(b.requires_grad) for b in bottoms]
                lp_inputs = bottoms
            _sync()
            start = time.perf_counter()
            tops = layer.forward(bottoms, params)
            if timings is not None:
                _sync()
                timings[lp.name + " (fwd)"] += time.perf_counter() - start
            if leaves:
                self._graph.append((lp, lp_inputs, tops))
            blobs.update(zip(lp.top, tops))
        return blobs

    def forward_backward(self, data, label, timings=None):
        if timings is None:
            blobs = self.forward(data, label)
            blobs["loss"].backward()
            return blobs
        self._graph = []
        blobs = self.forward(data, label, timings=timings, leaves=True)
        grads = {"loss": torch.ones((), device=DEVICE)}
        for lp, inputs, tops in reversed(self._graph):
            pairs = [(t, grads.pop(n)) for n, t in zip(lp.top, tops) if n in grads and t.requires_grad]
            # an in-place top reuses its bottom's name: its gradient is consumed here
            start = time.perf_counter()
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
            _sync()
            timings[lp.name + " (bwd)"] += time.perf_counter() - start
            for name, x in zip(lp.bottom, inputs):
                if x.grad is not None:
                    grads[name] = grads[name] + x.grad if name in grads else x.grad
        return blobs


class TorchFCNAlexNet(nn.Module):
    """FCN-AlexNet written directly in PyTorch (the speed yardstick); weights copied from a runner."""

    def __init__(self, runner: LayerRunner):
        super().__init__()
        convs = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "score_fr"]
        self.w = {n: [p.detach().clone().requires_grad_(True) for p in runner.params_of(n)] for n in convs}
        self.up = runner.params_of("upscore")[0].detach().clone()
        for n, ps in self.w.items():
            for i, p in enumerate(ps):
                self.register_parameter(f"{n}_{i}", nn.Parameter(p))
        self.geometry = {"conv1": (4, 100, 1), "conv2": (1, 2, 2), "conv3": (1, 1, 1), "conv4": (1, 1, 2),
                         "conv5": (1, 1, 2), "fc6": (1, 0, 1), "fc7": (1, 0, 1), "score_fr": (1, 0, 1)}

    def conv(self, x, name):
        stride, pad, group = self.geometry[name]
        return F.conv2d(x, getattr(self, f"{name}_0"), getattr(self, f"{name}_1"), stride, pad, 1, group)

    def forward(self, data, train):
        x = data - 116.0
        x = F.relu(self.conv(x, "conv1"))
        x = F.local_response_norm(F.max_pool2d(x, 3, 2, ceil_mode=True), 5, 1e-4, 0.75)
        x = F.relu(self.conv(x, "conv2"))
        x = F.local_response_norm(F.max_pool2d(x, 3, 2, ceil_mode=True), 5, 1e-4, 0.75)
        x = F.relu(self.conv(x, "conv3"))
        x = F.relu(self.conv(x, "conv4"))
        x = F.max_pool2d(F.relu(self.conv(x, "conv5")), 3, 2, ceil_mode=True)
        x = F.dropout(F.relu(self.conv(x, "fc6")), 0.5, train)
        x = F.dropout(F.relu(self.conv(x, "fc7")), 0.5, train)
        x = F.conv_transpose2d(self.conv(x, "score_fr"), self.up, None, 32, 0, 0, 2)
        h, w = data.shape[2:]
        return x[:, :, 18:18 + h, 18:18 + w]


DEVICE = torch.device("cpu")


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeat):
    fn()  # warm-up (allocator, lazy init, cuDNN autotuning)
    _sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_net(net_name, channels, repeat, profile, with_torch):
    path = os.path.join(ROOT, "prototxt", f"{net_name}.prototxt")
    shape = (1, channels, 256, 256)
    gen = torch.Generator().manual_seed(0)
    data = (torch.rand(shape, generator=gen) * 255).to(DEVICE)
    label = torch.randint(0, 2, (1, 1, 256, 256), generator=gen).float().to(DEVICE)
    test = LayerRunner(path, shape, caffe_pb2.TEST)
    train = LayerRunner(path, shape, caffe_pb2.TRAIN)
    rows = []
    with torch.no_grad():
        fwd = best_time(lambda: test.forward(data, label, upto_loss=False), repeat)
    fwdbwd = best_time(lambda: train.forward_backward(data, label), repeat)
    rows.append(("engine layers", fwd, fwdbwd))
    net_row = engine_net_row(path, data, label, repeat)
    if net_row:
        rows.append(net_row)
    if with_torch and net_name == "fcn_alexnet":
        model = TorchFCNAlexNet(train)
        with torch.no_grad():
            tfwd = best_time(lambda: model(data, False), repeat)

        def torch_step():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(data, True), label[:, 0].long()).backward()

        rows.append(("hand-written PyTorch", tfwd, best_time(torch_step, repeat)))
    timings = None
    if profile:
        timings = defaultdict(float)
        train.forward_backward(data, label, timings=defaultdict(float))  # warm-up (autograd threads)
        for _ in range(repeat):
            train.forward_backward(data, label, timings=timings)
        timings = {k: v / repeat for k, v in timings.items()}
    return rows, timings


def input_net_text(path, data_shape, label_shape):
    """The train stage of ``path`` with Input layers 'data' and 'label' in place of the Data
    layers (and without Accuracy/Python layers), as prototxt text: forward+backward in TRAIN
    phase includes the loss."""
    from caffeseg.engine.prototxt import format_message
    source = read_net(path)
    bench_net_param = caffe_pb2.NetParameter(name=source.name)
    for name, shape in (("data", data_shape), ("label", label_shape)):
        layer = bench_net_param.layer.add(name=name, type="Input")
        layer.top.append(name)
        layer.input_param.shape.add().dim.extend(shape)
    for lp in source.layer:
        if lp.type in SKIPPED_TYPES or any(r.stage and "train" not in r.stage for r in lp.include):
            continue
        copy = bench_net_param.layer.add()
        copy.CopyFrom(lp)
        del copy.include[:]
        del copy.exclude[:]
    return format_message(bench_net_param)


def engine_net_row(path, data, label, repeat):
    """Time engine.Net (TRAIN, with the loss) on ``input_net_text``."""
    from caffeseg import engine
    Net = engine.Net
    import tempfile
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as handle:
            handle.write(input_net_text(path, data.shape, label.shape))
        if DEVICE.type == "cuda":
            engine.set_mode_gpu()
        net = Net(handle.name, phase=caffe_pb2.TRAIN)
        os.unlink(handle.name)
        net.blobs["data"].data[...] = data.cpu().numpy()
        net.blobs["label"].data[...] = label.cpu().numpy()
        with torch.no_grad():
            fwd = best_time(net.forward, repeat)

        def step():
            net.forward()
            net.backward()

        return ("engine.Net (TRAIN, with loss)", fwd, best_time(step, repeat))
    except Exception as err:  # report, do not hide the layer timings
        print(f"engine.Net could not be timed: {type(err).__name__}: {err}", file=sys.stderr)
        return None


# -- side by side with real Caffe (--caffe) ---------------------------------------------------------

STEP_SCRIPT = os.path.join(ROOT, "bench", "caffe_step.py")
LOAD_CODE = "import time\nend = time.time() + %f\nwhile time.time() < end:\n    pass\n"


def prepare_case(folder, net_name, channels, batch, size):
    """Net text, weights (the engine's fillers, written as a .caffemodel both backends load) and
    the input arrays of one case, as files in ``folder``."""
    import numpy as np
    from caffeseg import engine
    path = os.path.join(ROOT, "prototxt", f"{net_name}.prototxt")
    data_shape, label_shape = (batch, channels, size, size), (batch, 1, size, size)
    stem = os.path.join(folder, f"{net_name}-{channels}-{batch}")
    files = {"net": stem + ".prototxt", "weights": stem + ".caffemodel", "data": stem + "-data.npy",
             "label": stem + "-label.npy"}
    with open(files["net"], "w") as f:
        f.write(input_net_text(path, data_shape, label_shape))
    rng.set_seed(1)
    engine.Net(files["net"], caffe_pb2.TRAIN).save(files["weights"])
    rs = np.random.RandomState(0)
    np.save(files["data"], (rs.rand(*data_shape) * 255).astype(np.float32))
    np.save(files["label"], rs.randint(0, 2, label_shape).astype(np.float32))
    return files


def run_step(python, env, files, repeat, timeout=3600, solver="", warmup=1):
    import json
    import subprocess
    cmd = [python, STEP_SCRIPT, "--repeat", str(repeat), "--warmup", str(warmup)] + [
        a for k in ("net", "weights", "data", "label")
        for a in (f"--{k}", files[k])]
    if solver:
        cmd += ["--solver", solver]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} {STEP_SCRIPT} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _best_of(old, new):
    if old is None:
        return new
    return {k: (min(old[k], new[k]) if k.endswith("_s") else old[k]) for k in old}


def side_by_side(args):
    """Engine and real Caffe back to back per case, same files, same thread count, quiet and
    with one CPU-bound load process (started here, bounded, stopped after the pair)."""
    import subprocess
    import tempfile
    from caffeseg.jobs import allocator, real_caffe
    from caffeseg.jobs import threads as thread_policy
    found = real_caffe.find_real_caffe()
    if found is None:
        print("real Caffe not found (" + real_caffe.BUILD_HINT + "): engine figures only, no ratio")
    threads = args.threads or thread_policy.usable_cores()
    # the variables a runner starts with (jobs.scheduler): its threads and its allocator's policy
    policy = allocator.runner_environment(
        thread_policy.ThreadPlan("training", threads, thread_policy.usable_cores()).environment())
    base = {k: v for k, v in os.environ.items() if k not in policy}
    engine_env = dict(base, **policy)
    engine_env["PYTHONPATH"] = ROOT + os.pathsep + base.get("PYTHONPATH", "")
    caffe_env = dict(found.environment(base), **policy) if found else None
    print(f"side by side, {threads} thread(s) each ({', '.join(f'{k}={v}' for k, v in policy.items())}), "
          f"best of {args.rounds} rounds x {args.repeat} after {args.warmup} warm-up run(s); "
          f"real Caffe: {found.python if found else 'missing'} "
          f"{found.pythonpath if found else ''}")
    print("wall seconds per step (best); ratios engine/Caffe: wall f+b, wall fwd, and CPU-time f+b (the work")
    print("itself, which other processes' load hardly moves); 'cpu s' = CPU seconds of one f+b (engine, Caffe)")
    if args.solver:
        print(f"with --solver {args.solver}: one solver.step(1) (clear diffs, f+b, update), wall s of each backend"
              " and the CPU-time ratio")
    step_head = f" {'engine step':>11} {'caffe step':>10} {'cpu step':>8}" if args.solver else ""
    print(f"{'net':<12} {'input':<14} {'load':<7} {'engine fwd':>10} {'engine f+b':>10} {'caffe fwd':>10} "
          f"{'caffe f+b':>10} {'f+b ratio':>9} {'fwd ratio':>9} {'cpu f+b':>8} {'cpu s':>13}{step_head}  loadavg")
    with tempfile.TemporaryDirectory(prefix="engine-speed-") as folder:
        for net_name in args.nets:
            for channels in args.channels:
                for batch in args.batches:
                    files = prepare_case(folder, net_name, channels, batch, args.size)
                    for loaded in args.loads:
                        loader = None
                        if loaded == "busy":
                            loader = subprocess.Popen([sys.executable, "-c", LOAD_CODE % args.load_limit_s])
                        try:
                            before = load_average()
                            eng = caf = None
                            for rnd in range(args.rounds):  # alternating order; the best of the rounds
                                runs = [("engine", sys.executable, engine_env)]
                                if found:
                                    runs.append(("caffe", found.python or sys.executable, caffe_env))
                                for name, python, env in (runs if rnd % 2 == 0 else runs[::-1]):
                                    got = run_step(python, env, files, args.repeat, solver=args.solver,
                                                   warmup=args.warmup)
                                    if name == "engine":
                                        eng = _best_of(eng, got)
                                    else:
                                        caf = _best_of(caf, got)
                        finally:
                            if loader is not None:
                                loader.kill()
                                loader.wait()
                        shape = f"{batch}x{channels}x{args.size}x{args.size}"
                        cf = f"{caf['forward_s']:>10.3f} {caf['fwdbwd_s']:>10.3f}" if caf else f"{'-':>10} {'-':>10}"
                        ratios = (f"{eng['fwdbwd_s'] / caf['fwdbwd_s']:>8.2f}x {eng['forward_s'] / caf['forward_s']:>8.2f}x "
                                  f"{eng['fwdbwd_cpu_s'] / caf['fwdbwd_cpu_s']:>7.2f}x "
                                  f"{eng['fwdbwd_cpu_s']:>6.3f} {caf['fwdbwd_cpu_s']:>6.3f}"
                                  if caf else f"{'-':>9} {'-':>9} {'-':>8} {eng['fwdbwd_cpu_s']:>6.3f} {'-':>6}")
                        steps = ""
                        if args.solver:
                            steps = f" {eng['step_s']:>11.3f} " + (
                                f"{caf['step_s']:>10.3f} {eng['step_cpu_s'] / caf['step_cpu_s']:>7.2f}x" if caf
                                else f"{'-':>10} {'-':>8}")
                        print(f"{net_name:<12} {shape:<14} {loaded:<7} {eng['forward_s']:>10.3f} {eng['fwdbwd_s']:>10.3f} "
                              f"{cf} {ratios}{steps}  {before}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caffe", action="store_true",
                    help="engine and real Caffe side by side (subprocesses, same files and threads)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1], help="--caffe: batch sizes")
    ap.add_argument("--loads", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"],
                    help="--caffe: without / with one CPU-bound load process")
    ap.add_argument("--load-limit-s", type=float, default=3600.0,
                    help="--caffe: the load process ends by itself after this many seconds at the latest")
    ap.add_argument("--size", type=int, default=256, help="--caffe: input height and width")
    ap.add_argument("--solver", default="", help="--caffe: also time solver.step(1) with this solver type "
                    "(SGD, Nesterov, Adam, ...): a training iteration with its update")
    ap.add_argument("--rounds", type=int, default=2,
                    help="--caffe: engine/Caffe pairs per case, alternating order (best of all)")
    ap.add_argument("--nets", nargs="+", default=["fcn_alexnet"], choices=sorted(CAFFE_REFERENCE))
    ap.add_argument("--channels", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure (best is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="--caffe: untimed runs before each figure (4: the "
                    "engine's heap has stopped growing, bench/caffe_step.py)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--profile", action="store_true", help="also report the time per layer")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the Caffe figures are CPU figures)")
    ap.add_argument("--no-torch", action="store_true", help="skip the hand-written PyTorch baseline")
    args = ap.parse_args(argv)
    if args.caffe:
        return side_by_side(args)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":  # Caffe computes in full float32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}; best of {args.repeat}")
    print(f"{'net':<12} {'input':<12} {'implementation':<30} {'forward s':>10} {'fwd+bwd s':>10} {'vs Caffe fwd':>13} {'vs Caffe f+b':>13}")
    for net_name in args.nets:
        for channels in args.channels:
            rows, timings = bench_net(net_name, channels, args.repeat, args.profile, not args.no_torch)
            ref_f, ref_fb = CAFFE_REFERENCE[net_name]
            for label, f, fb in rows:
                print(f"{net_name:<12} {f'1x{channels}x256x256':<12} {label:<30} {f:>10.3f} {fb:>10.3f} "
                      f"{f / ref_f:>12.2f}x {fb / ref_fb:>12.2f}x")
            if channels == 1:
                print(f"{net_name:<12} {'1x1x256x256':<12} {'BVLC Caffe (CI reference)':<30} {ref_f:>10.3f} {ref_fb:>10.3f}")
            if len(rows) > 1 and rows[-1][0] == "hand-written PyTorch":
                print(f"{'':<25} engine / PyTorch: forward {rows[0][1] / rows[-1][1]:.2f}x, "
                      f"fwd+bwd {rows[0][2] / rows[-1][2]:.2f}x")
            if timings:
                print(f"  per layer ({net_name}, 1x{channels}x256x256, TRAIN forward+backward, seconds):")
                for name, t in sorted(timings.items(), key=lambda kv: -kv[1]):
                    if t >= 0.001:
                        print(f"    {name:<24} {t:8.4f}")


if __name__ == "__main__":
    main()
