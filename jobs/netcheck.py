"""Check a model job's network at creation by building its deploy net with the engine.

Building runs Caffe's construction rules (layer types, bottom/top wiring, every layer's shape
checks, e.g. a kernel larger than its input) and gives every parameter blob's shape, so pretrained
weights can be compared blob by blob with what ``copy_from`` will need (Caffe's
``CopyTrainedLayersFrom``: same blob count, ``Blob::ShapeEquals``) before anything is queued.

The build happens in the server process, so it never imports user code: a deploy net with a
Python layer is not built here (its shapes are checked when the runner builds the net).
"""
from caffeseg.engine.blobproto import shape_equals, stored_shape

SHAPE_UNKNOWN_REASON = "the network has a Python layer (built only by the runner)"


class NetworkCheckError(ValueError):
    """The deploy net cannot be built; the message names the layer and Caffe's rule."""


# Float32 elements (blobs + weights) a network built in the server process may allocate: 2 GiB.
MAX_BUILD_ELEMENTS = 2 ** 29


def _pair(values, default):
    values = list(values)
    if not values:
        return default, default
    return (values[0], values[1]) if len(values) > 1 else (values[0], values[0])


def memory_bound(net):
    """An upper bound of the float32 elements building ``net`` (batch as declared) allocates:
    tops and weights of every layer, from a spatial-size walk that never underestimates
    (padding counted, kernels ignored where they would shrink). Layers it does not model keep the
    largest of their bottoms, which holds for element-wise, activation, crop and loss layers."""
    shapes = {}  # blob → (n, c, h, w)
    total = 0
    for layer in net.layer:
        bottoms = [shapes[b] for b in layer.bottom if b in shapes]
        # the largest bottom (by elements) is what an unmodelled layer's tops are bounded by
        n, c, h, w = max(bottoms, key=lambda x: x[0] * x[1] * x[2] * x[3]) if bottoms else (1, 1, 1, 1)
        weights = 0
        kind = layer.type
        if kind == "Input":
            for top, shape in zip(layer.top, layer.input_param.shape):
                dims = tuple(int(d) for d in (list(shape.dim) + [1, 1, 1, 1])[:4])
                shapes[top] = dims
                total += dims[0] * dims[1] * dims[2] * dims[3]
            continue
        if kind in ("Convolution", "Deconvolution"):
            p = layer.convolution_param
            kh, kw = (p.kernel_h, p.kernel_w) if p.kernel_h else _pair(p.kernel_size, 1)
            sh, sw = (p.stride_h, p.stride_w) if p.stride_h else _pair(p.stride, 1)
            ph, pw = (p.pad_h, p.pad_w) if p.pad_h else _pair(p.pad, 0)
            sh, sw = max(1, sh), max(1, sw)
            if kind == "Deconvolution":
                h, w = sh * h + kh, sw * w + kw
            else:
                h, w = (h + 2 * ph) // sh + 1, (w + 2 * pw) // sw + 1
            weights = p.num_output * (c // max(1, p.group) or 1) * max(1, kh) * max(1, kw) + p.num_output
            c = p.num_output
        elif kind == "Pooling":
            p = layer.pooling_param
            if not p.global_pooling:
                sh, sw = (p.stride_h, p.stride_w) if p.stride_h else (p.stride or 1, p.stride or 1)
                ph, pw = (p.pad_h, p.pad_w) if p.pad_h else (p.pad, p.pad)
                h, w = (h + 2 * ph) // max(1, sh) + 1, (w + 2 * pw) // max(1, sw) + 1
            else:
                h, w = 1, 1
        elif kind == "InnerProduct":
            weights = layer.inner_product_param.num_output * c * h * w
            c, h, w = layer.inner_product_param.num_output, 1, 1
        elif kind == "Concat":  # along channels (Caffe's default axis): the channels add up
            c = sum(x[1] for x in bottoms) or c
        elif kind == "Eltwise" or kind.endswith("Loss") or kind in ("Accuracy", "Crop"):
            n, c, h, w = bottoms[0] if bottoms else (n, c, h, w)  # never larger than the first bottom
        elif kind == "Tile":
            c *= max(1, layer.tile_param.tiles)
        elif kind == "DummyData":
            for top, shape in zip(layer.top, layer.dummy_data_param.shape):
                dims = tuple(int(d) for d in (list(shape.dim) + [1, 1, 1, 1])[:4])
                shapes[top] = dims
                total += dims[0] * dims[1] * dims[2] * dims[3]
            continue
        elif kind == "Im2col":
            p = layer.convolution_param
            kh, kw = (p.kernel_h, p.kernel_w) if p.kernel_h else _pair(p.kernel_size, 1)
            c *= max(1, kh) * max(1, kw)
        elif kind == "Embed":
            p = layer.embed_param
            weights = p.input_dim * p.num_output
            c, h, w = c * h * w, p.num_output, 1
        total += weights
        for top in layer.top:
            shapes[top] = (n, c, h, w)
            total += n * c * h * w
    return total


def deploy_param_shapes(deploy):
    """{layer name: [shape of each parameter blob]} of the deploy NetParameter, or None when the
    net is not built here (see SHAPE_UNKNOWN_REASON). Raises NetworkCheckError."""
    if any(layer.type == "Python" for layer in deploy.layer):
        return None
    estimate = memory_bound(deploy)
    if estimate > MAX_BUILD_ELEMENTS:  # the engine allocates every top at construction
        raise NetworkCheckError("building it would need about %.1f GiB (blobs and weights, float32), more "
                                "than the %.0f GiB a network is built with here; check num_output and the "
                                "input size" % (estimate * 4.0 / 2 ** 30, MAX_BUILD_ELEMENTS * 4.0 / 2 ** 30))
    from caffeseg import engine
    from caffeseg.engine.layer_types.base import LayerError
    from caffeseg.engine.net import NetError
    try:
        net = engine.Net.from_param(deploy, engine.TEST)
    except (NetError, LayerError, ValueError, RuntimeError) as exc:
        raise NetworkCheckError(str(exc)) from None
    return {name: [tuple(blob.shape) for blob in blobs] for name, blobs in net.params.items()}


def _shape_text(shape):
    return "x".join(str(d) for d in shape) or "scalar"


def param_mismatch(layer, stored_blobs, expected_shapes, path):
    """Why ``stored_blobs`` (BlobProtos of one layer in ``path``) cannot fill a layer whose
    parameter blobs have ``expected_shapes``; None when they fit."""
    if len(stored_blobs) != len(expected_shapes):
        return ("%s: %s holds %d blob(s), the network's layer has %d (Caffe: 'Incompatible number of "
                "blobs')" % (layer, path, len(stored_blobs), len(expected_shapes)))
    for j, (blob, expected) in enumerate(zip(stored_blobs, expected_shapes)):
        if not shape_equals(blob, expected):
            what = "weight" if j == 0 else "blob %d" % j
            return ("%s: the network's %s is %s, %s holds %s: these weights were made for another "
                    "network (pick the pretrained model made for this one, or rename the layer so it "
                    "starts from its filler)" % (layer, what, _shape_text(expected), path,
                                                 _shape_text(stored_shape(blob))))
    return None


# -- files a network reads or writes -------------------------------------------------------------

# (parameter message, field) of every file path a layer's parameters may name.
PATH_FIELDS = (
    ("transform_param", "mean_file"),
    ("data_param", "source"),
    ("image_data_param", "source"), ("image_data_param", "root_folder"), ("image_data_param", "mean_file"),
    ("window_data_param", "source"), ("window_data_param", "root_folder"), ("window_data_param", "mean_file"),
    ("hdf5_data_param", "source"),
    ("hdf5_output_param", "file_name"),
    ("infogain_loss_param", "source"),
)
# list files: ImageData's (one 'path label' a line), HDF5Data's (paths), WindowData's window file
LIST_FILES = {("image_data_param", "source"), ("hdf5_data_param", "source"), ("window_data_param", "source")}
MAX_LIST_LINES = 100000  # a list file naming more files than this is refused rather than read
MAX_LIST_BYTES = 64 * 1024 * 1024  # ... and one larger than this (it is read whole)


class NetworkPathError(ValueError):
    """A network names a file outside the job folder and the data roots."""


def _inside(path, roots):
    import os
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(r)]) == os.path.realpath(r) for r in roots)


def check_file_paths(net, job_dir, roots):
    """Refuse a network that would read or write a file outside ``job_dir`` and ``roots``.

    Relative paths resolve against the job folder (the runner's working directory, as Caffe
    resolves them against its own); symlinks are followed. Whether a file exists is never said,
    so the message cannot be used to probe the server's disk. The files named by ImageData /
    HDF5Data list files and WindowData window files inside the roots are checked the same way,
    read as the layers read them (_list_entries). Raises NetworkPathError naming the layer and
    field."""
    import os
    allowed = [job_dir] + [r for r in roots if r]

    def where(p):
        return p if os.path.isabs(p) else os.path.join(job_dir, p)

    def refuse(layer, field, value, detail=""):
        raise NetworkPathError(
            "layer '%s' %s: %r%s is outside the job folder and the data folders (%s); a network "
            "may only name files of its job or its dataset (the dataset supplies the LMDBs and "
            "the mean: choose mean 'image' or 'pixel')"
            % (layer.name, field, value, detail, ", ".join(allowed)))

    for layer in net.layer:
        for message, field in PATH_FIELDS:
            if not layer.HasField(message):
                continue
            params = getattr(layer, message)
            if field not in params.DESCRIPTOR.fields_by_name or not params.HasField(field):
                continue
            value = getattr(params, field)
            if not value:
                continue
            name = "%s.%s" % (message, field)
            if not _inside(where(value), allowed):
                refuse(layer, name, value)
            if (message, field) in LIST_FILES and os.path.isfile(where(value)):
                if os.path.getsize(where(value)) > MAX_LIST_BYTES:
                    raise NetworkPathError("layer '%s' %s: %r is larger than %d MiB, more than a list "
                                           "file is read here" % (layer.name, name, value, MAX_LIST_BYTES >> 20))
                root = params.root_folder if message != "hdf5_data_param" else ""
                for n, entry in enumerate(_list_entries(where(value), message), 1):
                    if n > MAX_LIST_LINES:
                        raise NetworkPathError("layer '%s' %s: %r lists more than %d files"
                                               % (layer.name, name, value, MAX_LIST_LINES))
                    if not _inside(where(root + entry), allowed):
                        refuse(layer, name, value, " lists %r, which" % (root + entry))


def _list_entries(path, message):
    """The file names a list file gives, split exactly as the reading layer splits it (engine and
    Caffe), from the raw bytes: a name the layer would read must never escape the check.

    ImageData: each line (split at '\\n' only) up to its last space, the whole line when it has
    none; Caffe keeps a trailing '\\r', the engine drops it, so both are given. HDF5Data: every
    whitespace-separated token (Caffe's ``source_file >> line``). WindowData: the image path after
    each '# index' (then channels, height, width, window count and 6 numbers per window), read
    until the file ends or stops matching that layout, where the layer stops too."""
    import os
    with open(path, "rb") as f:
        raw = f.read()
    if message == "hdf5_data_param":
        for token in raw.split():
            yield os.fsdecode(token)
    elif message == "window_data_param":
        yield from _window_images(raw)
    else:
        for line in raw.split(b"\n"):
            for variant in {line, line.rstrip(b"\r")}:
                if variant.strip():
                    pos = variant.rfind(b" ")
                    yield os.fsdecode(variant[:pos] if pos >= 0 else variant)


def _window_images(raw):
    """The image paths of a window file (layout in _list_entries) as the engine reads them
    (whitespace tokens) and as Caffe's ``std::ifstream >>`` reads them (a number ends where its
    digits end, so '5#' is two tokens there): both readers' paths are checked."""
    import os
    tokens = raw.split()
    i = 0
    while i < len(tokens) and tokens[i] == b"#":
        if i + 2 < len(tokens):
            yield os.fsdecode(tokens[i + 2])
        try:
            count = int(tokens[i + 6])
        except (IndexError, ValueError):
            break  # the engine refuses the file here, before reading another image
        i += 7 + 6 * max(0, count)
    yield from _caffe_window_images(raw)




def _caffe_window_images(raw):
    """Caffe's WindowDataLayer reading loop: '#' index, path, 3 ints, count, count x (int, float,
    4 ints); a failed extraction stops the stream for good (its failbit is sticky)."""
    import os
    import re
    space, text = re.compile(rb"[ \t\n\v\f\r]*"), re.compile(rb"[^ \t\n\v\f\r]+")
    number = {"int": re.compile(rb"[+-]?[0-9]+"),
              "float": re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")}
    pos = [0]

    def skip():
        pos[0] = space.match(raw, pos[0]).end()

    def word():
        skip()
        match = text.match(raw, pos[0])
        if not match:
            raise EOFError
        pos[0] = match.end()
        return match.group()

    def read(kind):
        skip()
        match = number[kind].match(raw, pos[0])
        if not match or (kind == "float" and raw[match.end():match.end() + 1] in (b"e", b"E")):
            raise EOFError  # '1e' without exponent digits fails in libstdc++ too
        pos[0] = match.end()
        return int(match.group()) if kind == "int" else 0

    try:
        word(), read("int")
        while True:
            yield os.fsdecode(word())
            read("int"), read("int"), read("int")
            for _ in range(read("int")):
                read("int"), read("float"), read("int"), read("int"), read("int"), read("int")
            word(), read("int")  # Caffe CHECKs the '#': any other word aborts there
    except EOFError:
        return


# -- layer types the job's backend knows ---------------------------------------------------------

_REAL_CAFFE_TYPES = {}  # RealCaffe description → its layer_type_list(), asked once per process
LAYER_LIST_PROBE = "import json, caffe; print(json.dumps(sorted(caffe.layer_type_list())))"


def backend_layer_types(backend):
    """(name of the backend, the layer types it implements) for a job recorded with ``backend``
    (engine, pycaffe, auto or None), or (name, None) when the list cannot be had here.

    The engine's list is ``engine.layer_types.registered_types()``; real Caffe's is its own
    ``caffe.layer_type_list()``, asked of the located Caffe (``jobs.real_caffe``) in a
    subprocess with its interpreter, since real pycaffe is usually not importable in the server."""
    if backend != "pycaffe":
        from caffeseg.engine.layer_types import registered_types
        return "the engine", set(registered_types())
    import json
    import subprocess
    from caffeseg.jobs import real_caffe
    try:
        found = real_caffe.find_real_caffe()
    except real_caffe.RealCaffeError:
        found = None
    if found is None:
        return "real Caffe", None  # the runner says how to get one
    key = repr(found)
    if key not in _REAL_CAFFE_TYPES:
        import sys
        try:
            proc = subprocess.run([found.python or sys.executable, "-c", LAYER_LIST_PROBE],
                                  env=found.environment(), capture_output=True, universal_newlines=True,
                                  timeout=120)
            lines = proc.stdout.strip().splitlines()
            _REAL_CAFFE_TYPES[key] = set(json.loads(lines[-1])) if proc.returncode == 0 and lines else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            _REAL_CAFFE_TYPES[key] = None
    return "real Caffe", _REAL_CAFFE_TYPES[key]


def check_layer_types(net, backend):
    """NetworkCheckError for the first layer (of every phase and stage: loss layers too, which the
    deploy net leaves out) whose type the job's backend does not implement."""
    name, known = backend_layer_types(backend)
    if known is None:
        return
    for layer in net.layer:
        if layer.type not in known:
            import difflib
            close = difflib.get_close_matches(layer.type, sorted(known), n=2, cutoff=0.8)
            raise NetworkCheckError(
                "layer '%s' has type '%s', which %s does not implement%s (it has %d layer types: %s)"
                % (layer.name, layer.type, name, "; did you mean %s?" % " or ".join(close[:3]) if close else "",
                   len(known), ", ".join(sorted(known))))
