"""MAX pooling through PyTorch's channels-last kernel (engine.layer_types.pooling.max_pool2d) gives
bit for bit what the NCHW kernel gives (which the golden Caffe cases check): the same maxima,
the same first maximum among ties, the same gradient, on the shapes and geometries FCN uses."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffeseg import engine
from caffeseg.engine.layer_types import pooling
from caffeseg.engine.proto import caffe_pb2

GEOMETRIES = [  # (shape, kernel, stride, pad, ceil_mode)
    ((2, 8, 17, 17), (3, 3), (2, 2), (0, 0), True),     # FCN-AlexNet's pools: 3×3 stride 2, Caffe's ceil
    ((1, 16, 12, 12), (2, 2), (2, 2), (0, 0), True),    # VGG / FCN-8s: 2×2 stride 2
    ((1, 12, 9, 11), (3, 2), (2, 1), (1, 1), True),     # padded, unequal kernel and stride
    ((3, 9, 7, 7), (7, 7), (1, 1), (0, 0), False),      # global
]


def _tied(shape, seed):
    """Few distinct values (many ties), a quarter exact zeros (ReLU output), and a -inf."""
    rs = np.random.RandomState(seed)
    x = rs.randint(-3, 4, size=shape).astype(np.float32)
    x[rs.rand(*shape) < 0.25] = 0.0
    x.flat[rs.randint(x.size)] = -np.inf
    return torch.from_numpy(x)


@pytest.mark.parametrize("shape,kernel,stride,pad,ceil", GEOMETRIES)
def test_channels_last_matches_nchw_forward_and_backward(shape, kernel, stride, pad, ceil):
    for seed in range(3):
        x = _tied(shape, seed)
        if seed == 2:
            x.view(-1)[5] = float("nan")  # both kernels let NaN win
        ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = pooling.max_pool2d(ours, kernel, stride, pad, ceil)
        y_ref = F.max_pool2d(ref, kernel, stride, pad, ceil_mode=ceil)
        assert y.is_contiguous() and y.shape == y_ref.shape
        assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(y_ref))
        dy = torch.from_numpy(np.random.RandomState(10 + seed).randn(*y.shape).astype(np.float32))
        (dx,) = torch.autograd.grad(y, ours, dy)
        (dx_ref,) = torch.autograd.grad(y_ref, ref, dy)
        assert dx.is_contiguous() and torch.equal(dx, dx_ref)


@pytest.fixture
def channels_last_calls(monkeypatch):
    """The input shapes the channels-last path was taken for, in order."""
    calls = []
    real = pooling._MaxPoolChannelsLast.apply
    monkeypatch.setattr(pooling._MaxPoolChannelsLast, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    return calls


def test_kernel_choice_by_channels_and_layout(channels_last_calls):
    calls = channels_last_calls
    pooling.max_pool2d(torch.zeros(1, pooling.CHANNELS_LAST_MIN, 6, 6), (2, 2), (2, 2))
    pooling.max_pool2d(torch.zeros(1, pooling.CHANNELS_LAST_MIN - 1, 6, 6), (2, 2), (2, 2))
    pooling.max_pool2d(torch.zeros(1, 16, 6, 6).transpose(2, 3), (2, 2), (2, 2))  # not contiguous
    assert calls == [(1, pooling.CHANNELS_LAST_MIN, 6, 6)]


def test_without_grad_builds_no_graph_and_gives_the_same_result():
    x = torch.rand(1, 16, 8, 8)
    with torch.no_grad():
        y = pooling.max_pool2d(x, (3, 3), (2, 2), (0, 0), True)
    assert y.grad_fn is None and torch.equal(y, F.max_pool2d(x, 3, 2, ceil_mode=True))


def test_net_pooling_layer_uses_it_and_keeps_caffe_shapes(tmp_path, channels_last_calls):
    """A padded Pooling layer in a Net (Caffe's ceil rule) on 16 channels: data and diff as torch's
    NCHW kernel gives them on the same input."""
    calls = channels_last_calls
    path = tmp_path / "pool.prototxt"
    path.write_text('force_backward: true\n'
                    'layer { name: "x" type: "Input" top: "x" '
                    'input_param { shape { dim: 2 dim: 16 dim: 10 dim: 10 } } }\n'
                    'layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                    'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }\n')
    net = engine.Net(str(path), caffe_pb2.TRAIN)
    x = _tied((2, 16, 10, 10), 4)
    net.blobs["x"].data[...] = x.numpy()
    net.forward()
    assert calls and net.blobs["p"].data.shape == (2, 16, 6, 6)  # Caffe: ceil((10 + 2 - 3) / 2) + 1 = 6
    dy = np.random.RandomState(5).randn(2, 16, 6, 6).astype(np.float32)
    net.blobs["p"].diff[...] = dy
    net.backward()
    ref = x.clone().requires_grad_()
    y_ref = F.max_pool2d(ref, 3, 2, 1, ceil_mode=True)
    (dx_ref,) = torch.autograd.grad(y_ref, ref, torch.from_numpy(dy))
    np.testing.assert_array_equal(net.blobs["p"].data, y_ref.detach().numpy())
    np.testing.assert_array_equal(net.blobs["x"].diff, dx_ref.numpy())
