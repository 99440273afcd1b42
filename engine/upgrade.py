"""Upgrades of old Caffe net and solver definitions to the current schema.

Caffe applies the same chain (``UpgradeNetAsNeeded``) to every NetParameter it reads,
prototxt or caffemodel alike, in this order:

1. V0 -> V1: ``layers { layer { type: "conv" ... } }`` becomes a V1 layer with an enum type;
   separate "padding" layers are folded into the ``pad`` of the conv/pool layer they feed.
2. Data transformation: V1 DATA / IMAGE_DATA / WINDOW_DATA layers move ``scale``, ``mean_file``,
   ``crop_size`` and ``mirror`` from their own parameter into ``transform_param``.
3. V1 -> current: ``layers`` (field 2) become ``layer`` (field 100) with type strings and
   ``ParamSpec`` entries built from ``blobs_lr`` / ``weight_decay`` / ``param`` / ``blob_share_mode``.
4. Legacy inputs: ``input`` + ``input_shape``/``input_dim`` become an ``Input`` layer at the front.
5. BatchNorm: a BatchNorm layer that declares exactly 3 ``param`` gets lr_mult = decay_mult = 0.

Solvers get the ``solver_type`` enum -> ``type`` string conversion.

Every function here works on the protobuf message in place and returns the list of warnings
(things Caffe reports as incompatibilities but does not treat as fatal).
"""

from caffeseg.engine.proto import caffe_pb2


class UpgradeError(ValueError):
    """A legacy definition that Caffe itself would refuse to upgrade."""


# V1 LayerType enum name (caffe.proto's V1LayerParameter.LayerType) -> type string of the current format.
V1_TYPE_TO_STRING = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# V0 lowercase type string -> V1 LayerType enum name (Caffe's UpgradeV0LayerType).
V0_TYPE_TO_V1 = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

SOLVER_TYPE_TO_STRING = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}

_V1 = caffe_pb2.V1LayerParameter


def upgrade_net(net):
    """Apply Caffe's whole upgrade chain to ``net`` in place; return the warnings."""
    warnings = []
    if any(v1.HasField("layer") for v1 in net.layers):
        warnings += upgrade_v0_net(net)
    if net_needs_data_upgrade(net):
        upgrade_data_transformation(net)
    if len(net.layers):
        warnings += upgrade_v1_net(net)
    if len(net.input):
        upgrade_net_input(net)
    upgrade_batch_norm(net)
    return warnings


# ---------------------------------------------------------------- V0 -> V1

def upgrade_v0_net(net):
    """Turn V0 layers (``layers { layer {...} }``) into V1 layers, folding padding layers."""
    warnings = []
    _fold_v0_padding_layers(net)
    for v1 in net.layers:
        if v1.HasField("layer"):
            warnings += _upgrade_v0_layer(v1)
    return warnings


def _fold_v0_padding_layers(net):
    """Caffe's UpgradeV0PaddingLayers: a conv/pool whose input was last written by a "padding"
    layer reads that layer's input instead and takes its ``pad``; padding layers disappear."""
    last_producer = {}  # blob name -> V1 layer that wrote it last
    kept = []
    for v1 in net.layers:
        v0 = v1.layer
        new = _V1()
        new.CopyFrom(v1)
        for i, bottom in enumerate(v1.bottom):
            source = last_producer.get(bottom)
            if source is None or source.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise UpgradeError(
                    'V0 padding layer "%s" feeds layer "%s" of type "%s"; only conv and pool '
                    'layers can absorb padding' % (source.layer.name, v0.name, v0.type))
            if len(v1.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                raise UpgradeError('V0 padding layer "%s" and the layer "%s" it feeds must each '
                                   'have exactly one input' % (source.layer.name, v0.name))
            new.layer.pad = source.layer.pad
            new.bottom[i] = source.bottom[0]
        if v0.type != "padding":
            kept.append(new)
        for top in v1.top:
            last_producer[top] = v1
    del net.layers[:]
    net.layers.extend(kept)


def _upgrade_v0_layer(v1):
    """Move the fields of ``v1.layer`` (V0) into the V1 message ``v1`` (UpgradeV0LayerParameter)."""
    v0 = caffe_pb2.V0LayerParameter()
    v0.CopyFrom(v1.layer)
    v1.ClearField("layer")
    warnings = []
    t = v0.type

    def bad(field):
        warnings.append('V0 field "%s" is not used by V0 layer "%s" of type "%s"; dropped'
                        % (field, v0.name, t))

    if v0.HasField("name"):
        v1.name = v0.name
    if v0.HasField("type"):
        if t not in V0_TYPE_TO_V1:
            raise UpgradeError('unknown V0 layer type "%s" in layer "%s"' % (t, v0.name))
        v1.type = _V1.LayerType.Value(V0_TYPE_TO_V1[t])
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)

    conv, ip, pool = v1.convolution_param, v1.inner_product_param, v1.pooling_param
    if v0.HasField("num_output"):
        if t == "conv":
            conv.num_output = v0.num_output
        elif t == "innerproduct":
            ip.num_output = v0.num_output
        else:
            bad("num_output")
    if v0.HasField("biasterm"):
        if t == "conv":
            conv.bias_term = v0.biasterm
        elif t == "innerproduct":
            ip.bias_term = v0.biasterm
        else:
            bad("biasterm")
    for filler in ("weight_filler", "bias_filler"):
        if v0.HasField(filler):
            if t == "conv":
                getattr(conv, filler).CopyFrom(getattr(v0, filler))
            elif t == "innerproduct":
                getattr(ip, filler).CopyFrom(getattr(v0, filler))
            else:
                bad(filler)
    for v0_field, conv_field, pool_field in (("pad", "pad", "pad"),
                                             ("kernelsize", "kernel_size", "kernel_size"),
                                             ("stride", "stride", "stride")):
        if v0.HasField(v0_field):
            value = getattr(v0, v0_field)
            if t == "conv":
                getattr(conv, conv_field).append(value)
            elif t == "pool":
                setattr(pool, pool_field, value)
            else:
                bad(v0_field)
    if v0.HasField("group"):
        if t == "conv":
            conv.group = v0.group
        else:
            bad("group")
    if v0.HasField("pool"):
        if t == "pool":
            pool.pool = v0.pool  # same numbering: MAX 0, AVE 1, STOCHASTIC 2
        else:
            bad("pool")
    if v0.HasField("dropout_ratio"):
        if t == "dropout":
            v1.dropout_param.dropout_ratio = v0.dropout_ratio
        else:
            bad("dropout_ratio")
    for field in ("local_size", "alpha", "beta", "k"):
        if v0.HasField(field):
            if t == "lrn":
                setattr(v1.lrn_param, field, getattr(v0, field))
            else:
                bad(field)

    data_params = {"data": v1.data_param, "images": v1.image_data_param,
                   "window_data": v1.window_data_param}
    if v0.HasField("source"):
        targets = dict(data_params, hdf5_data=v1.hdf5_data_param,
                       infogain_loss=v1.infogain_loss_param)
        if t in targets:
            targets[t].source = v0.source
        else:
            bad("source")
    # Caffe sends these to transform_param whatever the layer type.
    for v0_field, field in (("scale", "scale"), ("meanfile", "mean_file"),
                            ("cropsize", "crop_size"), ("mirror", "mirror")):
        if v0.HasField(v0_field):
            setattr(v1.transform_param, field, getattr(v0, v0_field))
    if v0.HasField("batchsize"):
        targets = dict(data_params, hdf5_data=v1.hdf5_data_param)
        if t in targets:
            targets[t].batch_size = v0.batchsize
        else:
            bad("batchsize")
    if v0.HasField("rand_skip"):
        if t == "data":
            v1.data_param.rand_skip = v0.rand_skip
        elif t == "images":
            v1.image_data_param.rand_skip = v0.rand_skip
        else:
            bad("rand_skip")
    if v0.HasField("shuffle_images"):
        if t == "images":
            v1.image_data_param.shuffle = v0.shuffle_images
        else:
            bad("shuffle_images")
    for field in ("new_height", "new_width"):
        if v0.HasField(field):
            if t == "images":
                setattr(v1.image_data_param, field, getattr(v0, field))
            else:
                bad(field)
    if v0.HasField("concat_dim"):
        if t == "concat":
            v1.concat_param.concat_dim = v0.concat_dim
        else:
            bad("concat_dim")
    for v0_field, field in (("det_fg_threshold", "fg_threshold"),
                            ("det_bg_threshold", "bg_threshold"),
                            ("det_fg_fraction", "fg_fraction"),
                            ("det_context_pad", "context_pad"),
                            ("det_crop_mode", "crop_mode")):
        if v0.HasField(v0_field):
            if t == "window_data":
                setattr(v1.window_data_param, field, getattr(v0, v0_field))
            else:
                bad(v0_field)
    if v0.HasField("hdf5_output_param"):
        if t == "hdf5_output":
            v1.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
        else:
            bad("hdf5_output_param")
    # Sub-messages touched above but left empty must not appear as "present".
    for field in ("convolution_param", "inner_product_param", "pooling_param"):
        if not getattr(v1, field).ListFields():
            v1.ClearField(field)
    return warnings


# ---------------------------------------------------- data transformation

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_PARAM_OF_V1_TYPE = {
    _V1.DATA: "data_param",
    _V1.IMAGE_DATA: "image_data_param",
    _V1.WINDOW_DATA: "window_data_param",
}


def net_needs_data_upgrade(net):
    for v1 in net.layers:
        field = _DATA_PARAM_OF_V1_TYPE.get(v1.type)
        if field and v1.HasField(field):
            param = getattr(v1, field)
            if any(param.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def upgrade_data_transformation(net):
    """Move deprecated transform fields of V1 data layers into ``transform_param``."""
    for v1 in net.layers:
        field = _DATA_PARAM_OF_V1_TYPE.get(v1.type)
        if not field or not v1.HasField(field):
            continue
        param = getattr(v1, field)
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(v1.transform_param, name, getattr(param, name))
                param.ClearField(name)


# ---------------------------------------------------------- V1 -> current

_LAYER_FIELDS = set(caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name)


def upgrade_v1_net(net):
    """Replace ``net.layers`` (V1) by ``net.layer`` entries (UpgradeV1Net)."""
    if len(net.layer):
        raise UpgradeError("the net has both the current 'layer' field and the legacy "
                           "'layers' field; Caffe refuses such a file. Use one of them.")
    warnings = []
    converted = []
    for v1 in net.layers:
        layer = caffe_pb2.LayerParameter()
        warnings += upgrade_v1_layer(v1, layer)
        converted.append(layer)
    net.ClearField("layers")
    net.layer.extend(converted)
    return warnings


def upgrade_v1_layer(v1, layer):
    """Fill ``layer`` (LayerParameter) from ``v1`` (V1LayerParameter); return warnings."""
    warnings = []
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPE_TO_STRING[_V1.LayerType.Name(v1.type)]
    layer.blobs.extend(v1.blobs)

    def param(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param(i).share_mode = mode  # STRICT 0 / PERMISSIVE 1 in both enums
    for i, lr in enumerate(v1.blobs_lr):
        param(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)

    for descriptor, value in v1.ListFields():
        name = descriptor.name
        if name.endswith("_param") and name in _LAYER_FIELDS:
            getattr(layer, name).CopyFrom(value)
    if v1.HasField("layer"):
        warnings.append('layer "%s" still holds a V0 "layer" field; ignored' % v1.name)
    return warnings


# ---------------------------------------------------------- legacy inputs

def upgrade_net_input(net):
    """Turn ``input``/``input_shape``/``input_dim`` into a leading Input layer (UpgradeNetInput)."""
    n_inputs = len(net.input)
    if len(net.input_dim) or len(net.input_shape):
        has_shape = len(net.input_shape) > 0
        if has_shape and len(net.input_shape) < n_inputs:
            raise UpgradeError("the net declares %d input(s) but only %d input_shape(s)"
                               % (n_inputs, len(net.input_shape)))
        if not has_shape and len(net.input_dim) < 4 * n_inputs:
            raise UpgradeError("the net declares %d input(s) and needs 4 input_dim values per "
                               "input (%d), but has %d"
                               % (n_inputs, 4 * n_inputs, len(net.input_dim)))
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        others = list(net.layer)
        del net.layer[:]
        net.layer.append(layer)
        net.layer.extend(others)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


# --------------------------------------------------------------- BatchNorm

def upgrade_batch_norm(net):
    """Old BatchNorm definitions listed 3 params; their statistics must never be learned."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ------------------------------------------------------------------ solver

def upgrade_solver(solver):
    """Convert the deprecated ``solver_type`` enum into the ``type`` string."""
    if not solver.HasField("solver_type"):
        return
    if solver.HasField("type"):
        raise UpgradeError("the solver sets both the deprecated 'solver_type' and 'type'; "
                           "keep only 'type'")
    name = caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)
    solver.type = SOLVER_TYPE_TO_STRING[name]
    solver.ClearField("solver_type")
