"""Engine layers: importing this package registers every layer type (see ``base.register``)."""
from engine.layer_types import (  # noqa: F401  (imported for their @register side effects)
    accuracy,
    activation,
    argmax,
    conv,
    data,
    indexing,
    inner_product,
    input,
    loss,
    lrn,
    normalization,
    pooling,
    python,
    recurrent,
    reduction,
    shape,
    slicing,
    softmax,
    sources,
    spatial,
)
from engine.layer_types.base import Layer, LayerError, layer_class, register, registered_types  # noqa: F401
