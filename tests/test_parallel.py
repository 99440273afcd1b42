"""One job on several processes (engine/parallel.py, jobs/ranks.py), on the CPU with gloo.

Caffe's rule (parallel.cpp: ncclAllReduce + scal(1/N) in on_gradients_ready, before
ApplyUpdate; DataLayer::Skip keeps stream record k on rank k % N): N ranks with iter_size k
take the same steps as one process with iter_size N*k over the same records. The tests check
that, the sharding, the weight broadcast, and that the runner's ranks train, abort and resume
as one job whose files only rank 0 writes.
"""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from caffeseg import engine
from caffeseg.engine.datum import array_to_datum
from caffeseg.engine.lmdb_io import LmdbWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = 12

NET = textwrap.dedent("""
    name: "tiny"
    layer { name: "data" type: "Data" top: "data" top: "index"
            data_param { source: "%(db)s/features" backend: LMDB batch_size: 2 } }
    layer { name: "label" type: "Data" top: "label"
            data_param { source: "%(db)s/labels" backend: LMDB batch_size: 2 } }
    layer { name: "silence" type: "Silence" bottom: "index" }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                                bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
    layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
            convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
""")

SOLVER = textwrap.dedent("""
    net: "%(net)s"
    type: "%(type)s"
    base_lr: 0.05
    momentum: 0.9
    momentum2: 0.999
    weight_decay: 0.01
    lr_policy: "step"
    gamma: 0.5
    stepsize: 3
    iter_size: %(iter_size)d
    max_iter: 100
    random_seed: %(seed)d
    snapshot_prefix: "%(prefix)s"
""")

# One rank (or the single process): trains ITERS iterations, writes its losses and weights.
WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, %(root)r)
    from caffeseg import engine as caffe
    solver_path, out, world, rank, uid, iters = sys.argv[1:7]
    world, rank, iters = int(world), int(rank), int(iters)
    if world > 1:
        caffe.set_solver_count(world); caffe.set_solver_rank(rank); caffe.set_multiprocess(True)
    solver = caffe.get_solver(solver_path)
    losses = []
    solver.add_iteration_listener(lambda info: losses.append([info.loss, info.smoothed_loss]))
    if world > 1:
        nccl = caffe.NCCL(solver, uid.encode())
        nccl.bcast()
        solver.add_callback(nccl)
    solver.step(iters)
    params = {name: [b.data.tolist() for b in blobs] for name, blobs in solver.net.params.items()}
    json.dump({"losses": losses, "params": params, "test_nets": len(solver.test_nets)}, open(out, "w"))
""") % {"root": ROOT}


def write_db(folder):
    rs = np.random.RandomState(7)
    with LmdbWriter(os.path.join(folder, "features")) as features, LmdbWriter(os.path.join(folder, "labels")) as labels:
        for i in range(RECORDS):
            image = rs.rand(1, 5, 5).astype(np.float32) * 4
            mask = (image[0] > 2).astype(np.uint8)[None]
            # the Datum label is the record's index: the sharding test reads it back
            features.put("%04d" % i, array_to_datum(image, label=i).SerializeToString())
            labels.put("%04d" % i, array_to_datum(mask).SerializeToString())
    return folder


def solver_file(tmp_path, name, iter_size, seed, solver_type="SGD"):
    db = str(tmp_path / "db")
    if not os.path.isdir(db):
        write_db(db)
    net = tmp_path / "net.prototxt"
    net.write_text(NET % {"db": db})
    path = tmp_path / ("%s.prototxt" % name)
    path.write_text(SOLVER % {"net": net, "type": solver_type, "iter_size": iter_size, "seed": seed,
                              "prefix": tmp_path / name})
    return str(path)


def run_ranks(tmp_path, solvers, iters):
    """Run one worker per solver file (rank = index) at once; their JSON results."""
    world = len(solvers)
    uid = engine.NCCL.new_uid().decode() if world > 1 else ""
    outs = [str(tmp_path / ("out-%d-%d.json" % (world, r))) for r in range(world)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, s, o, str(world), str(r), uid, str(iters)], env=env)
             for r, (s, o) in enumerate(zip(solvers, outs))]
    for p in procs:
        assert p.wait(timeout=240) == 0
    return [json.load(open(o)) for o in outs]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("solver_type, rank_iter_size", [("SGD", 1), ("Adam", 2)])
def test_two_ranks_follow_one_process_with_twice_the_iter_size(tmp_path, solver_type, rank_iter_size):
    iters = 7  # the 24-record stream wraps the 12-record database, and the step policy changes the rate
    [single] = run_ranks(tmp_path, [solver_file(tmp_path, "single", 2 * rank_iter_size, 3, solver_type)], iters)
    # Rank 1 fills its net from another seed: the broadcast must give it rank 0's weights.
    ranks = run_ranks(tmp_path, [solver_file(tmp_path, "rank%d" % r, rank_iter_size, 3 + 10 * r, solver_type)
                                 for r in range(2)], iters)
    single_loss = np.array(single["losses"])
    for result in ranks:
        assert np.allclose(np.array(result["losses"]), single_loss, rtol=1e-5, atol=1e-6)
        for name, blobs in single["params"].items():
            for want, got in zip(blobs, result["params"][name]):
                assert np.allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-6), name
    assert len(set(np.round(single_loss[:, 0], 6))) == iters  # the losses do move
    for name, blobs in ranks[0]["params"].items():  # the ranks stay identical
        for a, b in zip(blobs, ranks[1]["params"][name]):
            assert np.array_equal(np.array(a), np.array(b)), name


def test_train_data_is_sharded_by_rank_and_test_data_is_not(tmp_path):
    db = write_db(str(tmp_path / "db"))
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(NET % {"db": db})

    def indices(phase, rank, batches=4):
        engine.set_solver_count(2)
        engine.set_solver_rank(rank)
        try:
            net = engine.Net(str(net_path), phase)
            seen = []
            for _ in range(batches):
                net.forward()
                seen += [int(v) for v in net.blobs["index"].data]
            return seen
        finally:
            engine.set_solver_count(1)
            engine.set_solver_rank(0)

    assert indices(engine.TRAIN, 0) == [0, 2, 4, 6, 8, 10, 0, 2]
    assert indices(engine.TRAIN, 1) == [1, 3, 5, 7, 9, 11, 1, 3]
    assert indices(engine.TEST, 1) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_an_odd_database_is_interleaved_over_the_wrapping_stream(tmp_path):
    # 12 records, 5 ranks: rank 4 keeps stream records 4, 9, 14 (= record 2), 19 (= 7), ...
    db = write_db(str(tmp_path / "db"))
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(NET % {"db": db})
    engine.set_solver_count(5)
    engine.set_solver_rank(4)
    try:
        net = engine.Net(str(net_path), engine.TRAIN)
        net.forward()
        net.forward()
        assert [int(v) for v in net.blobs["index"].data] == [2, 7]
    finally:
        engine.set_solver_count(1)
        engine.set_solver_rank(0)


def test_solver_of_another_rank_builds_no_test_net(tmp_path):
    path = solver_file(tmp_path, "s", 1, 1)
    with open(path, "a") as f:
        f.write('test_net: "%s"\ntest_iter: 1\ntest_interval: 1000\n' % (tmp_path / "net.prototxt"))
    engine.set_solver_count(2)
    try:
        engine.set_solver_rank(1)
        assert engine.get_solver(path).test_nets == []
        engine.set_solver_rank(0)
        assert len(engine.get_solver(path).test_nets) == 1
    finally:
        engine.set_solver_count(1)
        engine.set_solver_rank(0)


def test_joining_without_a_count_or_an_address_is_refused(monkeypatch):
    from caffeseg.engine import parallel
    import torch
    with pytest.raises(parallel.ParallelError, match="set_solver_count"):
        parallel.join(torch.device("cpu"), b"")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(parallel.ParallelError, match="MASTER_ADDR, MASTER_PORT"):
        parallel.join(torch.device("cpu"), b"", world_size=2, rank=0)


# -- the runner: one job, two processes ------------------------------------------------------------

RUNNER = os.path.join(ROOT, "jobs", "runner.py")


def tiny_job(tmp_path, name, **settings):
    from tests.test_jobs_e2e_engine import engine_job
    folder = tmp_path / name
    folder.mkdir()
    _, _, job = engine_job(folder, **settings)
    return job["dir"]


def run_runner(job_dir, *args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, RUNNER, job_dir, "--backend", "engine"] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=env)


def metric_lines(job_dir):
    with open(os.path.join(job_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_weights(job_dir, iteration):
    from caffeseg.engine.caffemodel import layer_arrays, read_caffemodel
    return layer_arrays(read_caffemodel(os.path.join(job_dir, "snapshot_iter_%d.caffemodel" % iteration)))


def peers_of(job_dir):
    """Processes still running with the job folder on their command line."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if job_dir.encode() in f.read() and int(pid) != os.getpid():
                        found.append(int(pid))
            except OSError:
                continue
    return found


@pytest.mark.timeout(400)
def test_runner_with_two_cpu_ranks_trains_as_one_process_with_twice_the_iter_size(tmp_path):
    ranked = tiny_job(tmp_path, "ranked", epochs=2, random_seed=1)
    single = tiny_job(tmp_path, "single", epochs=2, random_seed=1)
    solver_path = os.path.join(single, "solver.prototxt")
    text = open(solver_path).read()
    assert "iter_size: 1\n" in text
    open(solver_path, "w").write(text.replace("iter_size: 1\n", "iter_size: 2\n"))
    done = run_runner(ranked, "--cpu-ranks", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert run_runner(single).returncode == 0
    lines = metric_lines(ranked)
    train = [l["iter"] for l in lines if l["phase"] == "train"]
    max_iter = json.load(open(os.path.join(ranked, "runner_status.json")))["max_iter"]
    assert train == list(range(1, max_iter + 1))  # written once, by rank 0
    assert [l["iter"] for l in lines if l["phase"] == "val"] == [l["iter"] for l in metric_lines(single)
                                                               if l["phase"] == "val"]
    assert json.load(open(os.path.join(ranked, "runner_status.json")))["state"] == "done"
    assert "[rank 1]" not in done.stdout + done.stderr  # the peer writes no log lines
    want, got = final_weights(single, max_iter), final_weights(ranked, max_iter)
    assert want.keys() == got.keys()
    for name in want:
        for a, b in zip(want[name], got[name]):
            assert np.allclose(a, b, rtol=1e-4, atol=1e-6), name
    # 2 ranks × batch 2 per iteration, as the single process's iter_size 2
    assert {l["iter"]: l["throughput"] > 0 for l in lines if l["phase"] == "train"}
    assert peers_of(ranked) == []


@pytest.mark.timeout(400)
def test_two_rank_job_aborts_together_and_resumes(tmp_path):
    job_dir = tiny_job(tmp_path, "job", epochs=200, snapshot_interval=2, val_interval=50, random_seed=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, RUNNER, job_dir, "--backend", "engine", "--cpu-ranks", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 200
    while time.time() < deadline and not any(n.endswith(".solverstate") for n in os.listdir(job_dir)):
        time.sleep(0.05)
    assert any(n.endswith(".solverstate") for n in os.listdir(job_dir)), proc.stdout.read() if proc.poll() else ""
    proc.send_signal(signal.SIGTERM)  # what Scheduler.abort sends the job's pid (rank 0)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    status = json.load(open(os.path.join(job_dir, "runner_status.json")))
    assert status["state"] == "aborted", status
    stopped = status["iter"]
    assert stopped < json.load(open(os.path.join(job_dir, "runner_status.json")))["max_iter"]
    time.sleep(0.5)
    assert peers_of(job_dir) == [], "a rank outlived the abort"
    # Shorten the job so the resumed run ends soon: 4 iterations past the newest solverstate.
    from caffeseg.jobs.runner import latest_solverstate, snapshot_iteration
    resume_at = snapshot_iteration(latest_solverstate(job_dir))
    solver_path = os.path.join(job_dir, "solver.prototxt")
    text = open(solver_path).read()
    open(solver_path, "w").write(re.sub(r"max_iter: \d+", "max_iter: %d" % (resume_at + 4), text))
    resumed = run_runner(job_dir, "--cpu-ranks", "2", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from snapshot_iter_%d.solverstate" % resume_at in resumed.stdout
    train = [l["iter"] for l in metric_lines(job_dir) if l["phase"] == "train"]
    assert train == list(range(1, resume_at + 5))  # no gap, no duplicate
    assert peers_of(job_dir) == []


def test_pycaffe_backend_refuses_several_devices(tmp_path):
    from caffeseg.jobs import ranks

    class RealPycaffe:  # what the runner sees under real Caffe: not the engine
        __name__ = "caffe"

    with pytest.raises(ranks.RanksError, match="one device"):
        ranks.Ranks(0, 2).configure(RealPycaffe())


def test_gpu_lists_are_checked():
    from caffeseg.jobs import ranks
    assert ranks.parse_gpus("0, 2") == [0, 2]
    with pytest.raises(ranks.RanksError, match="twice"):
        ranks.parse_gpus("1,1")
    with pytest.raises(ranks.RanksError, match="'x'"):
        ranks.parse_gpus("0,x")
    place = ranks.from_environment([3, 5], env={"RANK": "1", "WORLD_SIZE": "2"})
    assert (place.rank, place.world, place.device, place.writes) == (1, 2, 5, False)
    with pytest.raises(ranks.RanksError, match="do not fit"):
        ranks.from_environment([3, 5], env={"RANK": "2", "WORLD_SIZE": "2"})
