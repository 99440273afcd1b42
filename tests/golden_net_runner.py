"""Run a golden case through ``engine.Net`` the way BVLC Caffe produced it, and compare."""
from __future__ import annotations

import numpy as np

import engine
from conftest import GoldenCase, assert_close_to_caffe


def build(case: GoldenCase, weights: str = "weights.caffemodel"):
    phase = engine.TRAIN if case.phase_name == "TRAIN" else engine.TEST
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
    net.backward()
    return after_forward


def check_case(case: GoldenCase, weights: str = "weights.caffemodel"):
    net = build(case, weights)
    after_forward = run_forward_backward(net, case)
    compared = 0
    for name, expected in case.keys("blob").items():
        assert name in net.blobs, f"{case.name}: Caffe has blob '{name}', net.blobs has {list(net.blobs)}"
        assert_close_to_caffe(net.blobs[name].data, expected, f"{case.name} blob:{name}")
        compared += 1
    assert sorted(case.keys("blob")) == sorted(net.blobs), \
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
    assert compared > 0
    return net
