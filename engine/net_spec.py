"""``caffe.net_spec``: describe a net with Python calls and get its ``NetParameter``.

A call ``L.<Type>(*bottoms, **kwargs)`` records one layer (a :class:`Function`) and returns
what the layer produces: its single :class:`Top`, a tuple of Tops (``ntop=N``, N > 1), or the
Function itself (``ntop=0``, e.g. ``Silence``). Nothing is turned into protobuf until
``to_proto``; :class:`_NetWriter` then walks the graph once and writes every layer.

Keyword arguments (the rules pycaffe uses, so prototxts generated here match real Caffe's):

============================  ===============================================================
``ntop=N``                    number of tops (default 1); not written
``in_place=True``             the layer's tops are its bottoms' names; not written
key ending in ``param``       a field of ``LayerParameter``: ``param=[...]``,
                              ``convolution_param=dict(...)``, ``transform_param=...``
key of the type's own message the ``<type>_param`` message, when the type has one
                              (``Pooling`` → ``pooling_param``; ``Deconvolution`` has none)
any other key                 a field of ``LayerParameter``: ``loss_weight``, ``include``,
                              ``propagate_down``, ``name``...
============================  ===============================================================

Values: a dict fills a message field by field; a list (or tuple) fills a repeated field, a list
of dicts adding one message per dict; a single value given to a repeated field counts as a list
of one (``kernel_size=3`` → ``kernel_size: 3``, ``include=dict(phase=0)`` → one rule).

Names: a ``NetSpec`` attribute names its top, and a layer is named after its first top (an
in-place layer after the NetSpec name of its top, though its top keeps the bottom's name).
An unnamed top or layer gets ``<Type><k>``, one counter per type shared by tops and layers,
numbered in the order layers are written: bottoms before the layer that reads them, the
NetSpec's entries (or ``to_proto``'s arguments) in the order given.
"""
from __future__ import annotations

import collections

from google.protobuf.message import Message

from caffeseg.engine.proto import caffe_pb2


# ---------------------------------------------------------------------------------------------
# Filling protobuf messages from Python values
# ---------------------------------------------------------------------------------------------
def param_name_dict() -> dict[str, str]:
    """Layer type → prefix of its ``LayerParameter`` field, e.g. ``'Convolution' ->
    'convolution'``, derived from every ``<prefix>_param`` field whose message type is
    ``<Type>Parameter``."""
    table = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message_type
        if message is None or not field.name.endswith("_param"):
            continue
        if message.name.endswith("Parameter"):
            table[message.name[:-len("Parameter")]] = field.name[:-len("_param")]
    return table


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple))


def _fill_repeated(container, items) -> None:
    """Append ``items`` to a repeated field: dicts become new messages, anything else is
    appended as is (numbers, strings, enum values, ready-made messages)."""
    for item in items:
        if isinstance(item, dict):
            _fill_message(container.add(), item)
        else:
            container.extend([item])


def _fill_message(message, fields: dict) -> None:
    for key, value in fields.items():
        assign_proto(message, key, value)


def assign_proto(proto, name: str, value) -> None:
    """Write ``value`` into field ``name`` of the message ``proto`` following the value rules
    of this module (dict → message, list → repeated field, single value into a repeated field →
    one element). An unknown field raises ``AttributeError`` from protobuf."""
    current = getattr(proto, name)
    if hasattr(current, "extend"):  # repeated field (scalars or messages)
        _fill_repeated(current, value if _is_sequence(value) else [value])
    elif isinstance(value, dict):
        _fill_message(current, value)
    elif isinstance(value, Message) and isinstance(current, Message):
        current.CopyFrom(value)
    else:
        setattr(proto, name, value)


# ---------------------------------------------------------------------------------------------
# The graph: Functions (layers) and their Tops (output blobs)
# ---------------------------------------------------------------------------------------------
class Top:
    """Output number ``n`` of the layer ``fn``; what layers take as bottoms."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The net of every layer this top depends on, itself included."""
        return to_proto(self)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer before it is written: ``type_name``, ``inputs`` (bottom Tops), ``params``
    (the keyword arguments still to write), ``ntop``, ``in_place`` and its ``tops``."""

    def __init__(self, type_name: str, inputs, params: dict):
        for position, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {position} is not a Top (type is {type(bottom)})")
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def __repr__(self):
        return f"<Function {self.type_name} ({len(self.inputs)} bottoms, {self.ntop} tops)>"


# ---------------------------------------------------------------------------------------------
# Writing the graph
# ---------------------------------------------------------------------------------------------
class _NetWriter:
    """Writes Functions as ``LayerParameter``s, each once, bottoms first, naming tops and
    layers as it goes (``given`` holds the names chosen by the caller: Top or Function → str)."""

    def __init__(self, given: dict | None = None):
        self._names = dict(given or {})
        self._counters = collections.Counter()
        self._written: dict[Function, caffe_pb2.LayerParameter] = {}

    def _next_auto_name(self, type_name: str) -> str:
        self._counters[type_name] += 1
        return f"{type_name}{self._counters[type_name]}"

    def _name_of(self, node) -> str:
        """The name of a Top, or of a Function with no tops; assigned on first request."""
        if node not in self._names:
            type_name = node.fn.type_name if isinstance(node, Top) else node.type_name
            self._names[node] = self._next_auto_name(type_name)
        return self._names[node]

    def write(self, fn: Function) -> None:
        """Write ``fn`` and, before it, every layer it reads from that is not written yet."""
        # Depth first with an explicit stack (deep nets would exhaust Python's recursion):
        # an entry (layer, k) means bottoms before k are written.
        pending = [(fn, 0)]
        while pending:
            layer, k = pending.pop()
            if layer in self._written:
                continue
            if k < len(layer.inputs):
                pending.append((layer, k + 1))
                producer = layer.inputs[k].fn
                if producer not in self._written:
                    pending.append((producer, 0))
            else:
                self._written[layer] = self._layer_proto(layer)

    def _layer_proto(self, fn: Function) -> caffe_pb2.LayerParameter:
        proto = caffe_pb2.LayerParameter()
        proto.type = fn.type_name
        proto.bottom.extend(self._written[t.fn].top[t.n] for t in fn.inputs)
        if fn.in_place:
            proto.top.extend(proto.bottom)
        else:
            proto.top.extend(self._name_of(t) for t in fn.tops)
        if fn in self._names or not fn.tops:
            proto.name = self._name_of(fn)
        else:
            proto.name = self._name_of(fn.tops[0])
        own_prefix = _PARAM_NAMES.get(fn.type_name)
        for key, value in fn.params.items():
            _write_argument(proto, own_prefix, fn.type_name, key, value)
        return proto

    def net(self) -> caffe_pb2.NetParameter:
        net = caffe_pb2.NetParameter()
        net.layer.extend(self._written.values())
        return net


def _write_argument(proto, own_prefix: str | None, type_name: str, key: str, value) -> None:
    """Route one keyword argument to the layer's own parameter message or to the layer."""
    if own_prefix is not None and not key.endswith("param"):
        own = getattr(proto, own_prefix + "_param")
        if key in own.DESCRIPTOR.fields_by_name:
            assign_proto(own, key, value)
            return
    if key not in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
        where = f"LayerParameter or {own_prefix}_param" if own_prefix else "LayerParameter"
        hint = "" if own_prefix else (f" ({type_name} has no parameter message of its own: pass the key "
                                      f"inside the message it belongs to, e.g. convolution_param=dict({key}=...))")
        raise AttributeError(f"{type_name} layer: '{key}' is not a field of {where}{hint}")
    assign_proto(proto, key, value)


def _written_node(name: str, node):
    if isinstance(node, Top):
        return node.fn
    if isinstance(node, Function):
        return node
    raise TypeError(f"NetSpec entry '{name}' is a {type(node).__name__}, not a Top or a layer "
                    "(unpack several tops: n.a, n.b = L.Type(..., ntop=2))")


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """The net holding every layer the given tops depend on; unnamed tops and layers get
    ``<Type><k>`` names."""
    writer = _NetWriter()
    for position, top in enumerate(tops):
        writer.write(_written_node(f"#{position}", top))
    return writer.net()


class NetSpec:
    """A named collection of tops: ``n.conv1 = L.Convolution(n.data, ...)`` names the top (and
    the layer making it) ``conv1``. Entries are kept in assignment order in ``n.tops`` and are
    reachable as attributes or items (``n['conv1']``)."""

    def __init__(self):
        object.__setattr__(self, "tops", collections.OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        tops = self.__dict__.get("tops", {})
        if name in tops:
            return tops[name]
        raise AttributeError(f"NetSpec has no top named '{name}'")

    def __delattr__(self, name):
        del self.tops[name]

    def __setitem__(self, name, value):
        self.tops[name] = value

    def __getitem__(self, name):
        return self.tops[name]

    def to_proto(self) -> caffe_pb2.NetParameter:
        """Every layer the entries depend on, in entry order; when one top has several entry
        names, the last one counts."""
        chosen = {node: name for name, node in self.tops.items()}
        writer = _NetWriter(chosen)
        for name, node in self.tops.items():
            writer.write(_written_node(name, node))
        return writer.net()


# ---------------------------------------------------------------------------------------------
# The factories: caffe.layers and caffe.params
# ---------------------------------------------------------------------------------------------
class Layers:
    """``caffe.layers``: ``L.<Type>`` is a function making a layer of that type."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):  # copy/pickle probing, not a layer type
            raise AttributeError(type_name)

        def make_layer(*bottoms, **kwargs):
            fn = Function(type_name, bottoms, kwargs)
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops if fn.ntop else fn
        make_layer.__name__ = make_layer.__qualname__ = type_name
        return make_layer


class _EnumsOf:
    """The enum values of one ``<Type>Parameter`` message (``P.Pooling.MAX``)."""

    def __init__(self, type_name: str):
        self._type_name = type_name

    def __getattr__(self, value_name):
        if value_name.startswith("__"):
            raise AttributeError(value_name)
        message = getattr(caffe_pb2, self._type_name + "Parameter", None)
        if message is None:
            raise AttributeError(f"caffe.params has no '{self._type_name}' "
                                 f"(there is no {self._type_name}Parameter message)")
        return getattr(message, value_name)


class Parameters:
    """``caffe.params``: ``P.<Type>.<VALUE>`` is the enum value ``<Type>Parameter.<VALUE>``."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _EnumsOf(type_name)


_PARAM_NAMES = param_name_dict()
layers = Layers()
params = Parameters()
