"""``caffe.net_spec``: write a net in Python and turn it into a ``NetParameter``.

``L.Convolution(bottom, kernel_size=3, num_output=8)`` returns a ``Top`` (the layer's output);
keyword arguments fill the layer's own ``<type>_param`` message unless the key names a field
ending in ``param`` (``param``, ``convolution_param``, ``loss_param``, ...) or is not a field of
that message, in which case it goes on the ``LayerParameter`` itself (``loss_weight``,
``include``, ``propagate_down``). ``ntop=N`` gives N tops (a tuple; 0 gives the layer's
``Function``), ``in_place=True`` reuses the bottom as the top. ``P.Pooling.MAX`` is the enum
value ``PoolingParameter.MAX``.

Names follow pycaffe exactly, so generated prototxts match real Caffe's: a ``NetSpec``
attribute names its top and the layer producing it (a layer's first top names the layer);
unnamed tops become ``<Type><k>`` with one counter per type, counted in the order layers are
first reached walking bottoms before tops.
"""
from __future__ import annotations

import collections

from engine.proto import caffe_pb2


def param_name_dict() -> dict[str, str]:
    """Layer type prefix -> its ``LayerParameter`` field prefix (``'Convolution' ->
    'convolution'``), read from the ``*_param`` fields and their message type names."""
    mapping = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                mapping[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return mapping


def assign_proto(proto, name: str, value) -> None:
    """Set field ``name`` of message ``proto`` from a Python value: lists fill repeated fields
    (a list of dicts adds one message per dict), a dict fills a message, anything else is
    assigned; a single value given for a repeated field becomes a one-element list."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for key, sub in item.items():
                    assign_proto(message, key, sub)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(field, key, sub)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer (``fn``), its ``n``-th top."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The layers needed to compute this top, with generated names."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, input ``Top``s and keyword parameters (``params``)."""

    def __init__(self, type_name: str, inputs, params: dict):
        self.type_name = type_name
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(bottom)})")
        self.inputs = inputs
        self.params = params
        # ntop and in_place shape the spec; they are not layer fields
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _layer_name(self, names, autonames) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers, names, autonames) -> None:
        if self in layers:
            return
        bottoms = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottoms.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._top_name(top, names, autonames))
        layer.name = self._layer_name(names, autonames)
        own = _PARAM_NAMES.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param") or own is None:
                assign_proto(layer, key, value)
                continue
            try:
                assign_proto(getattr(layer, own + "_param"), key, value)
            except AttributeError:  # not a field of the type's message: a LayerParameter field
                assign_proto(layer, key, value)
        layers[self] = layer


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute ``tops`` (generated names)."""
    layers: "collections.OrderedDict[Function, caffe_pb2.LayerParameter]" = collections.OrderedDict()
    autonames: collections.Counter = collections.Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) or items; ``to_proto``
    writes every layer they need, named by the attribute names. ``n.tops`` is the ordered
    name -> Top mapping."""

    def __init__(self):
        super().__setattr__("tops", collections.OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, key, value):
        self.tops[key] = value

    def __getitem__(self, key):
        return self.tops[key]

    def __delattr__(self, name):
        del self.tops[name]

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {top: name for name, top in self.tops.items()}
        autonames: collections.Counter = collections.Counter()
        layers: "collections.OrderedDict[Function, caffe_pb2.LayerParameter]" = collections.OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``caffe.layers``: ``L.<Type>(*bottoms, **params)`` makes a layer of that type."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer.__name__ = type_name
        return layer


class _ParameterEnums:
    def __init__(self, message_name):
        self._message = getattr(caffe_pb2, message_name)

    def __getattr__(self, name):
        return getattr(self._message, name)


class Parameters:
    """``caffe.params``: ``P.Pooling.MAX`` is ``caffe_pb2.PoolingParameter.MAX``."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _ParameterEnums(name + "Parameter")


_PARAM_NAMES = param_name_dict()
layers = Layers()
params = Parameters()
