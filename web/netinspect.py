"""Parse a network and build it with the engine to report every blob's shape.

Data layers need LMDB sources that do not exist yet when the user is still writing the network,
so each Data layer is replaced by an Input layer with the dataset's feature shape (or a default)
before the net is built in the TEST phase.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from web.backend import BadRequest, Unavailable

DEFAULT_FEATURE_SHAPE = [1, 256, 256]
SOURCE = "custom network"


def _replace_data_layers(net, feature_shape, caffe_pb2):
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
    try:
        from engine import prototxt
        from engine.proto import caffe_pb2
    except ImportError as exc:
        raise Unavailable(f"the prototxt parser is not available ({exc})") from None
    try:
        net = prototxt.parse_net(text, source=SOURCE)
    except prototxt.PrototxtError as exc:
        raise _parse_error(exc) from None
    layers, shown = [], set()
    for l in net.layer:
        if l.type == "Data" and tuple(l.top) in shown:
            continue  # the train and val copies of a Data layer are one box in the graph
        shown.add(tuple(l.top))
        layers.append({"name": l.name, "type": l.type, "bottom": list(l.bottom), "top": list(l.top)})
    _replace_data_layers(net, feature_shape, caffe_pb2)
    try:
        import engine
        net_class = engine.Net
    except (ImportError, AttributeError) as exc:
        return {"layers": layers, "blobs": {}, "note": f"Shapes unavailable: the engine cannot build nets yet ({exc})."}
    fd, path = tempfile.mkstemp(suffix=".prototxt")
    added = _python_layer_paths()
    _install_caffe_name(engine)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(prototxt.format_message(net))
        try:
            try:  # DIGITS-style nets select their validation layers with stage "val"
                built = net_class(path, engine.TEST, stages=["val"])
            except TypeError:
                built = net_class(path, engine.TEST)
        except Exception as exc:  # a layer's own check: report it beside the editor
            raise _build_error(exc, path, text) from None
        # Split blobs are Caffe's plumbing (one per extra consumer); the user never named them.
        blobs = {name: list(blob.shape) for name, blob in built.blobs.items() if "_split_" not in name}
    finally:
        os.unlink(path)
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    built_names = set(getattr(built, "_layer_names", None) or [l.name for l in net.layer])
    return {"layers": [l for l in layers if l["name"] in built_names or l["type"] == "Data"], "blobs": blobs,
            "phase": "TEST (stage val)",
            "note": "Data layers replaced by inputs of the dataset's shape."}


def _install_caffe_name(engine) -> None:
    """Python layer files say ``import caffe``: let that name the engine unless real pycaffe is loaded."""
    if "caffe" in sys.modules:
        return
    try:
        from engine import caffe_shim
        for name in ("install", "install_as_caffe", "activate"):
            if callable(getattr(caffe_shim, name, None)):
                getattr(caffe_shim, name)()
                return
    except ImportError:
        pass
    sys.modules["caffe"] = engine


def _python_layer_paths() -> list[str]:
    """Make the project's Python layers importable by ``module:`` name while building."""
    root = Path(__file__).resolve().parent.parent
    added = []
    for folder in (root, root / "python_layers"):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))
            added.append(str(folder))
    return added


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


def _build_error(exc, path: str, text: str) -> BadRequest:
    """The engine's refusal, without the temporary file it was built from, at the layer's line."""
    message = str(exc).replace(path + ": ", "").replace(path, SOURCE)
    named = _LAYER_NAMED.search(message)
    line = _layer_line(text, named.group(1)) if named else None
    err = BadRequest(f"the network does not build ({_where(line)}): {message}")
    err.line = line
    return err
