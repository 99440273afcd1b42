"""Every single-layer golden case from BVLC Caffe (tests/golden/layers), run at layer level.

Each case's layers are built from its net.prototxt, given the parameters Caffe used, fed the
recorded inputs; tops, input gradients and parameter gradients must match Caffe's arrays to
atol = 1e-4·max|expected|. Net-level cases (implicit splits, in-place chains, shared params,
Python layers) belong to the net tests.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from caffeseg.engine import layer_types  # noqa: F401  (registers the layers)
from conftest import assert_close_to_caffe
from caffeseg.engine.layer_types.base import layer_class
from caffeseg.engine.prototxt import read_net
from caffeseg.engine.proto import caffe_pb2

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "layers")
NET_LEVEL = {"split_implicit", "inplace_chain", "shared_params", "python_layer"}
# on an accelerator the same cases run there too (TF32 off: Caffe computes in full float32)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Top shapes that depend on bottom values (Filter keeps the selected items) are known only to a
# forward pass, not to this harness's reshape-then-forward.
VALUE_SHAPED = {"Filter"}


def needs_the_net(case):
    """Why a case is checked only through the whole Net (tests/test_golden_layers_in_net.py runs
    every case), or None: this harness differentiates with autograd, layer by layer, out of place."""
    if case in NET_LEVEL:
        return "net construction itself"
    for lp in read_net(os.path.join(GOLDEN, case, "net.prototxt")).layer:
        cls = layer_class(lp.type)
        if cls is not None and cls.explicit_backward:
            return f"{lp.type} computes Caffe's own backward, which the Net calls"
        if set(lp.top) & set(lp.bottom):
            return f"{lp.name} runs in place, which only the Net arranges"
        if lp.type in VALUE_SHAPED:
            return f"{lp.type}'s top shape follows the bottom values"
    return None


ALL_CASES = sorted(c for c in os.listdir(GOLDEN) if os.path.isfile(os.path.join(GOLDEN, c, "net.prototxt")))
CASES = [c for c in ALL_CASES if needs_the_net(c) is None]


def loss_weight(layer, index):
    if len(layer.param.loss_weight) > index:
        return layer.param.loss_weight[index]
    return 1.0 if layer.is_loss and index == 0 else 0.0


def run_case(case, device="cpu"):
    folder = os.path.join(GOLDEN, case)
    os.chdir(folder)  # Caffe built the cases there: relative sources (InfogainLoss H) resolve from it
    net = read_net(os.path.join(folder, "net.prototxt"))
    info = json.load(open(os.path.join(folder, "case.json")))
    phase = caffe_pb2.TRAIN if info["phase"] == "TRAIN" else caffe_pb2.TEST
    io = dict(np.load(os.path.join(folder, "io.npz")))
    blobs = {}
    for key, value in io.items():
        if key.startswith("input:"):
            name = key[len("input:"):]
            blobs[name] = torch.tensor(value, dtype=torch.float32, device=device,
                                       requires_grad=f"diff:{name}" in io)
    inputs = dict(blobs)
    objective = []
    grad_params = {}
    layers = []
    for lp in net.layer:
        if lp.type == "Input":
            continue
        cls = layer_class(lp.type)
        assert cls is not None, f"no layer registered for type {lp.type}"
        layer = cls(lp, phase)
        bottoms = [blobs[b] for b in lp.bottom]
        fresh = layer.setup([tuple(b.shape) for b in bottoms])
        assert all(t.device.type == "cpu" for t in fresh), "setup must create parameters on the CPU"
        params = []
        for i, tensor in enumerate(fresh):
            key = f"param:{lp.name}:{i}"
            assert key in io, f"layer {lp.name} made {len(fresh)} params; Caffe has no {key}"
            assert tuple(tensor.shape) == io[key].shape, f"{key}: filled shape {tuple(tensor.shape)}"
            # the golden nets set force_backward, so Caffe computes every param gradient
            # (lr_mult 0 included) except BatchNorm's statistics, which have no backward
            learn = not getattr(layer, "fixed_params", False)
            p = torch.tensor(io[key], dtype=torch.float32, device=device, requires_grad=learn)
            if learn:
                grad_params[f"{lp.name}:{i}"] = p
            params.append(p)
        assert f"param:{lp.name}:{len(fresh)}" not in io, f"layer {lp.name} made too few params"
        shapes = layer.reshape([tuple(b.shape) for b in bottoms])
        tops = layer.forward(bottoms, params)
        assert len(tops) == len(lp.top) == len(shapes)
        for i, (name, top, shape) in enumerate(zip(lp.top, tops, shapes)):
            assert tuple(top.shape) == tuple(shape), f"{lp.name}: top {name} {tuple(top.shape)} vs reshape {shape}"
            blobs[name] = top
            w = loss_weight(layer, i)
            if w:
                objective.append(top.sum() * w)
            elif f"topdiff:{name}" in io:
                objective.append((top * torch.tensor(io[f"topdiff:{name}"], device=device)).sum())
        layers.append((lp, params))
    return io, blobs, inputs, grad_params, objective, layers


@pytest.fixture
def device(request):
    if request.param == "cuda":
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield "cuda"
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    else:
        yield "cpu"


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", CASES)
def test_golden_layer_case(case, device, monkeypatch):
    monkeypatch.chdir(os.getcwd())  # restored after run_case's chdir
    io, blobs, inputs, grad_params, objective, layers = run_case(case, device)
    compared = 0
    for key, expected in io.items():
        if key.startswith("blob:") and key[5:] in blobs and key[5:] not in inputs:
            assert_close_to_caffe(blobs[key[5:]].detach().cpu().numpy(), expected, key)
            compared += 1
    assert compared, f"{case}: no output of ours matched a Caffe blob name"
    for lp, params in layers:
        for i, p in enumerate(params):
            key = f"param_after:{lp.name}:{i}"
            if key in io:
                assert_close_to_caffe(p.detach().cpu().numpy(), io[key], key)
    wanted = [(f"diff:{n}", t) for n, t in inputs.items() if t.requires_grad]
    wanted += [(f"pgrad:{k}", p) for k, p in grad_params.items()]
    if objective and wanted:
        grads = torch.autograd.grad(sum(objective), [t for _, t in wanted], allow_unused=True)
        for (key, tensor), grad in zip(wanted, grads):
            value = np.zeros(tuple(tensor.shape), np.float32) if grad is None else grad.cpu().numpy()
            if key in io:
                assert_close_to_caffe(value, io[key], key)
                compared += 1
    assert compared > 1 or not any(k.startswith(("diff:", "pgrad:")) for k in io), \
        f"{case}: Caffe recorded gradients that were not compared"
    # parameters without a backward (BatchNorm statistics) have zero gradients in Caffe too
    for lp, params in layers:
        for i in range(len(params)):
            key = f"pgrad:{lp.name}:{i}"
            if key in io and f"{lp.name}:{i}" not in grad_params:
                assert not np.any(io[key]), f"{key}: Caffe computed a gradient we do not"


def test_every_case_is_covered():
    from conftest import golden_case_names
    assert len(CASES) >= 45
    assert set(golden_case_names("layers")) == set(ALL_CASES)  # the Net harness runs the rest
    left_to_the_net = {c: needs_the_net(c) for c in ALL_CASES if c not in CASES}
    assert {"mvn", "bnll", "filter", "prelu"} <= set(left_to_the_net), left_to_the_net


@pytest.mark.parametrize("bottom,top", [("pool1", "norm1"), ("pool2", "norm2")])
def test_lrn_reproduces_caffe_running_sum_on_16bit_range(bottom, top):
    """Caffe's golden FCN-AlexNet on 16-bit gray input: fed Caffe's own pool output, our LRN
    must give Caffe's norm output. A direct window sum is off by ~2e-4 relative here (Caffe's
    sliding add/subtract of x² ~ 1e8 loses digits), more than the golden tolerance."""
    folder = os.path.join(os.path.dirname(__file__), "golden", "nets", "fcn_alexnet_slim_gray")
    net = read_net(os.path.join(folder, "net.prototxt"))
    io = np.load(os.path.join(folder, "io.npz"))
    lp = next(layer for layer in net.layer if layer.name == top)
    layer = layer_class("LRN")(lp, caffe_pb2.TRAIN)
    x = torch.tensor(io[f"blob:{bottom}"])
    layer.setup([tuple(x.shape)])
    (y,) = layer.forward([x], [])
    assert_close_to_caffe(y.numpy(), io[f"blob:{top}"], f"blob:{top}")
