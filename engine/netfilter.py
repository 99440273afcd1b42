"""Which layers a NetState keeps: Caffe's include/exclude rules (``Net::FilterNet``)."""
from __future__ import annotations

from caffeseg.engine.proto import caffe_pb2


class NetFilterError(ValueError):
    """A layer's include/exclude rules are malformed."""


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """All of the rule's conditions must hold: phase, level range, stages present and absent."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    if any(stage in stages for stage in rule.not_stage):
        return False
    return True


def layer_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    if len(layer.include) and len(layer.exclude):
        raise NetFilterError(f"layer '{layer.name}' has both include and exclude rules; "
                             "Caffe allows only one kind per layer")
    if len(layer.include):
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def filter_net(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of ``param`` holding only the layers its ``state`` keeps (the rules themselves dropped)."""
    kept = caffe_pb2.NetParameter()
    kept.CopyFrom(param)
    del kept.layer[:]
    for layer in param.layer:
        if layer_included(layer, param.state):
            copy = kept.layer.add()
            copy.CopyFrom(layer)
    return kept
