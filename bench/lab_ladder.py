"""The medical-imaging lab's ladder of networks, on a synthetic "left ventricle" data set.

Trains each network of prototxt/ for a fixed number of iterations on the same synthetic images
(gray noise with one bright disc per image, label 1 inside the disc) and reports the validation
Dice (the lab's metric), pixel accuracy, the final training loss and the time per iteration:

    .venv/bin/python bench/lab_ladder.py --size 64 --iters 150
    .venv/bin/python bench/lab_ladder.py --nets lab_cnn,unet --weights unet=my.caffemodel

Runs on the engine (``import engine as caffe``) or, with ``--pycaffe``, on a real Caffe build.
The FCN nets are slimmed (hidden widths divided by ``--slim``, default 16) unless ``--slim 1``;
lab_fc's sizes follow ``--size``. This is a benchmark, not a test: nothing here asserts.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "python_layers"))

from engine.prototxt import format_message, read_net  # noqa: E402
from engine.proto import caffe_pb2  # noqa: E402

LADDER = ["lab_fc", "lab_cnn", "fcn_alexnet_dice", "fcn_8s", "unet", "deeplab_aspp"]
SLIMMED = {"fcn_alexnet", "fcn_alexnet_dice", "fcn_8s"}


# ---------------------------------------------------------------- data

def synthetic_lv(count, size, seed):
    """Gray images (0..255) with one bright disc each, and its mask as the label."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((count, 1, size, size), np.float32)
    labels = np.empty((count, 1, size, size), np.float32)
    for i in range(count):
        radius = rng.uniform(0.08, 0.2) * size
        cy, cx = rng.uniform(radius, size - radius, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        background = 60 + 25 * rng.randn(size, size)
        images[i, 0] = np.clip(np.where(disc, 170 + 20 * rng.randn(size, size), background), 0, 255)
        labels[i, 0] = disc
    return images, labels


# ---------------------------------------------------------------- nets (DIGITS derivation)

def _rule_matches(rule, phase, stages):
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def derive(name, phase, stage, batch, size, slim):
    """train/val net of prototxt/NAME with Input layers in place of the Data layers."""
    source = read_net(os.path.join(ROOT, "prototxt", name + ".prototxt"))
    net = caffe_pb2.NetParameter()
    net.name = source.name
    for layer in source.layer:
        rules_in, rules_out = layer.include, layer.exclude
        keep = (any(_rule_matches(r, phase, [stage]) for r in rules_in) if rules_in
                else not any(_rule_matches(r, phase, [stage]) for r in rules_out))
        if not keep:
            continue
        copy = net.layer.add()
        copy.CopyFrom(layer)
        del copy.include[:]
        del copy.exclude[:]
        if copy.type == "Data":
            copy.type = "Input"
            copy.ClearField("data_param")
            copy.input_param.shape.add().dim.extend([batch, 1, size, size])
        if name in SLIMMED and slim > 1:
            for p in (copy.convolution_param,):
                if p.num_output > 2:
                    p.num_output = max(2, p.num_output // slim)
        if copy.type == "Reshape" and name == "lab_fc":
            del copy.reshape_param.shape.dim[:]
            copy.reshape_param.shape.dim.extend([0, 2, size, size])
        if copy.name == "score_flat":
            copy.inner_product_param.num_output = 2 * size * size
    return net


def solver_text(train_path, base_lr, iters, seed):
    return "\n".join([
        'train_net: "%s"' % train_path, 'type: "Adam"', "base_lr: %g" % base_lr, "momentum: 0.9",
        "momentum2: 0.999", 'lr_policy: "fixed"', "weight_decay: 0.0001", "max_iter: %d" % iters,
        "display: 0", "snapshot: 0", "random_seed: %d" % seed, ""])


# ---------------------------------------------------------------- one rung

def run_rung(caffe, name, data, args, workdir):
    train_x, train_y, val_x, val_y = data
    paths = {}
    for stage, phase in (("train", caffe_pb2.TRAIN), ("val", caffe_pb2.TEST)):
        paths[stage] = os.path.join(workdir, "%s_%s.prototxt" % (name, stage))
        with open(paths[stage], "w") as handle:
            handle.write(format_message(derive(name, phase, stage, args.batch, args.size, args.slim)))
    solver_path = os.path.join(workdir, name + "_solver.prototxt")
    with open(solver_path, "w") as handle:
        handle.write(solver_text(paths["train"], args.lr, args.iters, args.seed))

    solver = caffe.get_solver(solver_path)
    if name in args.weights:
        solver.net.copy_from(args.weights[name])
    params = sum(b.data.size for blobs in solver.net.params.values() for b in blobs)
    order = np.random.RandomState(args.seed)
    losses = []
    start = time.time()
    for _ in range(args.iters):
        pick = order.randint(0, len(train_x), args.batch)
        solver.net.blobs["data"].data[...] = train_x[pick]
        solver.net.blobs["label"].data[...] = train_y[pick]
        solver.step(1)
        losses.append(float(np.asarray(solver.net.blobs["loss"].data).ravel()[0]))
    seconds = time.time() - start

    weights_path = os.path.join(workdir, name + ".caffemodel")
    solver.net.save(weights_path)
    val_net = caffe.Net(paths["val"], caffe.TEST, weights=weights_path)
    dice, accuracy = [], []
    for first in range(0, len(val_x) - args.batch + 1, args.batch):
        val_net.blobs["data"].data[...] = val_x[first:first + args.batch]
        val_net.blobs["label"].data[...] = val_y[first:first + args.batch]
        out = val_net.forward()
        dice.append(float(np.asarray(out["dice"]).ravel()[0]))
        accuracy.append(float(np.asarray(out["accuracy"]).ravel()[0]))
    return {"net": name, "parameters": int(params), "seconds_per_iter": seconds / args.iters,
            "final_loss": float(np.mean(losses[-10:])), "val_dice": float(np.mean(dice)),
            "val_accuracy": float(np.mean(accuracy))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default=",".join(LADDER), help="comma-separated prototxt names")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--train", type=int, default=64, help="training images")
    parser.add_argument("--val", type=int, default=16, help="validation images")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam base_lr")
    parser.add_argument("--slim", type=int, default=16, help="width divisor for the FCN nets (1 = full)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", action="append", default=[], help="NET=file.caffemodel to fine-tune from")
    parser.add_argument("--pycaffe", action="store_true", help="use a real Caffe build instead of the engine")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.weights = dict(item.split("=", 1) for item in args.weights)

    if args.pycaffe:
        import caffe
    else:
        import engine as caffe
    caffe.set_mode_cpu()
    if hasattr(caffe, "set_random_seed"):
        caffe.set_random_seed(args.seed)

    train_x, train_y = synthetic_lv(args.train, args.size, args.seed)
    val_x, val_y = synthetic_lv(args.val, args.size, args.seed + 1000)
    results = []
    with tempfile.TemporaryDirectory(prefix="lab_ladder_") as workdir:
        for name in [n for n in args.nets.split(",") if n]:
            result = run_rung(caffe, name, (train_x, train_y, val_x, val_y), args, workdir)
            results.append(result)
            print("%-18s params %10d  %7.3f s/iter  loss %.4f  val Dice %.3f  val acc %.3f" % (
                name, result["parameters"], result["seconds_per_iter"], result["final_loss"],
                result["val_dice"], result["val_accuracy"]), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"settings": {k: v for k, v in vars(args).items()}, "results": results}, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
