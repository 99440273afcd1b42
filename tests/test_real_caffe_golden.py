"""The golden vectors of tests/golden (layers, nets, data layers, solver traces and snapshots) are
reproduced by the real Caffe `make caffe` builds.

A control for the golden files themselves (BVLC Caffe at 9b891540, this machine's compiler and
OpenBLAS) and the proof that they can be regenerated from the project:
``tests/real_caffe/pycaffe_tasks.py golden OUT CASE...`` writes the arrays Caffe computes from
each case's inputs, weights and top diffs. Compared at the golden tolerance (1e-4 of each
array's scale), as the engine is. Skips when real Caffe is not built (`make caffe`).
"""
import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import GOLDEN_DIR, assert_close_to_caffe, golden_case_names, load_golden
from tests.real_caffe_helpers import real_caffe, run_task

CASES = [("layers", n) for n in golden_case_names("layers")] + [("nets", n) for n in golden_case_names("nets")]


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory):
    """{case name: arrays real Caffe computed}, all cases in one Caffe process."""
    real_caffe()
    out = tmp_path_factory.mktemp("real-golden")
    copies = tmp_path_factory.mktemp("cases")
    folders = []
    for kind, name in CASES:  # copies: Caffe may write beside a case (bytecode, LMDB locks)
        folders.append(shutil.copytree(os.path.join(GOLDEN_DIR, kind, name), str(copies / name)))
    # The golden files were made with OpenBLAS on 2 threads: its sums depend on the thread count,
    # and the gray FCN-AlexNet case's float32 LRN amplifies that past 1e-4 (1 thread: 0.04 at norm1).
    report = run_task("golden", out, *folders, timeout=900, PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="2")
    return out, report["failed"]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("kind,name", CASES, ids=["%s/%s" % c for c in CASES])
def test_real_caffe_reproduces_golden_case(recomputed, kind, name):
    out, failed = recomputed
    assert name not in failed, "real Caffe could not run %s: %s" % (name, failed.get(name))
    case = load_golden(kind, name)
    with np.load(os.path.join(str(out), name + ".npz")) as got:
        arrays = {k: got[k] for k in got.files}
    compared = 0
    for prefix in ("blob", "param_after", "diff", "pgrad", "again"):
        for key, expected in case.keys(prefix).items():
            full = "%s:%s" % (prefix, key)
            assert full in arrays, "%s: real Caffe gave no %s" % (name, full)
            assert_close_to_caffe(arrays[full], expected, "%s %s" % (name, full))
            compared += 1
    for key, expected in case.keys("shape").items():
        assert tuple(arrays["shape:" + key]) == tuple(int(d) for d in expected)
        compared += 1
    # the same blobs as the golden run, no more, no fewer
    assert sorted(k[5:] for k in arrays if k.startswith("blob:")) == \
        sorted(list(case.keys("blob")) + list(case.keys("shape")))
    assert compared > 0


DATA_CASES = ["hdf5_data", "image_data", "lmdb_transform", "memory_data", "window_data"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", DATA_CASES)
def test_real_caffe_reproduces_the_golden_data_layer_batches(tmp_path, name):
    """Data, HDF5Data, ImageData, MemoryData and WindowData: the batches of successive forwards
    (LMDB records exactly; decoded and resized images at the golden tolerance)."""
    real_caffe()
    case = shutil.copytree(os.path.join(GOLDEN_DIR, "data", name), str(tmp_path / "case"))
    expected = np.load(os.path.join(case, "expected.npz"))
    info = {}
    if os.path.isfile(os.path.join(case, "case.json")):
        with open(os.path.join(case, "case.json")) as f:
            info = json.load(f)
    forwards = int(info.get("forwards", 4))
    args = ["forward", "net.prototxt", str(tmp_path / "out.npz"), "--forwards", forwards]
    if name == "memory_data":
        args += ["--memory-arrays", os.path.join(case, "expected.npz")]
    run_task(*args, cwd=case)
    got = np.load(str(tmp_path / "out.npz"))
    keys = [k for k in expected.files if k.startswith("batch:")]
    assert len(keys) >= 2 * forwards
    for key in keys:
        if name == "lmdb_transform":
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        else:
            assert_close_to_caffe(got[key], expected[key], "%s %s" % (name, key))


@pytest.mark.timeout(300)
def test_real_caffe_writes_the_golden_hdf5_output(tmp_path):
    import h5py
    real_caffe()
    case = shutil.copytree(os.path.join(GOLDEN_DIR, "data", "hdf5_output"), str(tmp_path / "case"))
    expected = np.load(os.path.join(case, "expected.npz"))
    inputs = {k[len("input:"):]: expected[k] for k in expected.files if k.startswith("input:")}
    np.savez(str(tmp_path / "in.npz"), **inputs)
    if os.path.exists(os.path.join(case, "out.h5")):
        os.unlink(os.path.join(case, "out.h5"))
    run_task("forward", "net.prototxt", str(tmp_path / "out.npz"), "--inputs", str(tmp_path / "in.npz"), cwd=case)
    got = np.load(str(tmp_path / "out.npz"))
    for key in (k for k in expected.files if k.startswith("batch:")):
        assert_close_to_caffe(got[key], expected[key], "hdf5_output " + key)
    with h5py.File(os.path.join(case, "out.h5"), "r") as written:
        for key in (k for k in expected.files if k.startswith("file:out.h5:")):
            dataset = key.split(":")[-1]
            assert written[dataset].dtype == np.float32
            np.testing.assert_array_equal(written[dataset][...], expected[key], err_msg=key)


SOLVER_CASES = sorted(c for c in os.listdir(os.path.join(GOLDEN_DIR, "solvers"))
                      if os.path.isfile(os.path.join(GOLDEN_DIR, "solvers", c, "trace.npz")))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SOLVER_CASES)
def test_real_caffe_reproduces_the_golden_solver_trace(tmp_path, name):
    """Each step's parameters and loss, then the snapshot (.caffemodel and .solverstate)."""
    from caffeseg.engine.blobproto import blobproto_to_array
    from caffeseg.engine.caffemodel import read_caffemodel, read_solverstate
    real_caffe()
    golden = os.path.join(GOLDEN_DIR, "solvers", name)
    case = shutil.copytree(golden, str(tmp_path / "case"))
    run_task("solver", case, str(tmp_path / "out.npz"))
    got = np.load(str(tmp_path / "out.npz"))
    trace = np.load(os.path.join(golden, "trace.npz"))
    afters = [k for k in trace.files if k.startswith("after:")]
    assert afters and sorted(k for k in got.files if k.startswith("after:")) == sorted(afters)
    for key in afters:
        assert_close_to_caffe(got[key], trace[key], "%s %s" % (name, key))
    assert_close_to_caffe(got["loss"], trace["loss"], "%s loss" % name)
    snaps = sorted(f for f in os.listdir(golden) if f.startswith("snap_iter_"))
    assert len(snaps) == 2
    for snap in snaps:
        assert os.path.getmtime(os.path.join(case, snap)) > os.path.getmtime(os.path.join(case, "trace.npz"))
    model = [f for f in snaps if f.endswith(".caffemodel")][0]
    ours = {l.name: l.blobs for l in read_caffemodel(os.path.join(case, model)).layer if len(l.blobs)}
    for layer in read_caffemodel(os.path.join(golden, model)).layer:
        for k, blob in enumerate(layer.blobs):
            assert_close_to_caffe(blobproto_to_array(ours[layer.name][k]), blobproto_to_array(blob),
                                  "%s %s %s:%d" % (name, model, layer.name, k))
    state = [f for f in snaps if f.endswith(".solverstate")][0]
    a, b = read_solverstate(os.path.join(case, state)), read_solverstate(os.path.join(golden, state))
    assert (a.iter, a.current_step, len(a.history)) == (b.iter, b.current_step, len(b.history))
    for k, (mine, theirs) in enumerate(zip(a.history, b.history)):
        assert_close_to_caffe(blobproto_to_array(mine), blobproto_to_array(theirs), "%s history %d" % (name, k))
