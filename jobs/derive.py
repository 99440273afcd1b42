"""Network and solver derivation, as DIGITS' generic Caffe train task does it.

From one "original" network (all phases in one file, separated with include/exclude rules on
stages) we derive:

* ``train_val.prototxt``: the original with its Data layers pointed at the dataset's LMDBs
  (absolute paths, ``backend: LMDB``), batch sizes, mean and crop;
* ``deploy.prototxt``: the layers of phase TEST + stage "deploy", Data layers replaced by an
  Input ``data`` of 1×C×H×W;
* ``solver.prototxt``: epochs turned into iterations with DIGITS' rules.

The train net is phase TRAIN + stage "train", the val net phase TEST + stage "val"; the solver
carries these as ``train_state`` / ``test_state`` so Caffe itself picks the right layers.

Deliberate differences from DIGITS (documented in docs/ARCHITECTURE.md):
* pixel mean is kept as float (DIGITS rounded it, which is wrong for 16-bit data);
* weight decay is an explicit option; its default is base_lr / 100, what DIGITS silently set.
"""
import math
import os

from caffeseg.engine.proto import caffe_pb2

DEFAULT_BATCH_SIZE = 16
LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
# These solver types take no momentum in DIGITS.
_NO_MOMENTUM = ("AdaGrad", "RMSProp")

TRAIN_STATE = ("TRAIN", "train")
VAL_STATE = ("TEST", "val")
DEPLOY_STATE = ("TEST", "deploy")


class DeriveError(ValueError):
    """The network or the options cannot make a job; the message says what to change."""


# -- Caffe's layer filtering (Net::FilterNet / StateMeetsRule) ------------------------------

def _state_meets_rule(phase, stages, level, rule):
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_in_state(layer, phase_name, stage, level=0):
    """True if Caffe would keep ``layer`` in a net of this phase and stage."""
    phase = caffe_pb2.TRAIN if phase_name == "TRAIN" else caffe_pb2.TEST
    stages = (stage,) if stage else ()
    if len(layer.include):
        return any(_state_meets_rule(phase, stages, level, r) for r in layer.include)
    return not any(_state_meets_rule(phase, stages, level, r) for r in layer.exclude)


def filter_net(net, phase_name, stage):
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer_in_state(layer, phase_name, stage):
            out.layer.add().CopyFrom(layer)
    return out


def check_bottoms(net, what):
    """Every bottom must be produced by an earlier layer (or be a net input)."""
    produced = set(net.input)
    for layer in net.layer:
        for bottom in layer.bottom:
            if bottom not in produced:
                raise DeriveError("%s network: layer %r needs blob %r, which no earlier layer produces"
                                  % (what, layer.name, bottom))
        produced.update(layer.top)


# -- dataset facts ---------------------------------------------------------------------------

class DatasetFacts:
    """What derivation needs from a dataset job: its ``jobs.dataset.DatasetInfo`` (the one reader
    of dataset.json) and its folder."""

    def __init__(self, folder, info):
        self.folder = os.path.abspath(folder)
        self.info = info
        self.train_count = int(info.counts.get("train") or 0)
        self.val_count = int(info.counts.get("val") or 0)
        self.channels, self.height, self.width = (int(x) for x in info.feature_shape[-3:])
        self.classes = list(info.classes)
        self.pixel_spacing = info.info.get("pixel_spacing")

    @classmethod
    def load(cls, folder):
        from caffeseg.jobs.dataset import DatasetError, DatasetInfo
        try:
            return cls(folder, DatasetInfo.read(folder))
        except DatasetError as exc:
            raise DeriveError(str(exc)) from None

    def db(self, stage, part):
        """Absolute path of ``<stage>_db/<part>`` (part: features | labels), or None."""
        entry = self.info.info["stages"].get(stage) or {}
        path = os.path.join(self.folder, entry.get(part + "_db") or "%s_db/%s" % (stage, part))
        return path if os.path.isdir(path) else None

    def mean_file(self):
        named = self.info.info.get("mean_file")
        path = os.path.join(self.folder, named) if named else None
        return path if path and os.path.isfile(path) else None


# -- network derivation ------------------------------------------------------------------------

def _is_label_top(layer):
    return any("label" in top for top in layer.top)


def _configure_data_layer(layer, source, is_features, options, facts):
    layer.data_param.source = source
    layer.data_param.backend = caffe_pb2.DataParameter.LMDB
    if options.get("batch_size"):
        layer.data_param.batch_size = int(options["batch_size"])
    elif not layer.data_param.HasField("batch_size"):
        layer.data_param.batch_size = DEFAULT_BATCH_SIZE
    if not is_features:
        return
    mean = options.get("mean", "none")
    if mean in ("image", "pixel"):
        mean_path = facts.mean_file()
        if mean_path is None:
            raise DeriveError("mean %r asked for, but dataset %s has no mean.binaryproto" % (mean, facts.folder))
        layer.transform_param.ClearField("mean_file")
        layer.transform_param.ClearField("mean_value")
        if mean == "image":
            layer.transform_param.mean_file = mean_path
        else:
            from caffeseg.engine.blobproto import read_binaryproto
            arr = read_binaryproto(mean_path)
            arr = arr.reshape(-1, *arr.shape[-2:]) if arr.ndim >= 2 else arr.reshape(-1, 1, 1)
            for c in range(arr.shape[0]):
                layer.transform_param.mean_value.append(float(arr[c].mean()))
    elif mean not in ("none", None):
        raise DeriveError("mean must be none, image or pixel (got %r)" % (mean,))
    crop = options.get("crop_size")
    if crop:
        crop = int(crop)
        if crop > min(facts.height, facts.width):
            raise DeriveError("crop_size %d is larger than the images (%dx%d)" % (crop, facts.height, facts.width))
        layer.transform_param.crop_size = crop


def derive_networks(original, facts, options=None):
    """(train_val, deploy) NetParameters from the original network and the dataset facts.

    options: batch_size, val_batch_size, mean (none|image|pixel), crop_size, set_num_output.
    """
    options = dict(options or {})
    train_val = caffe_pb2.NetParameter()
    train_val.CopyFrom(original)
    n_train_data = n_val_data = 0
    for layer in train_val.layer:
        if layer.type != "Data":
            continue
        if layer_in_state(layer, *TRAIN_STATE):
            stage = "train"
            n_train_data += 1
        elif layer_in_state(layer, *VAL_STATE):
            stage = "val"
            n_val_data += 1
        else:
            continue
        part = "labels" if _is_label_top(layer) else "features"
        source = facts.db(stage, part)
        if source is None:
            raise DeriveError("Data layer %r reads %s %s, but the dataset has no %s_db/%s" %
                              (layer.name, stage, part, stage, part))
        layer_opts = dict(options)
        if stage == "val" and options.get("val_batch_size"):
            layer_opts["batch_size"] = options["val_batch_size"]
        _configure_data_layer(layer, source, part == "features", layer_opts, facts)
    if n_train_data == 0:
        raise DeriveError("the network has no Data layer in phase TRAIN / stage train")
    if options.get("set_num_output"):
        set_class_count(train_val, len(facts.classes))

    check_bottoms(filter_net(train_val, *TRAIN_STATE), "train")
    if n_val_data:
        check_bottoms(filter_net(train_val, *VAL_STATE), "val")

    deploy = filter_net(train_val, *DEPLOY_STATE)
    del deploy.layer[:]
    crop = options.get("crop_size")
    h, w = (int(crop), int(crop)) if crop else (facts.height, facts.width)
    data_input = deploy.layer.add(name="data", type="Input")
    data_input.top.append("data")
    data_input.input_param.shape.add().dim.extend([1, facts.channels, h, w])
    for layer in filter_net(train_val, *DEPLOY_STATE).layer:
        if layer.type in ("Data", "Input", "DummyData", "HDF5Data", "ImageData"):
            continue
        copy = deploy.layer.add()
        copy.CopyFrom(layer)
        # Deploy nets are TEST-only; the stage rules have done their job.
        copy.ClearField("include")
        copy.ClearField("exclude")
    check_bottoms(deploy, "deploy")
    return train_val, deploy


CLASS_LAYER_PREFIXES = ("score", "upscore")


def _is_class_layer(layer):
    return layer.name.startswith(CLASS_LAYER_PREFIXES)


def set_class_count(net, n_classes):
    """Make the class-dependent layers produce ``n_classes`` channels (when the user asks for it).

    The class-dependent layers are those named ``score*`` / ``upscore*`` (the FCN convention the
    prototxt files follow, e.g. FCN-8s' ``score_fr_seg`` … ``upscore8_seg``):

    * Convolution / Deconvolution: ``num_output`` := n; a ``group`` equal to the old
      ``num_output`` (> 1: one bilinear filter per class, as FCN's upscore layers) := n too;
    * InnerProduct feeding a Reshape to N×C×H×W (lab_fc's ``score_flat`` → ``score``):
      ``num_output`` := n·H·W and the Reshape's class dimension := n, with H×W read from the
      Reshape's own dims; an InnerProduct not followed by such a Reshape gets ``num_output`` := n.

    Returns the names of the layers changed. Raises DeriveError when the class count is not
    positive or a Reshape's dims cannot give the spatial size.
    """
    if n_classes < 1:
        raise DeriveError("the dataset has no classes; cannot set num_output")
    n_classes = int(n_classes)
    changed = []
    reshapes = {}  # bottom blob -> Reshape layers reading it
    for layer in net.layer:
        if layer.type == "Reshape" and layer.bottom:
            reshapes.setdefault(layer.bottom[0], []).append(layer)
    for layer in net.layer:
        if not _is_class_layer(layer):
            continue
        if layer.type in ("Convolution", "Deconvolution"):
            cp = layer.convolution_param
            old = cp.num_output
            if cp.group > 1 and cp.group == old:
                cp.group = n_classes
            cp.num_output = n_classes
            changed.append(layer.name)
        elif layer.type == "InnerProduct":
            targets = [r for top in layer.top for r in reshapes.get(top, [])]
            ip = layer.inner_product_param
            if not targets:
                ip.num_output = n_classes
                changed.append(layer.name)
                continue
            spatial = None
            for reshape in targets:
                dims = list(reshape.reshape_param.shape.dim)
                axis = reshape.reshape_param.axis
                if len(dims) < 3 or axis != 0 or any(d <= 0 for d in dims[2:]):
                    raise DeriveError("layer %r reshapes %r with dims %s: cannot tell its class "
                                      "and spatial dimensions (expected 0 x classes x H x W)"
                                      % (reshape.name, layer.name, dims))
                size = 1
                for d in dims[2:]:
                    size *= d
                if spatial not in (None, size):
                    raise DeriveError("layer %r feeds Reshapes of different spatial sizes" % layer.name)
                spatial = size
                if dims[1] != -1:  # -1: Caffe infers it from num_output
                    reshape.reshape_param.shape.dim[1] = n_classes
                changed.append(reshape.name)
            ip.num_output = n_classes * spatial
            changed.append(layer.name)
    return changed


def data_batch_size(net, state):
    for layer in net.layer:
        if layer.type == "Data" and layer_in_state(layer, *state):
            return layer.data_param.batch_size
    return None


# -- solver derivation ----------------------------------------------------------------------------

def _interval(epochs_between, iters_per_epoch, max_iter, fallback):
    """DIGITS: an interval in epochs → iterations (>= 1, < max_iter, else ``fallback``)."""
    value = epochs_between * iters_per_epoch
    if 0 < value <= 1:
        return 1
    if 1 < value < max_iter:
        return int(value)
    return fallback


def derive_solver(train_count, val_count, batch_size, val_batch_size, options):
    """SolverParameter from the dataset counts, batch sizes and the form's solver options.

    options: epochs (default 30), iter_size (batch accumulation, 1), snapshot_interval and
    val_interval in epochs (1), base_lr (0.01), solver_type (SGD), lr_policy (dict with
    policy + DIGITS' percentages: stepsize, stepvalue "a,b", gamma, power), weight_decay
    (default base_lr/100), momentum (0.9 unless AdaGrad/RMSProp), rms_decay, random_seed.
    """
    s = caffe_pb2.SolverParameter()
    epochs = int(options.get("epochs", 30))
    if epochs < 1:
        raise DeriveError("epochs must be at least 1")
    s.iter_size = int(options.get("iter_size") or 1)
    if batch_size < 1:
        raise DeriveError("batch size must be at least 1")
    if train_count < 1:
        raise DeriveError("the dataset has no training records")
    # A job on N GPUs reads N batches per iteration (one per rank, jobs/ranks.py): N times fewer
    # iterations make an epoch.
    from caffeseg.jobs.gpus import devices_of
    per_epoch = int(math.ceil(float(train_count) / (batch_size * s.iter_size * devices_of(options))))
    s.max_iter = per_epoch * epochs
    s.snapshot = _interval(float(options.get("snapshot_interval", 1)), per_epoch, s.max_iter, 0)
    s.snapshot_prefix = "snapshot"
    if val_count and val_batch_size and float(options.get("val_interval", 1)):
        s.test_iter.append(int(math.ceil(float(val_count) / val_batch_size)))
        s.test_interval = _interval(float(options.get("val_interval", 1)), per_epoch, s.max_iter, s.max_iter)
        s.test_state.add().stage.append("val")
    s.train_state.stage.append("train")

    s.base_lr = float(options.get("base_lr", 0.01))
    policy = dict(options.get("lr_policy") or {"policy": "fixed"})
    name = policy.get("policy", "fixed")
    if name not in LR_POLICIES:
        raise DeriveError("unknown lr_policy %r (one of %s)" % (name, ", ".join(LR_POLICIES)))
    s.lr_policy = name
    scale = s.max_iter / 100.0  # policy numbers are given in % of training
    if name == "step":
        s.stepsize = int(math.ceil(float(policy.get("stepsize", 33)) * scale))
        s.gamma = float(policy.get("gamma", 0.1))
    elif name == "multistep":
        for value in str(policy.get("stepvalue", "50,85")).split(","):
            s.stepvalue.append(int(math.ceil(float(value) * scale)))
        s.gamma = float(policy.get("gamma", 0.1))
    elif name == "exp":
        s.gamma = math.pow(float(policy.get("gamma", 0.95)), 1.0 / scale)
    elif name == "inv":
        s.gamma = float(policy.get("gamma", 0.1)) / scale
        s.power = float(policy.get("power", 0.5))
    elif name == "poly":
        s.power = float(policy.get("power", 3))
    elif name == "sigmoid":
        s.gamma = -1.0 * float(policy.get("gamma", 0.1)) / scale
        s.stepsize = int(math.ceil(float(policy.get("stepsize", 50)) * scale))

    solver_type = options.get("solver_type", "SGD")
    if solver_type not in SOLVER_TYPES:
        raise DeriveError("unknown solver type %r (one of %s)" % (solver_type, ", ".join(SOLVER_TYPES)))
    s.type = solver_type
    if solver_type not in _NO_MOMENTUM:
        s.momentum = float(options.get("momentum", 0.9))
    if solver_type == "RMSProp":
        s.rms_decay = float(options.get("rms_decay", 0.99))
    wd = options.get("weight_decay")
    s.weight_decay = s.base_lr / 100.0 if wd in (None, "") else float(wd)
    # DIGITS: display 8x per epoch, or once per 5000 images, whichever is more frequent.
    s.display = max(1, min(int(math.floor(float(s.max_iter) / (epochs * 8))),
                           int(math.ceil(5000.0 / (batch_size * s.iter_size)))))
    if options.get("random_seed") not in (None, ""):
        s.random_seed = int(options["random_seed"])
    s.net = "train_val.prototxt"
    return s


def sweep(values):
    """'0.01, 0.001' → [0.01, 0.001]; a number → [number]; used for base_lr and batch_size."""
    if isinstance(values, (list, tuple)):
        return list(values)
    if isinstance(values, str):
        return [v.strip() for v in values.split(",") if v.strip()]
    return [values]
