"""Parse a network and build it with the engine to report every blob's shape.

Data layers need LMDB sources that do not exist yet when the user is still writing the network,
so each Data layer is replaced by an Input layer with the dataset's feature shape (or a default)
before the net is built in the TEST phase.

The preview runs inside the web server, so it never imports code from where a user could have
put it: the net is built from memory (no temporary file, whose folder the engine would search
for Python-layer modules), and a Python layer is built only when its module is one of the
project's own ``python_layers/`` files (loaded from that file by path). Any other Python layer,
and every layer fed by its tops, is shown in the graph without shapes, and the note says why.
The text, the layer count and the memory the build would allocate are bounded, since building
costs server time and memory.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from caffeseg import engine
from caffeseg.engine import caffe_shim, prototxt
from caffeseg.engine.proto import caffe_pb2
from caffeseg.jobs import netcheck, resources
from caffeseg.web.backend import BadRequest

DEFAULT_FEATURE_SHAPE = [1, 256, 256]
SOURCE = "custom network"
# Bounds of one preview: the text is parsed (about 2 s per MiB) and every layer is built.
MAX_PREVIEW_BYTES = 512 * 1024
MAX_PREVIEW_LAYERS = 1000
# Float32 elements (blobs + weights) a preview may allocate, estimated before building
# (``jobs.netcheck.memory_bound``), since the engine allocates every top at construction.
MAX_PREVIEW_ELEMENTS = netcheck.MAX_BUILD_ELEMENTS
# Layers whose shapes come from files (or that write them): never built by the preview.
FILE_LAYERS = ("ImageData", "HDF5Data", "WindowData", "HDF5Output", "MemoryData")


def _replace_data_layers(net, feature_shape):
    c, h, w = (list(feature_shape) + DEFAULT_FEATURE_SHAPE)[:3] if feature_shape else DEFAULT_FEATURE_SHAPE
    crop = None
    keep = []
    seen_tops = set()
    for layer in net.layer:
        if layer.type == "Data":
            if layer.transform_param.HasField("crop_size"):
                crop = layer.transform_param.crop_size
            tops = [t for t in layer.top if t not in seen_tops]
            if not tops:
                continue
            seen_tops.update(tops)
            hh, ww = (crop, crop) if crop else (h, w)
            inp = caffe_pb2.LayerParameter(name=layer.name, type="Input")
            for i, top in enumerate(tops):
                inp.top.append(top)
                shape = inp.input_param.shape.add()
                shape.dim.extend([1, c if i == 0 else 1, hh, ww])
            keep.append(inp)
        else:
            keep.append(layer)
    del net.layer[:]
    net.layer.extend(keep)


def inspect(text: str, feature_shape=None) -> dict:
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_PREVIEW_BYTES:
        raise BadRequest(f"{SOURCE}: {size // 1024} KiB is more than the preview reads "
                         f"({MAX_PREVIEW_BYTES // 1024} KiB); shorten the network or create the model "
                         "without a preview", {"network": "too long to preview"})
    try:
        net = prototxt.parse_net(text, source=SOURCE)
    except prototxt.PrototxtError as exc:
        raise _parse_error(exc) from None
    if len(net.layer) > MAX_PREVIEW_LAYERS:
        raise BadRequest(f"{SOURCE}: {len(net.layer)} layers; the preview builds at most "
                         f"{MAX_PREVIEW_LAYERS}", {"network": "too many layers to preview"})
    layers, shown = [], set()
    for l in net.layer:
        if l.type == "Data" and tuple(l.top) in shown:
            continue  # the train and val copies of a Data layer are one box in the graph
        shown.add(tuple(l.top))
        layers.append({"name": l.name, "type": l.type, "bottom": list(l.bottom), "top": list(l.top)})
    _replace_data_layers(net, feature_shape)
    skipped, unknown_blobs, foreign, file_layers = _drop_foreign_python_layers(net)
    estimate = netcheck.memory_bound(net)
    if estimate > MAX_PREVIEW_ELEMENTS:
        raise BadRequest(f"{SOURCE}: building this network would need about {estimate * 4 / 2**30:.1f} GiB "
                         f"(blobs and weights, float32); the preview builds nets up to "
                         f"{MAX_PREVIEW_ELEMENTS * 4 / 2**30:.0f} GiB", {"network": "too large to preview"})
    try:  # DIGITS-style nets select their validation layers with stage "val"
        built = engine.Net.from_param(net, engine.TEST, stages=["val"])
    except Exception as exc:  # a layer's own check: report it beside the editor
        raise _build_error(exc, text) from None
    # Split blobs are Caffe's plumbing (one per extra consumer); the user never named them.
    blobs = {name: list(blob.shape) for name, blob in built.blobs.items()
             if "_split_" not in name and name not in unknown_blobs}
    built_names = set(built._layer_names) | skipped
    note = "Data layers replaced by inputs of the dataset's shape."
    if foreign:
        note += (f" Python layer module{'s' if len(foreign) > 1 else ''} {', '.join(sorted(foreign))} "
                 "not run in the preview (only the project's python_layers/ are): shapes after "
                 f"{'them' if len(foreign) > 1 else 'it'} are unknown until training builds the net.")
    if file_layers:
        note += (f" {', '.join(sorted(file_layers))} layers read their data from files, which the preview "
                 "does not open: what they feed has no shape here.")
    return {"layers": [l for l in layers if l["name"] in built_names or l["type"] == "Data"], "blobs": blobs,
            "phase": "TEST (stage val)", "note": note,
            "unknown_shapes": sorted(b for b in unknown_blobs if b)}


def _project_module(name: str):
    """The project's own Python-layer module ``name`` (loaded from python_layers/ by path), or None."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        return None
    shipped = resources.python_layer_file(name)
    if shipped is None:
        return None
    path = Path(shipped).resolve()
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded if Path(getattr(loaded, "__file__", "") or "").resolve() == path else None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the engine's import by name finds this one, never another file
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _drop_foreign_python_layers(net):
    """Remove Python layers whose module is not the project's, layers that read or write files
    (``FILE_LAYERS``: the preview opens nothing on the server's disk), and the layers their tops feed.

    Returns (removed layer names, blobs whose shape is then unknown, the foreign module names,
    the file layer types)."""
    caffe_shim.install()  # the project's layer files say ``import caffe``
    removed, unknown, foreign, files, keep = set(), set(), set(), set(), []
    for layer in net.layer:
        fed_unknown = any(b in unknown for b in layer.bottom)
        if layer.type in FILE_LAYERS and not fed_unknown:
            files.add(layer.type)  # its shapes come from files the preview does not open
            fed_unknown = True
        if layer.type == "Python" and not fed_unknown:
            if _project_module(layer.python_param.module) is None:
                foreign.add(layer.python_param.module or "(none)")
                fed_unknown = True
        if fed_unknown:
            removed.add(layer.name)
            unknown.update(layer.top)
        else:
            keep.append(layer)
    del net.layer[:]
    net.layer.extend(keep)
    return removed, unknown, foreign, files


def _where(line=None, column=None) -> str:
    """"custom network, line 5, column 1" (the user's editor, never a file path)."""
    return SOURCE + (f", line {line}" if line else "") + (f", column {column}" if line and column else "")


def _parse_error(exc) -> BadRequest:
    line, column = getattr(exc, "line", None), getattr(exc, "column", None)
    err = BadRequest(f"{_where(line, column)}: {getattr(exc, 'message', exc)}")
    err.line = line
    err.column = column
    return err


_LAYER_NAMED = re.compile(r"\blayers? '([^']+)'")


def _layer_line(text: str, name: str):
    """The editor line of the layer called ``name`` (its ``name:`` inside a layer block)."""
    for m in re.finditer(r'\bname\s*:\s*["\']%s["\']' % re.escape(name), text):
        before = re.sub(r"#[^\n]*", "", text[:m.start()])
        if before.count("{") > before.count("}"):
            return text.count("\n", 0, m.start()) + 1
    return None


def _build_error(exc, text: str) -> BadRequest:
    """The engine's refusal, at the layer's line."""
    message = str(exc).replace("net: ", "", 1) if str(exc).startswith("net: ") else str(exc)
    named = _LAYER_NAMED.search(message)
    line = _layer_line(text, named.group(1)) if named else None
    err = BadRequest(f"the network does not build ({_where(line)}): {message}")
    err.line = line
    return err
