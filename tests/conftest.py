"""Shared test helpers: the BVLC Caffe golden cases (tests/golden, see its README)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


class GoldenCase:
    """One folder of tests/golden/layers or tests/golden/nets."""

    def __init__(self, folder: str):
        self.folder = folder
        self.name = os.path.basename(folder)
        with open(os.path.join(folder, "case.json")) as f:
            self.info = json.load(f)
        with np.load(os.path.join(folder, "io.npz")) as arrays:
            self.io = {key: arrays[key] for key in arrays.files}

    @property
    def prototxt(self) -> str:
        return os.path.join(self.folder, "net.prototxt")

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    @property
    def phase_name(self) -> str:
        return self.info["phase"]

    def keys(self, prefix: str) -> dict:
        """``{rest of key: array}`` for every io key starting with ``prefix:``."""
        start = prefix + ":"
        return {k[len(start):]: v for k, v in self.io.items() if k.startswith(start)}


def golden_case_names(kind: str) -> list[str]:
    root = os.path.join(GOLDEN_DIR, kind)
    return sorted(c for c in os.listdir(root) if os.path.isfile(os.path.join(root, c, "case.json")))


def load_golden(kind: str, name: str) -> GoldenCase:
    return GoldenCase(os.path.join(GOLDEN_DIR, kind, name))


def assert_close_to_caffe(actual, expected, what: str) -> None:
    """The golden tolerance: atol = 1e-4 · max|expected| per array, shapes equal."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != Caffe's {expected.shape}"
    atol = 1e-4 * max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= atol, f"{what}: max error {err:.3g} > atol {atol:.3g}"


# -- running a golden case through engine.Net -------------------------------------------
def build(case: GoldenCase, weights: str = "weights.caffemodel"):
    """``engine.Net`` for a golden case, with its Caffe weights."""
    from caffeseg import engine
    phase = engine.TRAIN if case.phase_name == "TRAIN" else engine.TEST
    if os.environ.get("CAFFESEG_TEST_GPU"):
        # CAFFESEG_TEST_GPU=1 runs the golden cases on the CUDA device (not in CI)
        engine.set_mode_gpu()
        try:
            return engine.Net(case.prototxt, case.path(weights), phase)
        finally:
            engine.set_mode_cpu()
    return engine.Net(case.prototxt, case.path(weights), phase)


def run_forward_backward(net, case: GoldenCase):
    for name, value in case.keys("input").items():
        net.blobs[name].reshape(*value.shape)
        net.blobs[name].data[...] = value
    net.forward()
    after_forward = {k: np.array(net.params[k.split(":")[0]][int(k.split(":")[1])].data)
                     for k in case.keys("param_after")}
    for name, diff in case.keys("topdiff").items():
        assert name in net.outputs, f"{case.name}: Caffe set a diff on '{name}', not one of our outputs {net.outputs}"
        net.blobs[name].diff[...] = diff
    if case.keys("diff") or case.keys("pgrad"):
        # forward-only cases (argmax, threshold: Caffe's backward is NOT_IMPLEMENTED) record no diffs
        net.backward()
    return after_forward


def check_case(case: GoldenCase, weights: str = "weights.caffemodel"):
    previous = os.getcwd()
    os.chdir(case.folder)  # Caffe built the case there: relative sources (infogain H) resolve there
    try:
        net = build(case, weights)
    finally:
        os.chdir(previous)
    after_forward = run_forward_backward(net, case)
    compared = 0
    for name, expected in case.keys("blob").items():
        assert name in net.blobs, f"{case.name}: Caffe has blob '{name}', net.blobs has {list(net.blobs)}"
        assert_close_to_caffe(net.blobs[name].data, expected, f"{case.name} blob:{name}")
        compared += 1
    # `shape:` keys (dummy_data): a top filled from a random filler; only its shape is Caffe's
    for name, expected in case.keys("shape").items():
        assert name in net.blobs, f"{case.name}: Caffe has blob '{name}', net.blobs has {list(net.blobs)}"
        assert net.blobs[name].data.shape == tuple(int(d) for d in expected), \
            f"{case.name} shape:{name}: {net.blobs[name].data.shape} != Caffe's {tuple(expected)}"
        compared += 1
    assert sorted(list(case.keys("blob")) + list(case.keys("shape"))) == sorted(net.blobs), \
        f"{case.name}: blob names differ from Caffe's: {sorted(net.blobs)}"
    for key, expected in case.keys("param_after").items():
        assert_close_to_caffe(after_forward[key], expected, f"{case.name} param_after:{key}")
        compared += 1
    for name, expected in case.keys("diff").items():
        assert_close_to_caffe(net.blobs[name].diff, expected, f"{case.name} diff:{name}")
        compared += 1
    for key, expected in case.keys("pgrad").items():
        layer, index = key.split(":")
        assert_close_to_caffe(net.params[layer][int(index)].diff, expected, f"{case.name} pgrad:{key}")
        compared += 1
    # `again:` keys (recurrent cases): a second forward after the backward, same inputs; the
    # recurrent layers start from the final state of the first forward
    again = case.keys("again")
    if again:
        net.forward()
        for name, expected in again.items():
            assert_close_to_caffe(net.blobs[name].data, expected, f"{case.name} again:{name}")
            compared += 1
    assert compared > 0
    return net


@pytest.fixture
def golden():
    """``golden(kind, name)`` → GoldenCase."""
    return load_golden


# -- a small phantom Sunnybrook release (dataset jobs in the jobs and web tests) -----------------
@pytest.fixture
def phantom_release(tmp_path):
    """``(image_folder, contour_folder)`` of a 2-case, 3-slice phantom release under tmp_path."""
    from caffeseg.plugin.sunnybrook import phantom
    root = tmp_path / "sample"
    phantom.generate(str(root), cases=2, seed=0, slices=3)
    return root / "challenge_training", root / "TrainingDataContours"


@pytest.fixture(autouse=True)
def _python_layer_lookup_is_per_test():
    """``web.create_app`` turns off the working-directory lookup of Python layers for its process;
    in the test process each test starts from pycaffe's default again."""
    from caffeseg.engine.layer_types import python as python_layers
    saved = python_layers.SEARCH_WORKING_DIRECTORY
    yield
    python_layers.SEARCH_WORKING_DIRECTORY = saved


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME",
                    "OPENBLAS_THREAD_TIMEOUT")


@pytest.fixture(autouse=True)
def _thread_settings_are_per_test():
    """``caffeseg worker``/``serve`` set this process's thread plan (jobs.threads) when a test runs
    them in-process; restore it, so later subprocesses (real Caffe's OpenBLAS) and torch see the
    machine's defaults again."""
    import torch
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    threads = torch.get_num_threads()
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
