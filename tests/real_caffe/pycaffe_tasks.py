"""Tasks run by real BVLC Caffe for the cross-backend tests (tests/test_real_caffe_*.py).

Runs under the interpreter real pycaffe is built for (the tests start it through
jobs.real_caffe, never inside pytest, whose ``caffe`` is the engine): Python 3.9+, numpy and
``caffe`` only. Arrays go in and out through .npz/.npy files; the tests compare them.

    pycaffe_tasks.py golden OUT_DIR CASE_DIR...
        every golden case (tests/golden/layers|nets/CASE) recomputed: OUT_DIR/CASE.npz with the
        io.npz keys Caffe's run yields (blob:, param_after:, diff:, pgrad:, again:, shape:), from
        the case's own inputs, weights and top diffs. With real Caffe this regenerates io.npz.
    pycaffe_tasks.py forward PROTOTXT OUT.npz [--weights W] [--phase TEST|TRAIN] [--forwards K]
                     [--inputs IN.npz] [--memory-arrays IN.npz] [--topdiff IN.npz] [--backward]
                     [--path DIR]...
        K forward passes; batch:K:BLOB for every blob after pass K (from 0); with --backward one
        backward after the last pass: diff:BLOB and pgrad:LAYER:I.
    pycaffe_tasks.py predict DEPLOY WEIGHTS PREPROCESS.json IMAGE.npy OUT.npy
        the class probabilities (C x H x W) of one image, preprocessed as Caffe's TEST phase
        does ((x - mean) cropped at the centre, times scale; the mean from a binaryproto).
    pycaffe_tasks.py solver CASE_DIR OUT.npz
        a golden solver case (tests/golden/solvers/CASE, run in a scratch copy: the snapshot
        overwrites snap_iter_N.*): init.caffemodel loaded, feed:IT:BLOB set before each step(1);
        after:IT:LAYER:I and loss (the net's loss after each step) written, then snapshot().
    pycaffe_tasks.py info
        {"version", "module"} of the caffe imported.
"""
import argparse
import json
import os
import sys

import numpy as np

import caffe
from caffe.proto import caffe_pb2


def _phase(name):
    return caffe.TRAIN if name == "TRAIN" else caffe.TEST


def _keys(arrays, prefix):
    start = prefix + ":"
    return dict((k[len(start):], arrays[k]) for k in arrays.files if k.startswith(start))


def golden_case(folder):
    with open(os.path.join(folder, "case.json")) as f:
        info = json.load(f)
    io = np.load(os.path.join(folder, "io.npz"))
    previous = os.getcwd()
    os.chdir(folder)  # relative sources (infogain H) and Python layer modules live beside the net
    sys.path.insert(0, folder)
    try:
        net = caffe.Net("net.prototxt", "weights.caffemodel", _phase(info["phase"]))
    finally:
        os.chdir(previous)
    for name, value in _keys(io, "input").items():
        net.blobs[name].reshape(*value.shape)
        net.blobs[name].data[...] = value
    net.forward()
    out = {}
    for name, blob in net.blobs.items():
        out["blob:" + name] = np.array(blob.data)
    for key in _keys(io, "shape"):
        out["shape:" + key] = np.array(net.blobs[key].data.shape)
    for key in _keys(io, "param_after"):
        layer, index = key.split(":")
        out["param_after:" + key] = np.array(net.params[layer][int(index)].data)
    for name, diff in _keys(io, "topdiff").items():
        net.blobs[name].diff[...] = diff
    if _keys(io, "diff") or _keys(io, "pgrad"):
        net.backward()
        for name in _keys(io, "diff"):
            out["diff:" + name] = np.array(net.blobs[name].diff)
        for key in _keys(io, "pgrad"):
            layer, index = key.split(":")
            out["pgrad:" + key] = np.array(net.params[layer][int(index)].diff)
    if _keys(io, "again"):
        net.forward()
        for name in _keys(io, "again"):
            out["again:" + name] = np.array(net.blobs[name].data)
    sys.path.remove(folder)
    return out


def task_golden(args):
    if not os.path.isdir(args.out_dir):
        os.makedirs(args.out_dir)
    failed = {}
    for folder in args.cases:
        name = os.path.basename(os.path.normpath(folder))
        try:
            arrays = golden_case(folder)
        except Exception as exc:  # one case's failure is reported with the others
            failed[name] = "%s: %s" % (type(exc).__name__, exc)
            continue
        np.savez(os.path.join(args.out_dir, name + ".npz"), **arrays)
    print(json.dumps({"failed": failed}))


def task_forward(args):
    for folder in args.path:
        sys.path.insert(0, folder)
    if args.weights:
        net = caffe.Net(args.prototxt, args.weights, _phase(args.phase))
    else:
        net = caffe.Net(args.prototxt, _phase(args.phase))
    if args.memory_arrays:  # MemoryData: arrays:data and arrays:labels, as pycaffe takes them
        arrays = np.load(args.memory_arrays)
        net.set_input_arrays(np.ascontiguousarray(arrays["arrays:data"], np.float32),
                             np.ascontiguousarray(arrays["arrays:labels"], np.float32))
    if args.inputs:
        inputs = np.load(args.inputs)
        for name in inputs.files:
            net.blobs[name].reshape(*inputs[name].shape)
            net.blobs[name].data[...] = inputs[name]
    out = {}
    for k in range(args.forwards):
        net.forward()
        for name, blob in net.blobs.items():
            out["batch:%d:%s" % (k, name)] = np.array(blob.data)
    if args.backward:
        if args.topdiff:
            diffs = np.load(args.topdiff)
            for name in diffs.files:
                net.blobs[name].diff[...] = diffs[name]
        net.backward()
        for name, blob in net.blobs.items():
            out["diff:" + name] = np.array(blob.diff)
        for layer, params in net.params.items():
            for index, param in enumerate(params):
                out["pgrad:%s:%d" % (layer, index)] = np.array(param.diff)
    np.savez(args.out, **out)


def task_solver(args):
    os.chdir(args.case)  # the solver's net: and snapshot_prefix are relative to the cwd
    trace = np.load("trace.npz")
    solver = caffe.get_solver("solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    out, losses = {}, []
    for it in range(len(trace["loss"])):
        for key in trace.files:
            if key.startswith("feed:%d:" % it):
                solver.net.blobs[key.split(":")[2]].data[...] = trace[key]
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
        for key in trace.files:
            if key.startswith("after:%d:" % it):
                _, _, layer, index = key.split(":")
                out[key] = np.array(solver.net.params[layer][int(index)].data)
    out["loss"] = np.array(losses)
    solver.snapshot()
    np.savez(args.out, **out)


def read_mean(path):
    blob = caffe_pb2.BlobProto()
    with open(path, "rb") as f:
        blob.ParseFromString(f.read())
    mean = caffe.io.blobproto_to_array(blob)
    return mean.reshape(mean.shape[-3:])


def task_predict(args):
    with open(args.preprocess) as f:
        pre = json.load(f)
    net = caffe.Net(args.deploy, args.weights, caffe.TEST)
    image = np.load(args.image).astype(np.float32)
    if image.ndim == 2:
        image = image[None]
    if pre.get("mean_file"):
        image = image - read_mean(pre["mean_file"])
    elif pre.get("mean_value"):
        image = image - np.asarray(pre["mean_value"], np.float32)[:, None, None]
    crop = pre.get("crop_size")
    if crop:
        top, left = (image.shape[1] - crop) // 2, (image.shape[2] - crop) // 2
        image = image[:, top:top + crop, left:left + crop]
    image = image * float(pre.get("scale") or 1.0)
    name = net.inputs[0]
    net.blobs[name].reshape(1, *image.shape)
    net.blobs[name].data[...] = image[None]
    outputs = net.forward()
    key = "prob" if "prob" in outputs else ("score" if "score" in outputs else list(outputs)[-1])
    scores = np.asarray(outputs[key][0], np.float64)
    if key != "prob":
        e = np.exp(scores - scores.max(axis=0, keepdims=True))
        scores = e / e.sum(axis=0, keepdims=True)
    np.save(args.out, scores)


def task_info(args):
    print(json.dumps({"version": getattr(caffe, "__version__", None),
                      "module": os.path.dirname(os.path.abspath(caffe.__file__))}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="task")
    sub.required = True
    p = sub.add_parser("golden")
    p.add_argument("out_dir")
    p.add_argument("cases", nargs="+")
    p.set_defaults(run=task_golden)
    p = sub.add_parser("forward")
    p.add_argument("prototxt")
    p.add_argument("out")
    p.add_argument("--weights")
    p.add_argument("--phase", default="TEST", choices=("TEST", "TRAIN"))
    p.add_argument("--forwards", type=int, default=1)
    p.add_argument("--inputs")
    p.add_argument("--memory-arrays")
    p.add_argument("--topdiff")
    p.add_argument("--backward", action="store_true")
    p.add_argument("--path", action="append", default=[])
    p.set_defaults(run=task_forward)
    p = sub.add_parser("predict")
    for name in ("deploy", "weights", "preprocess", "image", "out"):
        p.add_argument(name)
    p.set_defaults(run=task_predict)
    p = sub.add_parser("solver")
    p.add_argument("case")
    p.add_argument("out")
    p.set_defaults(run=task_solver)
    p = sub.add_parser("info")
    p.set_defaults(run=task_info)
    args = ap.parse_args(argv)
    caffe.set_mode_cpu()
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
