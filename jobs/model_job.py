"""Writing a model job's folder: original/train_val/deploy/solver prototxts and job.json.

A model job is made from a dataset job + a network (a file from ``prototxt/``, a previous
model job's ``original.prototxt``, or custom text) + solver options. Everything the runner
needs is written here, once, so the runner itself stays a thin pycaffe-API loop.
"""
import json
import os
import shutil

from caffeseg.engine.prototxt import PrototxtError, format_message, parse_net
from caffeseg.jobs import derive, model_options, netcheck, resources
from caffeseg.jobs.paths import atomic_write, atomic_write_json


class ModelJobError(ValueError):
    """Bad model-job options; ``field`` names the form field when there is one, ``line`` and
    ``column`` the place of a syntax error in the network text."""

    line = column = None

    def __init__(self, message, field=None):
        ValueError.__init__(self, message)
        self.field = field
        self.field_errors = {field: message} if field else None


def network_text(options, root=None):
    """The original network text from options: network_text, standard_network or previous_job."""
    if options.get("network_text"):
        return options["network_text"], "custom network"
    if options.get("standard_network"):
        path = resources.network_path(os.path.basename(options["standard_network"]))
        if not os.path.isfile(path):
            raise ModelJobError("no standard network %r in %s" % (os.path.basename(path), resources.networks_dir()),
                                "standard_network")
        with open(path) as f:
            return f.read(), path
    if options.get("previous_job_dir"):
        path = os.path.join(options["previous_job_dir"], "original.prototxt")
        with open(path) as f:
            return f.read(), path
    raise ModelJobError("choose a network: a standard network, a previous model or custom text", "network")


def job_warnings(job_dir):
    """The warnings the option check left on a model job (job.json ``warnings``), or []."""
    try:
        with open(os.path.join(job_dir, "job.json")) as f:
            return list(json.load(f).get("warnings") or [])
    except (OSError, ValueError, AttributeError):
        return []


def data_roots():
    """Folders beside the job and its dataset that a network may name files in: the web's
    DATA_ROOTS setting, shared through the environment (``CAFFESEG_DATA_ROOTS``, ':'-separated)."""
    raw = os.environ.get("CAFFESEG_DATA_ROOTS", "")
    return [os.path.abspath(os.path.expanduser(p)) for p in raw.split(os.pathsep) if p]


def write_model_job(job_dir, dataset_dir, options):
    """Derive and write all files of a model job; returns the SolverParameter."""
    text, source = network_text(options)
    try:
        original = parse_net(text, source=source)
    except PrototxtError as exc:
        where = source if source == "custom network" else os.path.basename(source)
        if exc.line:
            where += ", line %d" % exc.line + (", column %d" % exc.column if exc.column else "")
        err = ModelJobError("%s: %s" % (where, exc.message), "network")
        err.line, err.column = exc.line, exc.column  # the API's JSON error has them (docs/WEB.md)
        raise err
    facts = derive.DatasetFacts.load(dataset_dir)
    try:
        model_options.check_model_options(options)
        train_val, deploy = derive.derive_networks(original, facts, options)
        batch = derive.data_batch_size(train_val, derive.TRAIN_STATE)
        val_batch = derive.data_batch_size(train_val, derive.VAL_STATE)
        warnings = model_options.check_against_dataset(facts.train_count, facts.val_count, batch, val_batch,
                                                       options)
        solver = derive.derive_solver(facts.train_count, facts.val_count if val_batch else 0, batch,
                                      val_batch or 0, options)
    except model_options.ModelOptionError as exc:
        raise ModelJobError(str(exc), exc.field)
    except derive.DeriveError as exc:
        raise ModelJobError(str(exc))
    problem = backend_storage_problem(facts.info.info, options.get("backend"))
    if problem:
        raise ModelJobError(problem, "backend")
    try:
        netcheck.check_file_paths(train_val, os.path.abspath(job_dir), [os.path.abspath(dataset_dir)] + data_roots())
    except netcheck.NetworkPathError as exc:
        raise ModelJobError(str(exc), "network")
    try:
        netcheck.check_layer_types(train_val, options.get("backend"))
        param_shapes = netcheck.deploy_param_shapes(deploy)
    except netcheck.NetworkCheckError as exc:
        raise ModelJobError("the network cannot be built for this dataset (%dx%dx%d): %s"
                            % (facts.channels, facts.height, facts.width, exc), "network")
    os.makedirs(job_dir, exist_ok=True)
    atomic_write(os.path.join(job_dir, "original.prototxt"), text)
    atomic_write(os.path.join(job_dir, "train_val.prototxt"), format_message(train_val))
    atomic_write(os.path.join(job_dir, "deploy.prototxt"), format_message(deploy))
    atomic_write(os.path.join(job_dir, "solver.prototxt"), format_message(solver))
    given = _python_layer_files(options)
    for path in given + _bundled_python_layers(original, given):
        shutil.copy2(path, os.path.join(job_dir, os.path.basename(path)))
    weights = options.get("pretrained") or []
    if weights:
        report = check_pretrained(train_val, weights if isinstance(weights, list) else [weights], facts.channels,
                                  param_shapes)
        atomic_write_json(os.path.join(job_dir, "pretrained_report.json"), report)
        if report["mismatches"]:
            raise ModelJobError("pretrained weights do not fit the network: " + "; ".join(report["mismatches"]),
                                "pretrained")
        if not report["matched"]:
            # copy_from matches by layer name: nothing would be loaded, the net would train from
            # scratch while the log says "loaded weights"
            names = report["unused"][:6]
            raise ModelJobError(
                "no layer of the pretrained weights matches a layer of this network by name (Caffe's "
                "copy_from matches names), so nothing would be loaded; the weights have %s; rename the "
                "network's layers to match, or train without pretrained weights"
                % (("layers " + ", ".join(names) + (", ..." if len(report["unused"]) > 6 else ""))
                   if names else "no layer with weights"), "pretrained")
    atomic_write_json(os.path.join(job_dir, "job.json"), {
        "epochs": int(options.get("epochs", 30)), "dataset_dir": os.path.abspath(dataset_dir),
        "network_source": source, "options": _jsonable(options), "max_iter": solver.max_iter,
        "classes": facts.classes, "mean": options.get("mean", "none"), "warnings": warnings})
    if warnings:
        with open(os.path.join(job_dir, "log.txt"), "a") as log:
            log.write("".join("warning: %s\n" % w for w in warnings))
    return solver


def backend_storage_problem(info, backend):
    """Why ``backend`` cannot read the dataset described by ``info`` (dataset.json), or None.

    BVLC Caffe's Data layer decodes encoded Datums into 8-bit OpenCV images only: a 16-bit PNG
    dataset stops it ("Image data type must be unsigned byte"), while the engine reads it."""
    feature = info.get("feature") or {}
    if backend == "pycaffe" and feature.get("storage") == "png" and feature.get("dtype") not in ("uint8", None):
        return ("real Caffe cannot read this dataset: its %s images are stored as PNG, and Caffe's Data layer "
                "decodes 8-bit images only. Train it on the engine, or build the dataset again with "
                "feature encoding 'none' (exact values) for real Caffe" % feature.get("dtype"))
    return None


def _python_layer_files(options):
    files = options.get("python_layer_files") or []
    if isinstance(files, str):
        files = [files]
    for path in files:
        if not os.path.isfile(path):
            raise ModelJobError("python layer file %s does not exist" % path, "python_layer_file")
    return files


def _jsonable(options):
    return json.loads(json.dumps(options, default=str))


def _bundled_python_layers(net, given):
    """Python layer modules the network names that ship in python_layers/ (e.g. the lab's Dice)."""
    have = {os.path.splitext(os.path.basename(p))[0] for p in given}
    found = []
    for layer in net.layer:
        if layer.type == "Python" and layer.python_param.module not in have:
            path = resources.python_layer_file(layer.python_param.module)
            if path:
                found.append(path)
                have.add(layer.python_param.module)
    return found


def channel_mismatch_advice(layer, data_channels, weight_channels, path):
    """Every way out of a first convolution whose input channels differ from the dataset's."""
    def channels(n):
        return "%d channel%s%s" % (n, "" if n == 1 else "s", {1: " (gray)", 3: " (RGB)"}.get(n, ""))
    ways = []
    surgery = {(1, 3): "rgb-to-gray", (3, 1): "gray-to-rgb"}.get((data_channels, weight_channels))
    if surgery:
        out = "%s_%s.caffemodel" % (os.path.splitext(path)[0], surgery.split("-")[-1])
        ways.append("convert them on the server with 'caffeseg surgery %s %s %s' and give %s as the "
                    "pretrained model" % (surgery, path, out, os.path.basename(out)))
    ways.append("use weights made for %d-channel data (upload them on the Pretrained Models tab)" % data_channels)
    ways.append("build the dataset with %s instead (Clone it, channel conversion %s)"
                % (channels(weight_channels), {1: "L", 3: "RGB"}.get(weight_channels, "?")))
    return ("%s: the data has %s, the weights in %s were made for %s. Ways out: %s"
            % (layer, channels(data_channels), path, channels(weight_channels),
               "; ".join("(%d) %s" % (i + 1, way) for i, way in enumerate(ways))))


def check_pretrained(net, weight_files, data_channels, param_shapes=None):
    """Compare pretrained blobs with the network's layers, by name (how copy_from matches), and
    with ``param_shapes`` ({layer: [blob shapes]} of the built net, see ``jobs.netcheck``) blob by
    blob when given.

    Returns {"matched": [...], "unused": [...], "mismatches": [...]}; a mismatch message offers
    the channel surgeries (``caffeseg surgery rgb-to-gray|gray-to-rgb``) or the classifier→FCN surgery.
    """
    from caffeseg.engine.blobproto import stored_shape
    from caffeseg.engine.caffemodel import read_caffemodel
    layers = {l.name: l for l in net.layer}
    first_conv = next((l.name for l in net.layer if l.type == "Convolution"), None)
    report = {"matched": [], "unused": [], "mismatches": []}
    for path in weight_files:
        try:
            model = read_caffemodel(path)
        except (OSError, ValueError) as exc:
            report["mismatches"].append("%s cannot be read (%s)" % (path, exc))
            continue
        for src in model.layer:
            if not len(src.blobs):
                continue
            dst = layers.get(src.name)
            if dst is None:
                report["unused"].append(src.name)
                continue
            shape = stored_shape(src.blobs[0])
            problem = None
            if dst.type in ("Convolution", "Deconvolution"):
                cp = dst.convolution_param
                if len(shape) != 4:
                    problem = ("%s is a %s here but %s holds a %d-D weight (%s): convert the classifier with "
                               "'caffeseg surgery alexnet-fcn|vgg16-fcn8s'" % (src.name, dst.type, path, len(shape), src.type))
                elif dst.type == "Convolution" and cp.HasField("num_output") and shape[0] != cp.num_output:
                    problem = "%s: %d outputs here, %d in %s" % (src.name, cp.num_output, shape[0], path)
                elif src.name == first_conv and shape[1] != data_channels and not cp.group > 1:
                    problem = channel_mismatch_advice(src.name, data_channels, shape[1], path)
            elif dst.type == "InnerProduct" and dst.inner_product_param.num_output != shape[0]:
                problem = "%s: %d outputs here, %d in %s" % (src.name, dst.inner_product_param.num_output, shape[0], path)
            if problem is None and param_shapes is not None and src.name in param_shapes:
                problem = netcheck.param_mismatch(src.name, src.blobs, param_shapes[src.name], path)
            if problem:
                report["mismatches"].append(problem)
            else:
                report["matched"].append(src.name)
    return report
