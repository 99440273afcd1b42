"""A training's speed while the web answers: the thread policy (jobs/threads.py) against none.

For each variant (which environment the training and the inference processes start with), back
to back on the same machine:

  quiet   a training process alone: FCN-AlexNet TRAIN forward+backward steps through engine.Net
          (Input layers, batch 1, --size²), for --seconds;
  loaded  the same, while an inference process (the web's work: deploy forward passes of one
          record, back to back, the heaviest the web can ask) runs beside it and, with
          --with-dataset, a dataset build too (Sunnybrook phantom datasets built back to back
          by jobs.dataset, as the worker builds them); the bench starts that load itself and
          stops it afterwards.

It prints steps/s quiet and loaded, their ratio (the target: loaded >= 70 % of quiet), the
inference latency p50/p95 during the loaded run, and `uptime`'s load average before each run
(the machine is usually shared: compare ratios from the same run). Rounds alternate the variants.

    .venv/bin/python bench/thread_policy.py                        # default, 2 threads passive, policy
    .venv/bin/python bench/thread_policy.py --seconds 20 --rounds 2 --size 256
    .venv/bin/python bench/thread_policy.py --variants default policy

Variants:
  default       no variables: torch's own thread count (the cores) and OpenMP's spinning wait
  all-passive   training and inference with every core, passive wait
  policy        jobs.threads.plan: training / inference threads from the cores, passive wait
  policy-nice   the same with the inference process at niceness 10 (a candidate, not adopted)

The dataset build runs with the dataset role's threads and, in the policy variants, lowers its
priority as the worker's build thread does (jobs.threads.lower_this_threads_priority);
``policy-dataset-nice0`` is the policy with the build left at niceness 0, for comparison.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffeseg.jobs import threads  # noqa: E402  (stdlib only: the parent never loads torch)

NET = os.path.join(ROOT, "prototxt", "fcn_alexnet.prototxt")


def variant_environments(name, cores):
    """(training env, inference env): the variables each process gets on top of the parent's
    environment (whose own OMP/MKL/OPENBLAS/KMP variables are removed first)."""
    if name == "default":
        return {}, {}
    if name == "all-passive":
        every = threads.ThreadPlan("training", cores, cores).environment()
        return every, dict(every)
    if name in ("policy", "policy-nice", "policy-dataset-nice0"):
        return (threads.plan("training", cores=cores).environment(),
                threads.plan("inference", cores=cores).environment())
    raise SystemExit("unknown variant %s" % name)


def dataset_environment(name, cores):
    """The dataset build's variables: the policy's dataset plan, or none for the other variants."""
    return threads.plan("dataset", cores=cores).environment() if name.startswith("policy") else {}


INFERENCE_NICE = {"policy-nice": 10}  # the inference process's niceness in that variant
# whether the build lowers its priority as the product's build thread does
DATASET_LOWERS_PRIORITY = {"policy": True, "policy-nice": True}
VARIANTS = ["default", "all-passive", "policy", "policy-nice", "policy-dataset-nice0"]


def child_env(extra):
    env = {k: v for k, v in os.environ.items()
           if k not in threads.THREAD_VARIABLES and k not in threads.PASSIVE_WAIT and k != threads.OVERRIDE_ENV}
    env.update(extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- the two child roles ---------------------------------------------------------------------------

def _input_net(size, phase_stage):
    """FCN-AlexNet with Input blobs data (1×1×size²) and label in place of its Data layers."""
    from caffeseg.engine.prototxt import format_message, read_net
    from caffeseg.engine.proto import caffe_pb2
    source = read_net(NET)
    param = caffe_pb2.NetParameter(name=source.name)
    for name, channels in (("data", 1), ("label", 1)):
        layer = param.layer.add(name=name, type="Input")
        layer.top.append(name)
        layer.input_param.shape.add().dim.extend([1, channels, size, size])
    for lp in source.layer:
        if lp.type in ("Data", "Accuracy", "Python"):
            continue
        if any(r.stage and phase_stage not in r.stage for r in lp.include):
            continue
        if any(phase_stage in r.stage for r in lp.exclude):
            continue
        copy = param.layer.add()
        copy.CopyFrom(lp)
        del copy.include[:]
        del copy.exclude[:]
    handle = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
    handle.write(format_message(param))
    handle.close()
    return handle.name


def run_child(role, size, seconds):
    import numpy as np
    import torch
    from caffeseg import engine
    path = _input_net(size, "train" if role == "train" else "deploy")
    net = engine.Net(path, engine.TRAIN if role == "train" else engine.TEST)
    os.unlink(path)
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.rand(*net.blobs["data"].data.shape) * 255
    if "label" in net.blobs:
        net.blobs["label"].data[...] = rs.randint(0, 2, net.blobs["label"].data.shape)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))

    def once():
        if role == "train":
            net.forward()
            net.backward()
        else:
            with torch.no_grad():
                net.forward()
    once()  # warm-up
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    times, end = [], time.time() + seconds
    while not stop["now"] and (role != "train" or time.time() < end):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times}), flush=True)


def run_dataset_child(lower_priority):
    """Build a small Sunnybrook phantom dataset over and over until SIGTERM; print build times."""
    from caffeseg.jobs.dataset import build_dataset
    from caffeseg.plugin.sunnybrook import SunnybrookPlugin, phantom
    import shutil
    if lower_priority:
        threads.lower_this_threads_priority()
    work = tempfile.mkdtemp(prefix="caffeseg-bench-policy-ds-")
    release = os.path.join(work, "release")
    phantom.generate(release, cases=2, seed=0)
    form = {"image_folder": os.path.join(release, "challenge_training"),
            "contour_folder": os.path.join(release, "TrainingDataContours")}
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    print(json.dumps({"ready": True, "threads": threads.plan("dataset").threads}), flush=True)
    times, n = [], 0
    while not stop["now"]:
        out = os.path.join(work, "ds%d" % n)
        start = time.perf_counter()
        build_dataset(SunnybrookPlugin(), form, out)
        times.append(time.perf_counter() - start)
        shutil.rmtree(out)
        n += 1
    shutil.rmtree(work)
    print(json.dumps({"times": times}), flush=True)


# -- the parent ------------------------------------------------------------------------------------

def _start(role, env, size, seconds, nice=0, extra=()):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", role, "--size", str(size),
                             "--seconds", str(seconds)] + list(extra), env=child_env(env), stdout=subprocess.PIPE,
                            universal_newlines=True, preexec_fn=(lambda: os.nice(nice)) if nice else None)


def _ready(proc):
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("a bench child failed to start (see its error above)")
    return json.loads(line)


def _times(proc):
    out, _ = proc.communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1])["times"]


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def measure(variant, cores, size, seconds, with_load, with_dataset=False):
    train_env, infer_env = variant_environments(variant, cores)
    load = load_average()
    loader = builder = None
    if with_load:
        loader = _start("infer", infer_env, size, 0, nice=INFERENCE_NICE.get(variant, 0))
        infer_threads = _ready(loader)["threads"]
    if with_load and with_dataset:
        lower = ["--lower-priority"] if DATASET_LOWERS_PRIORITY.get(variant) else []
        builder = _start("dataset", dataset_environment(variant, cores), size, 0, extra=lower)
        _ready(builder)
    trainer = _start("train", train_env, size, seconds)
    train_threads = _ready(trainer)["threads"]
    steps = _times(trainer)
    result = {"variant": variant, "loaded": with_load, "load_before": load, "train_threads": train_threads,
              "steps": len(steps), "steps_per_s": len(steps) / sum(steps) if steps else 0.0,
              "median_step_s": percentile(steps, 0.5)}
    if loader is not None:
        loader.send_signal(signal.SIGTERM)
        served = _times(loader)
        result.update(infer_threads=infer_threads, infer_p50_s=percentile(served, 0.5),
                      infer_p95_s=percentile(served, 0.95), infer_answers=len(served))
    if builder is not None:
        builder.send_signal(signal.SIGTERM)
        built = _times(builder)
        result.update(datasets_built=len(built), dataset_median_s=percentile(built, 0.5))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["default", "all-passive", "policy"], choices=VARIANTS)
    ap.add_argument("--with-dataset", action="store_true", help="a dataset build beside the inference")
    ap.add_argument("--seconds", type=float, default=15.0, help="training time per measurement")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cores", type=int, default=0, help="cores the policy plans for (0 = this process's)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--child", choices=["train", "infer", "dataset"], help=argparse.SUPPRESS)
    ap.add_argument("--lower-priority", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "dataset":
        return run_dataset_child(args.lower_priority)
    if args.child:
        return run_child(args.child, args.size, args.seconds)
    cores = args.cores or threads.usable_cores()
    print("thread policy bench: FCN-AlexNet 1x1x%d², %d usable cores, %.0f s per measurement, %s"
          % (args.size, cores, args.seconds, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    print("loaded = inference%s beside the training" % (" + dataset build" if args.with_dataset else ""))
    print("%-20s %5s %7s %13s %11s %9s %8s %10s %10s %9s %-16s" % (
        "variant", "round", "threads", "quiet step/s", "loaded st/s", "loaded/q", "inf thr",
        "inf p50 s", "inf p95 s", "ds med s", "load (quiet;loaded)"))
    rows = []
    for rnd in range(args.rounds):
        for variant in args.variants:
            quiet = measure(variant, cores, args.size, args.seconds, False)
            loaded = measure(variant, cores, args.size, args.seconds, True, args.with_dataset)
            rows += [quiet, loaded]
            ratio = loaded["steps_per_s"] / quiet["steps_per_s"] if quiet["steps_per_s"] else float("nan")
            print("%-20s %5d %7d %13.3f %11.3f %8.0f%% %8d %10.3f %10.3f %9s %s; %s" % (
                variant, rnd + 1, quiet["train_threads"], quiet["steps_per_s"], loaded["steps_per_s"],
                100 * ratio, loaded["infer_threads"], loaded["infer_p50_s"], loaded["infer_p95_s"],
                "%.2f" % loaded["dataset_median_s"] if "dataset_median_s" in loaded else "-",
                quiet["load_before"], loaded["load_before"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
