"""The web's single-record inference, as a user gets it: latency of `caffeseg serve` (issue 20).

The target: warm single-record inference of FCN-AlexNet <= 0.3 s on the 2-core machine, and 50
concurrent requests served without errors (p50/p95).

Setup (in --data, a fresh temporary folder by default), through the `caffeseg` commands a user runs:
a phantom (--cases), a Sunnybrook dataset of it (gray, 256x256, --val-pct of the slices in
validation), an FCN-AlexNet model job, and a snapshot holding random weights of that job's deploy
net (`engine.Net(deploy).save(...)`: inference costs the same whatever the weights, and training
one would take minutes). Then `caffeseg serve` is started in a subprocess on a free port (waitress,
its thread policy, its worker thread: what `make serve` runs) and asked over HTTP, as the API's
users do (`POST /api/jobs/<id>/infer`):

  cold        the first request after the server is up (the deploy net is loaded);
  warm        --warm requests one after the other, each a record not asked before (a record
              already inferred under the same snapshot is answered from its stored result);
  concurrent  --concurrent requests started together from as many client threads (distinct
              records), each its own connection; errors = anything but 201 or a failed connection.

`--kind upload` sends one of the phantom's DICOM files per request instead (an upload is always
inferred: it decodes the DICOM, and the result is stored under a new token).

The reference, measured in the same run before the server starts: the bare `engine.Net.forward()`
of the same deploy net and snapshot on the same (preprocessed) record, in a process with the thread
plan the server gives itself (`jobs.threads`, role inference), median of --forwards passes. The
table gives each phase's p50/p95/max and p50 / forward (the server's overhead as a ratio), with
`uptime`'s load average before each phase (the box is usually shared: compare within one run).

    .venv/bin/python bench/inference_latency.py
    .venv/bin/python bench/inference_latency.py --kind upload --warm 20 --concurrent 50
    .venv/bin/python bench/inference_latency.py --data /tmp/lat      # the setup is kept and reused
    git archive OLD | tar -x -C /tmp/old && .venv/bin/python bench/inference_latency.py --checkout /tmp/old
"""
import argparse
import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffeseg.jobs import threads  # noqa: E402  (stdlib only: this process never loads torch)


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def caffeseg(data, *args):
    """Run one `caffeseg` command on ``data``; its standard output."""
    return subprocess.run([sys.executable, "-m", "caffeseg", "--data", data] + list(args), check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, cwd=ROOT).stdout


def job_named(data, name):
    return next(j for j in json.loads(caffeseg(data, "--json", "jobs")) if j["name"] == name)


# -- setup ------------------------------------------------------------------------------------------

SNAPSHOT_SCRIPT = """
import sys
from caffeseg import engine
net = engine.Net(sys.argv[1], engine.TEST)
net.save(sys.argv[2])
"""
DATASET_NAME, MODEL_NAME = "latency phantom", "latency fcn_alexnet"


def setup(data, cases, val_pct):
    """{model_id, job_dir, dataset_dir, keys (val records), dicoms} in ``data``, made once."""
    stamp = os.path.join(data, "bench-setup.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            return json.load(f)
    phantom = os.path.join(data, "phantom")
    caffeseg(data, "phantom", "--out", phantom, "--cases", str(cases))
    caffeseg(data, "dataset", "create", "--plugin", "sunnybrook",
             "--image-folder", os.path.join(phantom, "challenge_training"),
             "--contour-folder", os.path.join(phantom, "TrainingDataContours"),
             "--split", "slice", "--val-pct", str(val_pct), "--name", DATASET_NAME)
    dataset = job_named(data, DATASET_NAME)
    caffeseg(data, "model", "create", "--dataset", dataset["id"], "--network", "fcn_alexnet",
             "--epochs", "1", "--name", MODEL_NAME)
    model = job_named(data, MODEL_NAME)
    subprocess.run([sys.executable, "-c", SNAPSHOT_SCRIPT, os.path.join(model["dir"], "deploy.prototxt"),
                    os.path.join(model["dir"], "snapshot_iter_1.caffemodel")], check=True, cwd=ROOT)
    with open(os.path.join(dataset["dir"], "dataset.json")) as f:
        keys = [r["key"] for r in json.load(f)["records"]["val"]]
    dicoms = sorted(glob.glob(os.path.join(phantom, "challenge_training", "*", "*.dcm")))
    facts = {"model_id": model["id"], "job_dir": model["dir"], "dataset_dir": dataset["dir"],
             "keys": keys, "dicoms": dicoms}
    with open(stamp, "w") as f:
        json.dump(facts, f)
    return facts


# -- the reference: engine.Net.forward() alone ----------------------------------------------------

REFERENCE_SCRIPT = """
import json, sys, time
from caffeseg.jobs import infer as inf
import torch
job_dir, dataset_dir, key, passes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = inf.DeployModel.from_job(job_dir, backend="engine")
image, _ = inf.record_by_key(dataset_dir, key)
x = model.preprocess(image)
net = model.net
net.blobs[model.input_name].reshape(1, *x.shape)
net.reshape()
net.blobs[model.input_name].data[...] = x[None]
net.forward()  # warm-up
times = []
for _ in range(passes):
    start = time.perf_counter()
    net.forward()
    times.append(time.perf_counter() - start)
print(json.dumps({"times": times, "threads": torch.get_num_threads()}))
"""


def plan_environment():
    """This machine's environment with the thread plan `caffeseg serve` gives itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in threads.THREAD_VARIABLES and k not in threads.PASSIVE_WAIT}
    env.update(threads.plan("inference").environment())
    return env


def reference_forward(facts, passes):
    out = subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, facts["job_dir"], facts["dataset_dir"],
                          facts["keys"][0], str(passes)], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True, env=plan_environment(), cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- the server --------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data, port, log_path, checkout=ROOT):
    # the environment a user's shell gives `caffeseg serve`: no thread variables, the command
    # applies its own plan (jobs.threads) before torch loads
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_VARIABLES and k not in threads.PASSIVE_WAIT}
    log = open(log_path, "w")
    # run from the checkout's root: `python -m caffeseg` imports that checkout's package
    proc = subprocess.Popen([sys.executable, "-m", "caffeseg", "--data", data, "serve", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=checkout)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("caffeseg serve exited (%s); see %s" % (proc.returncode, log_path))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/jobs")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("caffeseg serve did not answer within 120 s; see %s" % log_path)


def _multipart(path):
    boundary = uuid.uuid4().hex
    with open(path, "rb") as f:
        content = f.read()
    body = ("--%s\r\nContent-Disposition: form-data; name=\"image\"; filename=\"%s\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" % (boundary, os.path.basename(path))).encode()
    body += content + ("\r\n--%s--\r\n" % boundary).encode()
    return body, "multipart/form-data; boundary=%s" % boundary


def infer_request(port, model_id, record=None, upload=None, timeout=300):
    """One POST /api/jobs/<id>/infer on its own connection: (seconds, error or None)."""
    if upload:
        body, content_type = _multipart(upload)
    else:
        body, content_type = json.dumps({"record": record}).encode(), "application/json"
    start = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("POST", "/api/jobs/%s/infer" % model_id, body=body,
                     headers={"Content-Type": content_type, "X-Requested-With": "bench"})
        response = conn.getresponse()
        text = response.read()
        conn.close()
        error = None if response.status == 201 else "%d %s" % (response.status, text[:200].decode("utf-8", "replace"))
    except OSError as exc:
        error = "%s: %s" % (type(exc).__name__, exc)
    return time.perf_counter() - start, error


class Inputs(object):
    """Hands out request inputs: each record once (a repeated record would be answered from its
    stored result), DICOM files round robin (every upload is inferred)."""

    def __init__(self, kind, facts):
        self.kind, self.facts, self.next = kind, facts, 0
        self.lock = threading.Lock()

    def take(self):
        with self.lock:
            i, self.next = self.next, self.next + 1
        if self.kind == "record":
            keys = self.facts["keys"]
            if i >= len(keys):
                raise SystemExit("the validation set has %d records, the bench needs more (raise --cases)" % len(keys))
            return {"record": keys[i]}
        dicoms = self.facts["dicoms"]
        return {"upload": dicoms[i % len(dicoms)]}


def run_phase(name, port, model_id, inputs, count, concurrent):
    load = load_average()
    results = []
    if concurrent:
        asks = [inputs.take() for _ in range(count)]
        barrier = threading.Barrier(count)
        lock = threading.Lock()

        def client(ask):
            barrier.wait()
            r = infer_request(port, model_id, **ask)
            with lock:
                results.append(r)
        workers = [threading.Thread(target=client, args=(a,)) for a in asks]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - start
    else:
        start = time.perf_counter()
        for _ in range(count):
            results.append(infer_request(port, model_id, **inputs.take()))
        wall = time.perf_counter() - start
    times = [t for t, _ in results]
    errors = [e for _, e in results if e]
    return {"phase": name, "requests": count, "errors": len(errors), "error_examples": errors[:3],
            "p50": percentile(times, 0.5), "p95": percentile(times, 0.95), "max": max(times),
            "wall": wall, "load": load}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data folder, its setup kept and reused (default: a temporary one)")
    ap.add_argument("--kind", choices=["record", "upload"], default="record")
    ap.add_argument("--warm", type=int, default=20, help="sequential warm requests")
    ap.add_argument("--concurrent", type=int, default=50, help="requests started together")
    ap.add_argument("--forwards", type=int, default=10, help="bare forward passes of the reference")
    ap.add_argument("--cases", type=int, default=10, help="phantom cases (18 contoured slices each)")
    ap.add_argument("--val-pct", type=int, default=50)
    ap.add_argument("--checkout", default=ROOT,
                    help="serve from this checkout of caffeseg instead (e.g. `git archive` of an older commit "
                         "extracted somewhere), to compare before and after a change on the same setup")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.checkout, "caffeseg", "__init__.py")):
        raise SystemExit("--checkout %s: not a caffeseg checkout (no caffeseg/__init__.py)" % args.checkout)
    if min(args.warm, args.concurrent, args.forwards, args.cases) < 1 or not 1 <= args.val_pct <= 99:
        raise SystemExit("--warm, --concurrent, --forwards and --cases must be >= 1, --val-pct 1-99")
    temporary = None
    data = args.data
    if not data:
        temporary = tempfile.TemporaryDirectory(prefix="caffeseg-latency-")
        data = temporary.name
    data = os.path.abspath(data)
    os.makedirs(data, exist_ok=True)
    facts = setup(data, args.cases, args.val_pct)
    # a kept setup is asked again: the stored results of its records must not answer this run
    shutil.rmtree(os.path.join(facts["job_dir"], "inference"), ignore_errors=True)
    print("inference latency bench: FCN-AlexNet 1x1x256x256 gray, %s requests, %s, %d usable cores, "
          "inference threads %d, server from %s" % (args.kind, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                    threads.usable_cores(), threads.plan("inference").threads,
                                                    os.path.abspath(args.checkout)))
    print("load average before the reference: %s" % load_average())
    ref = reference_forward(facts, args.forwards)
    forward = percentile(ref["times"], 0.5)
    print("reference engine.Net.forward(): p50 %.3f s, min %.3f s (%d passes, %d torch threads)"
          % (forward, min(ref["times"]), len(ref["times"]), ref["threads"]))
    port = free_port()
    log_path = os.path.join(data, "serve.log")
    server = start_server(data, port, log_path, os.path.abspath(args.checkout))
    rows = []
    try:
        inputs = Inputs(args.kind, facts)
        rows.append(run_phase("cold", port, facts["model_id"], inputs, 1, False))
        rows.append(run_phase("warm", port, facts["model_id"], inputs, args.warm, False))
        rows.append(run_phase("concurrent", port, facts["model_id"], inputs, args.concurrent, True))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print()
    print("| phase | requests | errors | p50 s | p95 s | max s | wall s | p50 / forward | load before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    print("| bare forward (reference) | %d | 0 | %.3f | %.3f | %.3f | | 1.00 | |"
          % (len(ref["times"]), forward, percentile(ref["times"], 0.95), max(ref["times"])))
    for r in rows:
        print("| %s | %d | %d | %.3f | %.3f | %.3f | %.2f | %.2f | %s |"
              % (r["phase"], r["requests"], r["errors"], r["p50"], r["p95"], r["max"], r["wall"],
                 r["p50"] / forward, r["load"]))
    for r in rows:
        for e in r["error_examples"]:
            print("error (%s): %s" % (r["phase"], e))
    print("load average after: %s" % load_average())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": ref, "rows": rows, "kind": args.kind}, f, indent=1)
    if temporary is not None:
        temporary.cleanup()
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
