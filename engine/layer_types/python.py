"""``type: "Python"`` layers: user classes deriving from ``caffe.Layer`` (Caffe's ``PythonLayer``).

The user's class sees Caffe's pycaffe contract: it is constructed as Caffe's ``GetPythonLayer``
does, ``LayerClass(layer_param)`` (the ``LayerParameter``; its ``__init__`` must run
``caffe.Layer.__init__``, and a class not derived from ``caffe.Layer`` is refused: real
pycaffe's Boost.Python cannot take either as a layer), ``setup(bottom, top)`` once, ``reshape`` after
setup and before every forward, ``forward(bottom, top)``, ``backward(top, propagate_down,
bottom)``, attributes ``param_str``, ``phase`` and ``blobs``. ``bottom``/``top`` are lists of
blob objects with writable numpy ``.data``/``.diff`` and ``reshape/count/num/channels/height/
width/shape``.

The engine's layer contract passes torch tensors; ``PythonLayer`` adapts between the two.
The blob objects it hands to user code are ``LayerBlob`` views that live for one call (their
arrays are numpy views of CPU tensors; on an accelerator the adapter copies to and from the
host, since user code is numpy code anyway).

Module lookup, first hit wins: the net's own folders (``PythonLayer.search_dirs``: the
prototxt's folder, which for a job is the job folder, and any the runner adds) and their
``python_layers/``; the working directory and its ``python_layers/`` (unless
``SEARCH_WORKING_DIRECTORY`` is off, as in the web server); the project's ``python_layers/``;
then ``sys.path``. A module found in a net's own folder is loaded from that file under a name
unique to its path (``mylayer__file_<hash>``, registered in ``sys.modules`` so pickling and
``inspect`` work), so two jobs' ``mylayer.py`` built in one process (the web server evaluates
many jobs) each get their own classes; the file is executed again when it changes. Elsewhere
(the working directory, the project's layers, ``sys.path``) the module is imported by its name,
pycaffe's way (BVLC's tests define their layers in the test module itself); so is a net-folder
module the caller already imported by name from that same file. ``import caffe`` inside the
module resolves to the engine when real pycaffe is absent (``engine.caffe_shim``). (Modules a
layer module imports itself are ordinary imports, shared by name: the searched folders are on
``sys.path`` while the layer module runs.)

Python layers are not Caffe ``LossLayer``s: their tops weigh 0 unless ``loss_weight`` is given.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import os
import sys
import threading
import traceback
from typing import Sequence

import numpy as np
import torch

from caffeseg.engine.layer_types import base
from caffeseg.engine.proto import caffe_pb2


def _shipped_python_layers() -> str:
    """The folder of caffeseg's ``python_layers`` package (the lab's Dice layers) wherever it is
    installed: the lookup of ``jobs.resources.python_layers_dir`` (the engine imports nothing
    of ``jobs``)."""
    return os.fspath(importlib.resources.files("caffeseg.python_layers"))


class PythonLayerError(base.LayerError):
    """A Python layer cannot be made: its module or class is missing, or the class is not a
    ``caffe.Layer``. (An exception raised by the user's own code, its ``__init__`` included,
    passes through as itself, its message naming the layer, file and line, as in Caffe.)"""


class LayerBlob:
    """The pycaffe Blob API over numpy arrays, as user Python layers see it."""

    def __init__(self, data: np.ndarray | None = None, diff: np.ndarray | None = None):
        self._data = np.zeros((0,), np.float32) if data is None else data
        self._diff = diff

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value):
        # pycaffe's attributes are not assignable; writing through [...] is the supported way
        raise AttributeError("blob.data cannot be replaced; write into it with blob.data[...] = value")

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None or self._diff.shape != self._data.shape:
            self._diff = np.zeros(self._data.shape, np.float32)
        return self._diff

    @diff.setter
    def diff(self, value):
        raise AttributeError("blob.diff cannot be replaced; write into it with blob.diff[...] = value")

    def reshape(self, *shape):
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"blob dimensions must be non-negative, got {dims}")
        if dims != self._data.shape:
            self._data = np.zeros(dims, np.float32)
            self._diff = None

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def _legacy(self, axis: int) -> int:
        if self._data.ndim > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, shape is {self.shape}")
        return int(self._data.shape[axis]) if axis < self._data.ndim else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))


class BlobVec(list):
    """``self.blobs`` of a Python layer, with pycaffe's ``add_blob(*dims)``."""

    def add_blob(self, *dims):
        self.append(LayerBlob(np.zeros(tuple(int(d) for d in dims), np.float32)))


class Layer:
    """Base class of user Python layers (``caffe.Layer``)."""

    def __init__(self, layer_param=None):
        self.layer_param = layer_param
        self.param_str = ""
        self.phase = caffe_pb2.TRAIN
        self.blobs = BlobVec()
        # seen by PythonLayer: a subclass whose __init__ skips this one is refused, as pycaffe does
        self.__constructed = True

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


def _user_frame(err: BaseException) -> str:
    """`` at FILE, line N, in FUNC: CODE`` for the deepest frame of user code (not the engine's)."""
    frames = traceback.extract_tb(err.__traceback__)
    engine_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    user = [f for f in frames if not os.path.abspath(f.filename).startswith(engine_dir)]
    if not user:
        return ""
    f = user[-1]
    return f" at {f.filename}, line {f.lineno}, in {f.name}" + (f": {f.line}" if f.line else "")


def _annotate_user_error(layer_name: str, stage: str, err: BaseException) -> BaseException:
    """``err`` itself (its own type, as Caffe lets it through), its message prefixed with the
    layer and stage and followed by the user's file and line. Exceptions whose arguments are
    not one message (``OSError(errno, text)``) keep them and get the same text as a note."""
    if getattr(err, "caffe_python_layer", None):
        return err  # a nested net's Python layer already said where
    text = f"layer '{layer_name}' (Python): {stage} raised {type(err).__name__}"
    original = str(err)
    text += (f": {original}" if original else "") + _user_frame(err)
    if len(err.args) <= 1 and all(isinstance(a, str) for a in err.args):
        err.args = (text,)
    elif hasattr(err, "add_note"):
        err.add_note(text)
    try:
        err.caffe_python_layer = layer_name
    except AttributeError:
        pass
    return err


def _described(obj) -> str:
    """What a python_param.layer that is no caffe.Layer class is, for the error."""
    if not isinstance(obj, type):
        return f"a {type(obj).__name__}"
    bases = [f"{b.__module__}.{b.__qualname__}" for b in obj.__mro__[1:-1]]
    text = f"a class deriving from {', '.join(bases)}" if bases else "a class deriving from object only"
    if any(b.__name__ == "Layer" for b in obj.__mro__[1:]):
        text += " (a caffe.Layer other than this engine's: was a real pycaffe imported in this process?)"
    return text


def is_annotated_user_error(err: BaseException) -> bool:
    """True for an exception from user Python-layer code that already names its layer (the
    net lets it through as it is)."""
    return bool(getattr(err, "caffe_python_layer", None))


#: pycaffe finds a Python layer's module from the working directory too (a user's script run in
#: its folder). A server process turns this off (``web.create_app``): its working directory is
#: nobody's job folder, so nothing there may be imported.
SEARCH_WORKING_DIRECTORY = True


#: one Python-layer import at a time: the lookup puts folders on sys.path for its duration, and
#: the web server builds nets in several threads
_IMPORT_LOCK = threading.RLock()
#: os.stat facts of the file each per-path module was executed from, keyed by its unique name
_LOADED_FROM: dict[str, tuple[int, int, int]] = {}
_UNIQUE_MARK = "__file_"  # mylayer__file_<hash of the file's path>


def _lookup_folders(search_dirs: Sequence[str]) -> list[tuple[str, bool]]:
    """(folder, is the net's own) in lookup order, existing folders only, each once; the net's
    own folders come first."""
    folders = []
    for d in search_dirs:
        folders += [(d, True), (os.path.join(d, "python_layers"), True)]
    if SEARCH_WORKING_DIRECTORY:
        cwd = os.getcwd()
        folders += [(cwd, False), (os.path.join(cwd, "python_layers"), False)]
    folders.append((_shipped_python_layers(), False))
    unique: dict[str, bool] = {}
    for d, own in folders:
        d = os.path.abspath(d)
        if d not in unique and os.path.isdir(d):
            unique[d] = own
    return list(unique.items())


def _own_file(top: str, folders: list[tuple[str, bool]]) -> str | None:
    """The file of module or package ``top`` in the first of the net's own folders holding one
    (a package before a module, as the import system does), or None."""
    for folder, own in folders:
        if own:
            for candidate in (os.path.join(folder, top, "__init__.py"), os.path.join(folder, top + ".py")):
                if os.path.isfile(candidate):
                    return candidate
    return None


def _real_file(module) -> str | None:
    path = getattr(module, "__file__", None)
    return os.path.realpath(path) if isinstance(path, str) else None


def _stat_key(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def _load_own_module(module_name: str, path: str):
    """``module_name`` whose top-level module is the file ``path`` in one of the net's own
    folders: that file's module under its unique name (executed once per version of the file)."""
    origin = os.path.realpath(path)
    top, _, rest = module_name.partition(".")
    if _real_file(sys.modules.get(top)) == origin:
        # the caller imported this very file by name (a script beside its prototxt): share it
        return importlib.import_module(module_name)
    unique = top + _UNIQUE_MARK + hashlib.sha256(origin.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    stat = _stat_key(origin)
    module = sys.modules.get(unique)
    if module is None or _LOADED_FROM.get(unique) != stat:
        for name in [n for n in sys.modules if n == unique or n.startswith(unique + ".")]:
            del sys.modules[name]  # an older version of the file, and its submodules
        own_spec = importlib.util.spec_from_file_location(unique, origin)
        module = importlib.util.module_from_spec(own_spec)
        sys.modules[unique] = module  # before it runs, as an import does (dataclasses, pickling)
        try:
            own_spec.loader.exec_module(module)
        except BaseException:
            if sys.modules.get(unique) is module:
                del sys.modules[unique]
            _LOADED_FROM.pop(unique, None)
            raise
        _LOADED_FROM[unique] = stat
    return importlib.import_module(unique + "." + rest) if rest else module


def _import_module(module_name: str, search_dirs: Sequence[str], layer_name: str):
    from caffeseg.engine import caffe_shim
    caffe_shim.install()
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise PythonLayerError(f"layer '{layer_name}' (Python): python_param.module '{module_name}' is not a "
                               "module name (Python identifiers joined by dots, not a path)")
    folders = _lookup_folders(search_dirs)
    dirs = [d for d, _ in folders]
    top = module_name.partition(".")[0]
    with _IMPORT_LOCK:
        added = [d for d in dirs if d not in sys.path]
        sys.path[:0] = added
        try:
            own = _own_file(top, folders)
            return _load_own_module(module_name, own) if own else importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing_top = (err.name or "").split(".")[0]
            if missing_top == top or missing_top.startswith(top + _UNIQUE_MARK):
                hint = " (python_param.module names the module without .py)" if module_name.endswith(".py") else ""
                raise PythonLayerError(
                    f"layer '{layer_name}' (Python): python_param.module '{module_name}' was not found; "
                    f"searched {', '.join(dirs)} and sys.path{hint}") from None
            raise _annotate_user_error(layer_name, f"importing module '{module_name}'", err)
        except Exception as err:
            raise _annotate_user_error(layer_name, f"importing module '{module_name}'", err)
        finally:
            for d in added:
                if d in sys.path:
                    sys.path.remove(d)


@base.register
class PythonLayer(base.Layer):
    """Caffe ``Python``: a user class deriving from ``caffe.Layer`` (see the module docstring).

    Parameters (``python_param``): ``module`` and ``layer`` (required), ``param_str``. Blobs:
    whatever the user's ``setup`` adds to ``self.blobs`` (learnable).

    Shape: any bottoms and tops; the user's ``reshape`` sets the top shapes."""

    type = "Python"
    explicit_backward = True
    # A metric layer (nothing reads its tops, no loss weight, no backward) may run after the
    # solver has queued backward: its host copy then waits for the forward kernels while the
    # accelerator already works on backward, instead of stalling the queue between the two.
    deferrable = True
    #: folders searched first for python_param.module (the net or job runner sets these)
    search_dirs: list[str] = []

    def _make_user_layer(self):
        pp = self.param.python_param
        if not pp.module or not pp.layer:
            raise self.fail("python_param needs both 'module' and 'layer'")
        module = _import_module(pp.module, self.search_dirs, self.name)
        where = f"module '{pp.module}' ({getattr(module, '__file__', '?')})"
        cls = getattr(module, pp.layer, None)
        if cls is None:
            raise PythonLayerError(f"layer '{self.name}' (Python): {where} has no class '{pp.layer}'")
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise PythonLayerError(
                f"layer '{self.name}' (Python): '{pp.layer}' of {where} is {_described(cls)}, not a class "
                f"derived from caffe.Layer; Caffe takes only those: class {pp.layer}(caffe.Layer): ...")
        try:
            user = cls(self.param)  # what Caffe's GetPythonLayer passes: the LayerParameter
        except Exception as err:
            raise _annotate_user_error(self.name, f"constructing {pp.layer}(layer_param)", err)
        if not getattr(user, "_Layer__constructed", False):
            raise PythonLayerError(
                f"layer '{self.name}' (Python): class '{pp.layer}' of {where} did not run caffe.Layer.__init__; "
                f"its __init__ must call super().__init__(layer_param) (Caffe refuses such a layer)")
        # Caffe sets these before setup
        user.param_str = pp.param_str
        user.phase = int(self.phase)
        if getattr(user, "blobs", None) is None:
            user.blobs = BlobVec()
        return user

    def _call(self, stage, fn, *args):
        try:
            return fn(*args)
        except Exception as err:
            raise _annotate_user_error(self.name, stage, err)

    def setup(self, bottom_shapes):
        self.user = self._make_user_layer()
        bottoms = [LayerBlob(np.zeros(s, np.float32)) for s in bottom_shapes]
        self._tops = [LayerBlob() for _ in self.param.top]
        self._call("setup", self.user.setup, bottoms, self._tops)
        # Blobs added in setup become the layer's learnable params
        return [torch.from_numpy(np.array(b.data, dtype=np.float32, copy=True)) for b in self.user.blobs]

    def reshape(self, bottom_shapes):
        bottoms = [LayerBlob(np.zeros(s, np.float32)) for s in bottom_shapes]
        self._call("reshape", self.user.reshape, bottoms, self._tops)
        return [t.shape for t in self._tops]

    @staticmethod
    def _host(t: torch.Tensor) -> np.ndarray:
        t = t.detach()
        if t.device.type != "cpu" or t.dtype != torch.float32:
            return t.to("cpu", torch.float32).numpy().copy()
        return t.numpy()

    def _bind_params(self, params):
        for blob, p in zip(self.user.blobs, params):
            blob._data = self._host(p)
            blob._diff = None

    def forward(self, bottoms, params):
        device = bottoms[0].device if bottoms else (params[0].device if params else torch.device("cpu"))
        return self._forward_host([self._host(b) for b in bottoms], params, device)

    def _forward_host(self, arrays, params, device):
        self._bind_params(params)
        bottom_blobs = [LayerBlob(a) for a in arrays]
        # Caffe reshapes before every forward; the tops keep their arrays between calls
        self._call("reshape", self.user.reshape, bottom_blobs, self._tops)
        self._call("forward", self.user.forward, bottom_blobs, self._tops)
        return [torch.from_numpy(t.data.copy()).to(device) for t in self._tops]

    def stage(self, bottoms):
        """Start copying the bottoms to host memory without waiting; ``forward_staged`` runs
        the layer on that copy later. On an accelerator the copy goes to fresh pinned buffers
        (PyTorch's host cache recycles them) and an event marks its end; on the CPU it is a
        plain copy, so later in-place layers cannot change what the metric sees."""
        device = bottoms[0].device if bottoms else torch.device("cpu")
        sources = [b.detach() for b in bottoms]
        if device.type != "cuda":
            return [s.to("cpu", torch.float32, copy=True) for s in sources], None, device
        host = [torch.empty(tuple(s.shape), dtype=torch.float32, pin_memory=True) for s in sources]
        for buffer, source in zip(host, sources):
            buffer.copy_(source, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))  # the copies' stream, whatever device is current
        return host, done, device

    def forward_staged(self, staged, params):
        host, done, device = staged
        if done is not None:
            done.synchronize()
        return self._forward_host([h.numpy() for h in host], params, device)

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        device = bottoms[0].device if bottoms else torch.device("cpu")
        self._bind_params(params)
        for blob in self.user.blobs:
            blob._diff = np.zeros(blob._data.shape, np.float32)
        top_blobs = [LayerBlob(self._host(t).copy(), self._host(d).copy()) for t, d in zip(tops, top_diffs)]
        bottom_blobs = [LayerBlob(self._host(b), np.zeros(tuple(b.shape), np.float32)) for b in bottoms]
        self._call("backward", self.user.backward, top_blobs, list(propagate_down), bottom_blobs)
        bottom_diffs = [torch.from_numpy(b.diff.copy()).to(device) if down else None
                        for b, down in zip(bottom_blobs, propagate_down)]
        param_diffs = [torch.from_numpy(b.diff.copy()).to(device) if down else None
                       for b, down in zip(self.user.blobs, param_propagate_down)]
        return bottom_diffs, param_diffs
