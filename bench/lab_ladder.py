"""The medical-imaging lab's ladder of networks, reproduced on the Sunnybrook-layout phantom.

The DIGITS lab trains FCN-AlexNet from scratch on the Sunnybrook LV data (SGD, base_lr 1e-4),
sees a high pixel accuracy, adds the Dice layer and finds Dice ≈ 0 (the net predicts background
everywhere: the class-imbalance lesson), then lifts Dice with better training (Adam; a Dice loss
is its suggested fix), and finally compares FCN-8s with FCN-AlexNet on the outline quality.
This script runs that ladder, and the other networks of prototxt/, on the phantom:

    .venv/bin/python bench/lab_ladder.py --threads 1 --out ladder.json
    .venv/bin/python bench/lab_ladder.py --rungs a,b2,c --iters a=200 --size 128
    .venv/bin/python bench/lab_ladder.py --probe 3          # seconds per iteration of every rung

Data: ``plugin/sunnybrook/phantom.py`` writes a release in the Sunnybrook layout (DICOM +
expert contours, 260 inner contours by default) into ``--phantom-dir``; the Sunnybrook plugin
itemizes it (inner contours, 2 classes, 10 % of the slices for validation as DIGITS splits) and
encodes each record (its DICOM reader and contour rasterisation). The 12-bit slices become 8-bit
(each slice divided by its maximum, ×255: the range the lab's FCN-AlexNet expects with its −116
shift). ``--size`` defaults to 256, the phantom's (and the lab's) own size; a smaller size
downscales image (area) and label (nearest). Records are fed to Input layers in the dataset's
order, batch 1 as in the lab (as a Data layer reads an LMDB).

Nets: prototxt/<net>.prototxt, hidden widths divided by the rung's slim factor (``--slim``;
FCN-AlexNet and FCN-8s /4 by default for CPU time, the small nets at full width; class layers
untouched), class count set with ``jobs.derive.set_class_count``, lab_fc's fixed 256×256 output
resized to ``--size``; train and val nets derived with ``jobs.derive.filter_net`` (DIGITS'
train = TRAIN + stage train, val = TEST + stage val), Data layers replaced by Input layers.
Solvers from ``jobs.derive.derive_solver`` (momentum 0.9, weight decay base_lr/100 as DIGITS),
max_iter set per rung. Rungs with a Dice loss add a ``DiceLoss`` Python layer (loss_weight 1)
beside SoftmaxWithLoss in the train net. Rungs a0/a1 clear the fillers as the DIGITS example's
FCN-AlexNet has none (Caffe's default: constant 0), the lab's from-scratch situation.

Reported per rung (validation set, after training): pixel accuracy (Accuracy layer), Dice (the
lab's Dice layer, mean over images), boundary F-score at ``--tolerance`` px and Hausdorff /
HD95 distances in pixels of the ``--size`` grid (``jobs/boundary.py``; images where the net
predicts no LV at all have no distance and are counted instead), LV pixels predicted vs
labelled, the train loss, seconds per iteration. This is a benchmark: nothing here asserts.
"""
import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "python_layers"))

from caffeseg.jobs import boundary  # noqa: E402
from caffeseg.engine.prototxt import format_message, read_net  # noqa: E402
from caffeseg.engine.proto import caffe_pb2  # noqa: E402
from caffeseg.jobs import derive  # noqa: E402

# id, net, solver, base_lr, loss, slim divisor, default iterations, what it stands for.
# Rungs "a0"/"a1" use the DIGITS example's FCN-AlexNet fillers: none, i.e. Caffe's default
# constant 0 for every weight and bias except the bilinear upscore (the lab's from-scratch run).
RUNGS = [
    ("a0", "fcn_alexnet_dice", "SGD", 1e-4, "softmax", 4, 1404,
     "lab step 1-2 with the DIGITS example's fillers (none = constant 0), SGD 1e-4"),
    ("a1", "fcn_alexnet_dice", "Adam", 1e-4, "softmax+dice", 4, 1404,
     "same zero fillers, Adam 1e-4 + DiceLoss"),
    ("a", "fcn_alexnet_dice", "SGD", 1e-4, "softmax", 4, 1404,
     "FCN-AlexNet from scratch with this project's xavier fillers, SGD 1e-4"),
    ("b0", "fcn_alexnet_dice", "SGD", 1e-4, "softmax+dice", 4, 1404,
     "same, SGD 1e-4 with DiceLoss added (loss_weight 1)"),
    ("b1", "fcn_alexnet_dice", "Adam", 1e-4, "softmax", 4, 1404,
     "lab's later step: Adam 1e-4"),
    ("b2", "fcn_alexnet_dice", "Adam", 1e-4, "softmax+dice", 4, 1404,
     "Adam 1e-4 + DiceLoss"),
    ("c", "fcn_8s", "Adam", 1e-4, "softmax+dice", 4, 1404,
     "FCN-8s, same recipe and width divisor as b2 (compare outlines with b2)"),
    ("d1", "lab_fc", "Adam", 1e-4, "softmax", 1, 936, "lab FC baseline"),
    ("d2", "lab_cnn", "Adam", 1e-3, "softmax", 1, 936, "lab CNN"),
    ("d3", "unet", "Adam", 1e-3, "softmax", 1, 936, "U-Net"),
    ("d4", "deeplab_aspp", "Adam", 1e-3, "softmax", 1, 936, "DeepLab ASPP"),
]
ZERO_FILLER_RUNGS = {"a0", "a1"}
RUNG_IDS = [r[0] for r in RUNGS]


# ---------------------------------------------------------------- data (Sunnybrook phantom)

def to_8bit(pixels):
    pixels = pixels.astype(np.float64)
    top = pixels.max()
    return (pixels * (255.0 / top) if top > 0 else pixels).astype(np.float32)


def load_phantom(folder, size, seed):
    """(train_x, train_y, val_x, val_y): N x 1 x size x size float32, labels 0/1."""
    import cv2
    from caffeseg.plugin.sunnybrook import phantom
    from caffeseg.plugin.sunnybrook.plugin import SunnybrookPlugin
    images = os.path.join(folder, "challenge_training")
    if not os.path.isdir(images):
        phantom.generate(folder, seed=seed)
    plugin = SunnybrookPlugin()
    values = {"image_folder": images, "contour_folder": os.path.join(folder, "TrainingDataContours"),
              "channel_conversion": "L", "val_percent": 10, "contour_type": "inner",
              "split_by": "slice", "seed": seed}
    stages = plugin.itemize(values).stages
    out = []
    for stage in ("train", "val"):
        xs, ys = [], []
        for entry in stages[stage]:
            record = plugin.encode(entry, values)
            x, y = to_8bit(record.feature[0]), record.label[0]
            if size != x.shape[0]:
                x = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)
                y = cv2.resize(y, (size, size), interpolation=cv2.INTER_NEAREST)
            xs.append(x[None])
            ys.append(y[None].astype(np.float32))
        out += [np.stack(xs), np.stack(ys)]
    return tuple(out)


# ---------------------------------------------------------------- nets (jobs.derive)

def prepare_net(name, size, slim, n_classes=2):
    """prototxt/NAME slimmed and given the class count; lab_fc resized to size x size."""
    net = read_net(os.path.join(ROOT, "prototxt", name + ".prototxt"))
    for layer in net.layer:
        if layer.name.startswith(derive.CLASS_LAYER_PREFIXES) or slim <= 1:
            continue
        for p in (layer.convolution_param, layer.inner_product_param):
            if p.num_output:
                p.num_output = max(1, p.num_output // slim)
    for layer in net.layer:  # lab_fc: its Reshape fixes 256 x 256; set_class_count reads H x W from it
        if layer.type == "Reshape" and layer.name.startswith("score"):
            dims = layer.reshape_param.shape.dim
            dims[2], dims[3] = size, size
    derive.set_class_count(net, n_classes)
    return net


def digits_fillers(net):
    """The DIGITS example's FCN-AlexNet has no fillers: Caffe then fills weights and biases with
    constant 0. Kept: bilinear upsampling kernels (the example sets those)."""
    for layer in net.layer:
        cp = layer.convolution_param
        if cp.weight_filler.type == "bilinear":
            continue
        for p in (cp, layer.inner_product_param):
            p.ClearField("weight_filler")
            p.ClearField("bias_filler")


def with_inputs(net, batch, size):
    """A filtered net with its Data layers turned into Input layers (label: one channel)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        layer.ClearField("include")
        layer.ClearField("exclude")
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.input_param.shape.add().dim.extend([batch, 1, size, size])
    return out


def add_dice_loss(net, weight=1.0):
    layer = net.layer.add(name="dice_loss", type="Python")
    layer.bottom.extend(["score", "label"])
    layer.top.append("dice_loss")
    layer.python_param.module = "digits_python_layers"
    layer.python_param.layer = "DiceLoss"
    layer.python_param.param_str = "class=1"
    layer.loss_weight.append(weight)


def write_nets(rung, args, workdir):
    rid, name, solver_type, lr, loss, _, _, _ = rung
    net = prepare_net(name, args.size, args.slim_for[rid])
    if rid in ZERO_FILLER_RUNGS:
        digits_fillers(net)
    train = with_inputs(derive.filter_net(net, *derive.TRAIN_STATE), args.batch, args.size)
    val = with_inputs(derive.filter_net(net, *derive.VAL_STATE), 1, args.size)
    if loss == "softmax+dice":
        add_dice_loss(train)
    paths = {}
    for stage, param in (("train", train), ("val", val)):
        paths[stage] = os.path.join(workdir, "%s_%s.prototxt" % (rid, stage))
        with open(paths[stage], "w") as handle:
            handle.write(format_message(param))
    solver = derive.derive_solver(args.train_count, 0, args.batch, 1, {
        "epochs": 1, "base_lr": lr, "solver_type": solver_type, "random_seed": args.seed})
    solver.ClearField("net")
    solver.ClearField("train_state")
    solver.train_net = paths["train"]
    solver.max_iter = args.iters_for[rid]
    solver.display = 0
    solver.snapshot = 0
    solver.snapshot_after_train = False
    paths["solver"] = os.path.join(workdir, rid + "_solver.prototxt")
    with open(paths["solver"], "w") as handle:
        handle.write(format_message(solver))
    return paths, solver


# ---------------------------------------------------------------- one rung

def scalar(value):
    return float(np.asarray(value).ravel()[0])


def evaluate(caffe, val_net, val_x, val_y, tolerance):
    acc, dice, bf, hd, hd95 = [], [], [], [], []
    no_lv = pred_px = label_px = 0
    for i in range(len(val_x)):
        val_net.blobs["data"].data[...] = val_x[i:i + 1]
        val_net.blobs["label"].data[...] = val_y[i:i + 1]
        out = val_net.forward()
        acc.append(scalar(out["accuracy"]))
        dice.append(scalar(out["dice"]))
        score = np.asarray(val_net.blobs["score"].data)[0]
        pred = score[1] > score[0]  # class 1 wins strictly, as the Dice layer breaks ties
        gt = val_y[i, 0] > 0.5
        bf.append(boundary.boundary_f_score(pred, gt, tolerance)[0])
        if pred.any() and gt.any():  # the distance is undefined when either outline is missing
            hd.append(boundary.hausdorff(pred, gt))
            hd95.append(boundary.hausdorff(pred, gt, 95))
        if not pred.any():
            no_lv += 1
        pred_px += int(pred.sum())
        label_px += int(gt.sum())

    def mean(values):
        return float(np.mean(values)) if values else None

    return {"val_accuracy": mean(acc), "val_dice": mean(dice), "val_bf": mean(bf),
            "val_hd": mean(hd), "val_hd95": mean(hd95), "val_no_lv_images": no_lv,
            "val_images": len(val_x), "val_lv_px_predicted": pred_px, "val_lv_px_labelled": label_px}


def run_rung(caffe, rung, data, args, workdir, probe=0):
    rid, name, solver_type, lr, loss, _, _, what = rung
    slim = args.slim_for[rid]
    init = "constant 0 (DIGITS example)" if rid in ZERO_FILLER_RUNGS else "prototxt (xavier)"
    train_x, train_y, val_x, val_y = data
    paths, solver_param = write_nets(rung, args, workdir)
    if hasattr(caffe, "set_random_seed"):
        caffe.set_random_seed(args.seed)
    solver = caffe.get_solver(paths["solver"])
    params = sum(b.data.size for blobs in solver.net.params.values() for b in blobs)
    iters = probe or args.iters_for[rid]
    losses, train_dice, curve = [], [], []
    checkpoints = set() if probe else {iters // 8, iters // 4, iters // 2} - {0}
    val_net = None if probe else caffe.Net(paths["val"], caffe.TEST)
    eval_seconds = 0.0
    cursor = 0
    start = time.time()
    for it in range(iters):
        pick = [(cursor + k) % len(train_x) for k in range(args.batch)]
        cursor = (cursor + args.batch) % len(train_x)
        solver.net.blobs["data"].data[...] = train_x[pick]
        solver.net.blobs["label"].data[...] = train_y[pick]
        solver.step(1)
        losses.append(scalar(solver.net.blobs["loss"].data))
        train_dice.append(scalar(solver.net.blobs["dice"].data))
        if not math.isfinite(losses[-1]):
            break
        if it + 1 in checkpoints:
            tick = time.time()
            val_net.share_with(solver.net)
            v = evaluate(caffe, val_net, val_x, val_y, args.tolerance)
            curve.append({"iter": it + 1, "val_accuracy": v["val_accuracy"], "val_dice": v["val_dice"]})
            eval_seconds += time.time() - tick
    seconds = time.time() - start - eval_seconds
    result = {"rung": rid, "net": name, "what": what, "solver": solver_type, "base_lr": lr,
              "weight_decay": solver_param.weight_decay, "loss": loss, "slim": slim, "init": init,
              "parameters": int(params), "iterations": len(losses),
              "epochs": len(losses) * args.batch / float(len(train_x)),
              "seconds_per_iter": seconds / max(1, len(losses)),
              "train_loss_last50": float(np.mean(losses[-50:])),
              "train_dice_last50": float(np.mean(train_dice[-50:]))}
    if probe:
        return result
    val_net.share_with(solver.net)
    start = time.time()
    result.update(evaluate(caffe, val_net, val_x, val_y, args.tolerance))
    result["val_seconds"] = time.time() - start
    curve.append({"iter": len(losses), "val_accuracy": result["val_accuracy"], "val_dice": result["val_dice"]})
    result["curve"] = curve
    return result


def fmt(value, pattern):
    return "–" if value is None else pattern % value


def print_header():
    print("| rung | net / width divisor |  solver, lr | loss | iters (epochs) | s/iter | train loss | "
          "val pixel acc | val Dice | BF@tol | HD px | HD95 px | no-LV imgs | LV px pred/label |",
          flush=True)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)


def print_row(r):
    print("| %s | %s /%d%s | %s %g | %s | %d (%.1f) | %.3f | %.4f | %s | %s | %s | %s | %s | %s | %s |" % (
        r["rung"], r["net"], r["slim"], ", zero init" if r["init"].startswith("constant") else "", r["solver"], r["base_lr"], r["loss"], r["iterations"],
        r["epochs"], r["seconds_per_iter"], r["train_loss_last50"],
        fmt(r.get("val_accuracy"), "%.4f"), fmt(r.get("val_dice"), "%.3f"), fmt(r.get("val_bf"), "%.3f"),
        fmt(r.get("val_hd"), "%.1f"), fmt(r.get("val_hd95"), "%.1f"),
        "%d/%d" % (r["val_no_lv_images"], r["val_images"]) if "val_images" in r else "–",
        "%d/%d" % (r["val_lv_px_predicted"], r["val_lv_px_labelled"]) if "val_images" in r else "–"),
        flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rungs", default=",".join(RUNG_IDS), help="comma-separated rung ids (%s)" % ",".join(RUNG_IDS))
    parser.add_argument("--size", type=int, default=256, help="image side (the phantom and the lab: 256; smaller downscales)")
    parser.add_argument("--batch", type=int, default=1, help="training batch size (the lab: 1)")
    parser.add_argument("--iters", action="append", default=[],
                        help="N (every rung) or RUNG=N; default per rung: %s" % ", ".join(
                            "%s=%d" % (r[0], r[6]) for r in RUNGS))
    parser.add_argument("--slim", action="append", default=[],
                        help="N (every rung) or RUNG=N: width divisor; default per rung: %s" % ", ".join(
                            "%s=%d" % (r[0], r[5]) for r in RUNGS))
    parser.add_argument("--tolerance", type=float, default=2.0, help="boundary F-score tolerance in pixels")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--phantom-dir", default=os.path.join(tempfile.gettempdir(), "caffeseg_phantom_seed0"),
                        help="where the phantom release is (generated there if missing)")
    parser.add_argument("--phantom-seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=0, help="only time N iterations per rung")
    parser.add_argument("--pycaffe", action="store_true", help="use a real Caffe build instead of the engine")
    parser.add_argument("--out", help="write settings and results as JSON here")
    args = parser.parse_args(argv)

    iters_for = {r[0]: r[6] for r in RUNGS}
    for item in args.iters:
        if "=" in item:
            key, value = item.split("=", 1)
            iters_for[key] = int(value)
        else:
            iters_for = {k: int(item) for k in iters_for}
    args.iters_for = iters_for
    slim_for = {r[0]: r[5] for r in RUNGS}
    for item in args.slim:
        if "=" in item:
            key, value = item.split("=", 1)
            slim_for[key] = int(value)
        else:
            slim_for = {k: int(item) for k in slim_for}
    args.slim_for = slim_for
    rungs = [r for rid in args.rungs.split(",") if rid for r in RUNGS if r[0] == rid]

    if args.pycaffe:
        import caffe
    else:
        import torch
        torch.set_num_threads(args.threads)
        from caffeseg import engine as caffe
    caffe.set_mode_cpu()

    start = time.time()
    data = load_phantom(args.phantom_dir, args.size, args.phantom_seed)
    args.train_count = len(data[0])
    lv_share = float(np.mean(data[1]))
    print("phantom: %d train / %d val slices at %dx%d, LV = %.2f %% of the training pixels (%.0f s)"
          % (len(data[0]), len(data[2]), args.size, args.size, 100 * lv_share, time.time() - start), flush=True)
    print_header()
    results = []
    with tempfile.TemporaryDirectory(prefix="lab_ladder_") as workdir:
        for rung in rungs:
            result = run_rung(caffe, rung, data, args, workdir, probe=args.probe)
            results.append(result)
            print_row(result)
            if args.out:
                write_json(args, results, lv_share, time.time() - start)
    if not args.probe:
        print("\nval pixel accuracy / Dice during training (iteration: accuracy / Dice)")
        for r in results:
            print("%-3s %s" % (r["rung"], "  ".join("%d: %.4f / %.3f" % (c["iter"], c["val_accuracy"], c["val_dice"])
                                                  for c in r["curve"])), flush=True)
    print("total %.0f s" % (time.time() - start), flush=True)
    if args.out:
        write_json(args, results, lv_share, time.time() - start)
    return results


def write_json(args, results, lv_share, seconds):
    settings = {k: v for k, v in vars(args).items()}
    settings["command"] = " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    settings["machine"] = platform.platform()
    with open(args.out, "w") as handle:
        json.dump({"settings": settings, "train_lv_pixel_share": lv_share, "wall_seconds": seconds,
                   "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
