"""Engine layers: importing this package registers every layer type (see ``base.register``)."""
from engine.layer_types import (  # noqa: F401  (imported for their @register side effects)
    accuracy,
    activation,
    conv,
    inner_product,
    input,
    loss,
    lrn,
    normalization,
    pooling,
    recurrent,
    shape,
    softmax,
)
from engine.layer_types.base import Layer, LayerError, layer_class, register, registered_types  # noqa: F401

try:  # written by the training helper; optional until it lands
    from engine.layer_types import data  # noqa: F401
except ImportError:
    pass
try:
    from engine.layer_types import python  # noqa: F401
except ImportError:
    pass
