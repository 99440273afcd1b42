"""Solver passes may run metric Python layers after backward (Net.defer_metric_layers).

On an accelerator this keeps the metric's host copy from stalling the queue between forward
and backward. The same code path runs on the CPU when the flag is set, so these tests check
what must not change: the values every blob, parameter and metric top ends up with.
"""
import sys
import textwrap

import numpy as np
import pytest
import torch

from caffeseg.engine.net import Net
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.prototxt import parse_net, parse_solver
from caffeseg.engine.solvers import SGDSolver

MODULE = "deferred_metric_layers"

LAYERS = """
import numpy as np
import caffe

CALLS = []


class MeanMetric(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        CALLS.append(("metric", float(np.sum(bottom[0].data))))
        top[0].data[...] = np.mean(bottom[0].data)


class Double(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        CALLS.append(("double", None))
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        CALLS.append(("double-backward", None))
        bottom[0].diff[...] = 2 * top[0].diff


class Broken(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        raise RuntimeError("metric exploded")
"""


def net_text(metric_layer="MeanMetric", metric_extra=""):
    return f"""
    name: "tiny"
    layer {{ name: "in" type: "Input" top: "data" top: "target"
            input_param {{ shape {{ dim: 2 dim: 3 dim: 5 dim: 5 }} shape {{ dim: 2 dim: 4 dim: 5 dim: 5 }} }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
    layer {{ name: "double" type: "Python" bottom: "conv" top: "doubled"
            python_param {{ module: "{MODULE}" layer: "Double" }} }}
    layer {{ name: "metric" type: "Python" bottom: "doubled" top: "metric" {metric_extra}
            python_param {{ module: "{MODULE}" layer: "{metric_layer}" }} }}
    layer {{ name: "relu" type: "ReLU" bottom: "doubled" top: "rectified" }}
    layer {{ name: "loss" type: "EuclideanLoss" bottom: "rectified" bottom: "target" top: "loss" }}
    """


@pytest.fixture
def layers_module(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(LAYERS))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(MODULE, None)
    yield
    sys.modules.pop(MODULE, None)


def make_solver(defer, **net_kwargs):
    sp = parse_solver('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 max_iter: 100 random_seed: 5')
    sp.net_param.CopyFrom(parse_net(net_text(**net_kwargs)))
    solver = SGDSolver(sp)
    solver.net.defer_metric_layers = defer
    rng = np.random.RandomState(1)
    solver.net.blobs["data"].data[...] = rng.randn(2, 3, 5, 5)
    solver.net.blobs["target"].data[...] = rng.randn(2, 4, 5, 5)
    return solver


def calls():
    return sys.modules[MODULE].CALLS


def test_metric_runs_after_backward_on_the_blob_as_it_was_in_its_turn(layers_module):
    solver = make_solver(defer=True)
    assert [solver.net.layers[i].name for i in solver.net._metric_layers] == ["metric"]
    calls().clear()
    solver.step(1)
    assert [name for name, _ in calls()] == ["double", "double-backward", "metric"]
    seen = calls()[-1][1]
    np.testing.assert_allclose(seen, np.sum(solver.net.blobs["doubled"].data), rtol=1e-5)
    np.testing.assert_allclose(float(solver.net.blobs["metric"].data[0]), seen / (2 * 4 * 5 * 5), rtol=1e-6)


def test_deferred_and_in_turn_training_end_identical(layers_module):
    runs = {}
    for defer in (False, True):
        solver = make_solver(defer)
        calls().clear()
        metrics = []
        solver.add_iteration_listener(lambda info: metrics.append(float(info.outputs["metric"][0])))
        solver.step(4)
        assert [name for name, _ in calls()][1:3] == (
            ["double-backward", "metric"] if defer else ["metric", "double-backward"])
        runs[defer] = (metrics, [c for c in calls() if c[0] == "metric"],
                       [b.data.copy() for _, blobs in solver.net.params.items() for b in blobs])
    (metrics_a, seen_a, params_a), (metrics_b, seen_b, params_b) = runs[False], runs[True]
    assert metrics_a == metrics_b
    assert seen_a == seen_b
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a, b)


def test_only_layers_nothing_depends_on_are_deferred(layers_module):
    plain = Net.from_param(parse_net(net_text()), caffe_pb2.TRAIN)
    assert [plain.layers[i].name for i in plain._metric_layers] == ["metric"]
    assert plain.defer_metric_layers is False  # a CPU net runs layers in turn unless asked
    weighted = Net.from_param(parse_net(net_text(metric_extra="loss_weight: 1")), caffe_pb2.TRAIN)
    assert weighted._metric_layers == set()
    read_later = parse_net(net_text())
    echo = read_later.layer.add()
    echo.name, echo.type = "echo", "Power"
    echo.bottom.append("metric")
    echo.top.append("echo")
    assert Net.from_param(read_later, caffe_pb2.TRAIN)._metric_layers == set()


def test_a_failing_deferred_metric_names_the_users_file(layers_module):
    solver = make_solver(defer=True, metric_layer="Broken")
    with pytest.raises(Exception, match=r"metric exploded.*deferred_metric_layers\.py, line \d+"):
        solver.step(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_deferral_is_the_default_and_changes_no_value(layers_module):
    from caffeseg import engine
    engine.set_mode_gpu()
    try:
        solvers = {defer: make_solver(defer) for defer in (False, True)}
    finally:
        engine.set_mode_cpu()
    assert solvers[False].net.blobs["data"].tensor.is_cuda
    engine.set_mode_gpu()
    try:
        assert Net.from_param(parse_net(net_text()), caffe_pb2.TRAIN).defer_metric_layers is True
    finally:
        engine.set_mode_cpu()
    outputs = {}
    for defer, solver in solvers.items():
        calls().clear()
        metrics = []
        solver.add_iteration_listener(lambda info: metrics.append(float(info.outputs["metric"][0])))
        solver.step(3)
        assert [name for name, _ in calls()][1:3] == (
            ["double-backward", "metric"] if defer else ["metric", "double-backward"])
        outputs[defer] = metrics
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-5)
