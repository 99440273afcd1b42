"""Caffe's recurrent layers: ``LSTM``, ``RNN`` (``RecurrentLayer``) and ``LSTMUnit``.

Caffe builds an unrolled sub-net per recurrent layer (InnerProduct, Scale, Eltwise, LSTMUnit,
TanH layers, one set per timestep, weights shared by name). Here the same computation runs
directly in torch, step by step, with the same parameter blobs in the same order, so weights
and caffemodels are interchangeable:

* inputs are time-major: ``x`` is ``T x N x ...`` (T timesteps of N independent streams),
  ``cont`` is ``T x N``; ``cont[t, n] = 0`` starts a new sequence, cutting the hidden state
  (``h_{t-1}`` is multiplied by ``cont_t``; the LSTM cell's forget gate becomes 0);
* an optional static input ``x_static`` (``N x ...``) is added to every timestep's pre-activation;
* without ``expose_hidden`` the final state of one forward is the initial state of the next
  (zero before the first); with it, the initial state comes from extra bottoms and the final
  state goes to extra tops. Neither carries a gradient in Caffe (its unrolled net shares only
  their data), so here the state bottoms get none and the state tops pass none back;
* ``cont`` never gets a gradient (Caffe: "Cannot backpropagate to sequence indicators");
* T is fixed when the layer is set up; N may change between forwards. A changed N keeps
  Caffe's blob memory rule for the carried state: the first N·H stored values are reused
  while they fit in what was stored before, a larger state starts from zeros.

The LSTM cell uses Caffe's own backward formulas (``lstm_unit_layer.cpp``); they differ from
the exact derivative only for ``cont`` values other than 0 and 1.
"""
from __future__ import annotations

from typing import Sequence

import torch

from caffeseg.engine.layer_types._util import count, filled
from caffeseg.engine.layer_types.base import Layer, register


class _CaffeLSTMCell(torch.autograd.Function):
    """One LSTM step as Caffe's LSTMUnit computes it, forward and backward.

    ``c_prev``: (..., H), ``gates``: (..., 4H) laid out [i, f, o, g], ``cont``: (..., 1).
    Returns (c, h). The backward is Caffe's: ``f`` is ``cont·σ(x_f)`` (0 where cont is 0)
    and its derivative is taken as ``f·(1 - f)``.
    """

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        hidden = c_prev.shape[-1]
        i = torch.sigmoid(gates[..., :hidden])
        f = torch.where(cont == 0, torch.zeros_like(c_prev), cont * torch.sigmoid(gates[..., hidden:2 * hidden]))
        o = torch.sigmoid(gates[..., 2 * hidden:3 * hidden])
        g = torch.tanh(gates[..., 3 * hidden:])
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        h = o * tanh_c
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, h

    @staticmethod
    def backward(ctx, c_diff, h_diff):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        if c_diff is None:
            c_diff = torch.zeros_like(c_prev)
        if h_diff is None:
            h_diff = torch.zeros_like(c_prev)
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        c_prev_diff = c_term * f
        gate_diff = torch.cat([
            c_term * g * i * (1 - i),
            c_term * c_prev * f * (1 - f),
            h_diff * tanh_c * o * (1 - o),
            c_term * i * (1 - g * g),
        ], dim=-1)
        return c_prev_diff, gate_diff, None


def lstm_cell(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor):
    """(c, h) of one Caffe LSTM step; ``cont`` broadcasts over the hidden axis."""
    return _CaffeLSTMCell.apply(c_prev, gates, cont.detach())


@register
class LSTMUnitLayer(Layer):
    """Caffe ``LSTMUnit``: one LSTM cell step (the building block of Caffe's unrolled LSTM).

    ``i, f, o = σ(x_i), cont·σ(x_f), σ(x_o)``, ``g = tanh(x_g)``, ``c = f·c_prev + i·g``,
    ``h = o·tanh(c)``. Gradients go to ``c_prev`` and ``x`` only, by Caffe's formulas.

    Parameters: none (Caffe has no ``LSTMUnit`` parameter message); no blobs. The hidden size H
    is ``c_prev``'s last axis.

    Shape (N streams, one timestep):
        - bottom 0 (``c_prev``, the previous cell state): ``(1, N, H)``
        - bottom 1 (``x``, the gate inputs laid out [i, f, o, g]): ``(1, N, 4H)``
        - bottom 2 (``cont``, the sequence continuation indicators): ``(1, N)``; no gradient
        - top 0 (``c``, the new cell state): ``(1, N, H)``
        - top 1 (``h``, the new hidden state): ``(1, N, H)``"""

    type = "LSTMUnit"
    exact_bottoms = 3
    exact_tops = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2  # sequence indicators

    def reshape(self, bottom_shapes):
        c_prev, x, cont = (tuple(s) for s in bottom_shapes)
        for index, shape in enumerate((c_prev, x, cont)):
            axes = 2 if index == 2 else 3
            if len(shape) != axes:
                raise self.fail(f"bottom {index} has shape {shape}; it must have {axes} axes")
            if shape[0] != 1 or shape[1] != c_prev[1]:
                raise self.fail(f"bottom {index} has shape {shape}; expected 1 x {c_prev[1]} (one timestep "
                                "of the same streams as c_prev)")
        if x[2] != 4 * c_prev[2]:
            raise self.fail(f"gate input x has {x[2]} channels; it needs 4 x {c_prev[2]} (the hidden size of c_prev)")
        return [c_prev, c_prev]

    def forward(self, bottoms, params):
        c_prev, x, cont = bottoms
        c, h = lstm_cell(c_prev, x, cont.to(c_prev.dtype).unsqueeze(-1))
        return [c, h]


class _Recurrent(Layer):
    """Shared machinery of Caffe's RecurrentLayer (LSTM, RNN); subclasses define the step."""

    #: names of the recurrent state blobs, in Caffe's bottom/top order (h before c)
    state_names: tuple[str, ...] = ()
    min_bottoms = 2
    min_tops = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1  # cont: "Cannot backpropagate to sequence indicators"

    # -- construction -------------------------------------------------------------------
    def setup(self, bottom_shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        rp = self.param.recurrent_param
        self.num_output = int(rp.num_output)
        if self.num_output <= 0:
            raise self.fail("recurrent_param.num_output must be positive")
        self.expose_hidden = bool(rp.expose_hidden)
        n_state = len(self.state_names) if self.expose_hidden else 0
        n_bottoms, n_tops = len(bottom_shapes), len(self.param.top)
        if not 2 + n_state <= n_bottoms <= 3 + n_state:
            raise self.fail(f"takes {2 + n_state} or {3 + n_state} bottoms (x, cont, [x_static]"
                            + (f", {', '.join(s + '_0' for s in self.state_names)}" if n_state else "")
                            + f"), the prototxt gives {n_bottoms}")
        if n_tops != 1 + n_state:
            raise self.fail(f"takes {1 + n_state} top(s) with expose_hidden {str(self.expose_hidden).lower()}, "
                            f"the prototxt gives {n_tops}")
        self.static_input = n_bottoms > 2 + n_state
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(x) < 2:
            raise self.fail(f"bottom x has shape {x}; it must have at least 2 axes (timesteps, streams, ...)")
        if len(x) < 3:
            raise self.fail(f"bottom x has shape {x}; the input transform works on the axes from 2 on, "
                            "so x needs at least 3 axes (timesteps, streams, features...)")
        self.timesteps = x[0]
        self._check_cont(x, cont)
        self.input_dim = count(x, 2)
        self.static_dim = 0
        if self.static_input:
            xs = tuple(bottom_shapes[2])
            if len(xs) < 2 or xs[0] != x[1]:
                raise self.fail(f"static input has shape {xs}; it needs at least 2 axes and {x[1]} "
                                "(the number of streams) on axis 0")
            self.static_dim = count(xs, 1)
        rp_w = rp.weight_filler
        rp_b = rp.bias_filler
        # Caffe fills in the order its unrolled net creates the layers (the param order)
        return [filled(self, rp_b if is_bias else rp_w, shape) for shape, is_bias in self.param_shapes()]

    def _check_cont(self, x, cont):
        if len(cont) != 2 or cont[0] != x[0] or cont[1] != x[1]:
            raise self.fail(f"bottom cont has shape {cont}; it must be timesteps x streams = {x[0]} x {x[1]}")

    def param_shapes(self) -> list[tuple[tuple[int, ...], bool]]:
        """((shape, is_bias) for each parameter blob, in Caffe's order."""
        raise NotImplementedError

    def reshape(self, bottom_shapes):
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(x) < 3:
            raise self.fail(f"bottom x has shape {x}; it must have at least 3 axes (timesteps, streams, features...)")
        if x[0] != self.timesteps:
            raise self.fail(f"input number of timesteps changed from {self.timesteps} to {x[0]}")
        if count(x, 2) != self.input_dim:
            raise self.fail(f"bottom x has {count(x, 2)} features per step; the weights expect {self.input_dim}")
        self._check_cont(x, cont)
        streams = x[1]
        offset = 2
        if self.static_input:
            xs = tuple(bottom_shapes[2])
            if len(xs) < 2 or xs[0] != streams or count(xs, 1) != self.static_dim:
                raise self.fail(f"static input has shape {xs}; expected {streams} x ({self.static_dim} values)")
            offset = 3
        state_shape = (1, streams, self.num_output)
        if self.expose_hidden:
            for j, name in enumerate(self.state_names):
                given = tuple(bottom_shapes[offset + j])
                if given != state_shape:
                    raise self.fail(f"initial state bottom {name}_0 has shape {given}, expected {state_shape}")
        shapes = [(self.timesteps, streams, self.num_output)]
        if self.expose_hidden:
            shapes += [state_shape] * len(self.state_names)
        return shapes

    # -- state carried between forwards (expose_hidden off) ------------------------------
    def _initial_state(self, bottoms, streams: int, like: torch.Tensor) -> list[torch.Tensor]:
        if self.expose_hidden:
            offset = 3 if self.static_input else 2
            return [b.detach().to(like.dtype).reshape(streams, self.num_output)
                    for b in bottoms[offset:offset + len(self.state_names)]]
        size = streams * self.num_output
        stored = getattr(self, "_carried", None)
        if stored is None or stored[0].numel() < size:
            # Caffe's blob reallocates (zero-filled) when the state outgrows its memory
            self._carried = [torch.zeros(size, dtype=like.dtype, device=like.device) for _ in self.state_names]
        self._carried = [s.to(like.device) for s in self._carried]
        return [s[:size].reshape(streams, self.num_output).clone() for s in self._carried]

    def _store_state(self, finals: list[torch.Tensor]) -> None:
        if self.expose_hidden:
            return
        for buffer, final in zip(self._carried, finals):
            buffer[:final.numel()] = final.detach().reshape(-1)

    def forward(self, bottoms, params):
        x, cont = bottoms[0], bottoms[1]
        steps, streams = x.shape[0], x.shape[1]
        x_flat = x.reshape(steps, streams, self.input_dim)
        static = bottoms[2].reshape(streams, self.static_dim) if self.static_input else None
        cont = cont.detach().to(x.dtype).unsqueeze(-1)  # (T, N, 1)
        state = self._initial_state(bottoms, streams, x)
        outputs, finals = self.unroll(x_flat, cont, static, state, params)
        self._store_state(finals)
        tops = [outputs]
        if self.expose_hidden:
            tops += [f.detach().reshape(1, streams, self.num_output) for f in finals]
        return tops

    def unroll(self, x, cont, static, state, params):
        """(outputs T x N x H, final states) for x (T, N, K), cont (T, N, 1), static (N, S)."""
        raise NotImplementedError


@register
class LSTMLayer(_Recurrent):
    """Caffe ``LSTM``: a long short-term memory layer over T timesteps of N independent streams.

    Per step ``gates = W_hc·(cont_t·h_{t-1}) + W_xc·x_t + b_c [+ W_xc_static·x_static]``, laid
    out [i, f, o, g], then the ``LSTMUnit`` cell: ``c_t = f·c_{t-1} + i·g``, ``h_t = o·tanh(c_t)``
    (``f`` is 0 where ``cont_t`` is 0, which starts a new sequence). The top is every step's
    ``h_t``. Without ``expose_hidden`` the last step's ``h`` and ``c`` are the next forward's
    initial state (zeros before the first).

    Parameters (``recurrent_param``): ``num_output`` H (> 0), ``weight_filler`` and
    ``bias_filler`` (default constant 0), ``expose_hidden`` (default false; true: the initial
    state comes from bottoms and the final state goes to tops). Blobs, in Caffe's order:
    ``W_xc (4H, K)``, ``b_c (4H,)``, ``W_xc_static (4H, S)`` (with a static input only),
    ``W_hc (4H, H)``.

    Shape (K: the product of ``x``'s axes from 2 on, S: of ``x_static``'s from 1 on; T and K
    are fixed at setup, N may change):
        - bottom 0 (``x``): ``(T, N, ...)``, at least 3 axes
        - bottom 1 (``cont``, per step and stream; Caffe expects 0 or 1): ``(T, N)``; no gradient
        - bottom 2, optional (``x_static``, added at every step): ``(N, ...)``
        - then, with ``expose_hidden``, ``h_0`` and ``c_0``: ``(1, N, H)`` each; no gradient
        - top 0 (``h``): ``(T, N, H)``
        - tops 1, 2, with ``expose_hidden`` (``h_T``, ``c_T``): ``(1, N, H)`` each"""

    type = "LSTM"
    state_names = ("h", "c")
    max_bottoms = 5
    max_tops = 3

    def param_shapes(self):
        gates = 4 * self.num_output
        shapes = [((gates, self.input_dim), False), ((gates,), True)]
        if self.static_input:
            shapes.append(((gates, self.static_dim), False))
        shapes.append(((gates, self.num_output), False))
        return shapes

    def unroll(self, x, cont, static, state, params):
        if self.static_input:
            w_xc, b_c, w_static, w_hc = params
        else:
            (w_xc, b_c, w_hc), w_static = params, None
        x_gates = x @ w_xc.t() + b_c
        static_gates = static @ w_static.t() if static is not None else None
        h, c = state
        hs = []
        for t in range(x.shape[0]):
            gates = (h * cont[t]) @ w_hc.t() + x_gates[t]
            if static_gates is not None:
                gates = gates + static_gates
            c, h = lstm_cell(c, gates, cont[t])
            hs.append(h)
        return torch.stack(hs), [h, c]


@register
class RNNLayer(_Recurrent):
    """Caffe ``RNN``: a simple (Elman) recurrent layer over T timesteps of N independent streams.

    Per step ``h_t = tanh(W_hh·(cont_t·h_{t-1}) + W_xh·x_t + b_h [+ W_xh_static·x_static])`` and
    ``o_t = tanh(W_ho·h_t + b_o)``; ``cont_t = 0`` starts a new sequence. The top is every
    step's ``o_t``. Without ``expose_hidden`` the last step's ``h`` is the next forward's
    initial state (zeros before the first).

    Parameters (``recurrent_param``): ``num_output`` H (> 0), ``weight_filler`` and
    ``bias_filler`` (default constant 0), ``expose_hidden`` (default false; true: the initial
    state comes from a bottom and the final state goes to a top). Blobs, in Caffe's order:
    ``W_xh (H, K)``, ``b_h (H,)``, ``W_xh_static (H, S)`` (with a static input only),
    ``W_hh (H, H)``, ``W_ho (H, H)``, ``b_o (H,)``.

    Shape (K: the product of ``x``'s axes from 2 on, S: of ``x_static``'s from 1 on; T and K
    are fixed at setup, N may change):
        - bottom 0 (``x``): ``(T, N, ...)``, at least 3 axes
        - bottom 1 (``cont``, per step and stream; Caffe expects 0 or 1): ``(T, N)``; no gradient
        - bottom 2, optional (``x_static``, added at every step): ``(N, ...)``
        - then, with ``expose_hidden``, ``h_0``: ``(1, N, H)``; no gradient
        - top 0 (``o``): ``(T, N, H)``
        - top 1, with ``expose_hidden`` (``h_T``): ``(1, N, H)``"""

    type = "RNN"
    state_names = ("h",)
    max_bottoms = 4
    max_tops = 2

    def param_shapes(self):
        hidden = self.num_output
        shapes = [((hidden, self.input_dim), False), ((hidden,), True)]
        if self.static_input:
            shapes.append(((hidden, self.static_dim), False))
        shapes += [((hidden, hidden), False), ((hidden, hidden), False), ((hidden,), True)]
        return shapes

    def unroll(self, x, cont, static, state, params):
        if self.static_input:
            w_xh, b_h, w_static, w_hh, w_ho, b_o = params
        else:
            (w_xh, b_h, w_hh, w_ho, b_o), w_static = params, None
        x_h = x @ w_xh.t() + b_h
        static_h = static @ w_static.t() if static is not None else None
        (h,) = state
        outputs = []
        for t in range(x.shape[0]):
            pre = (h * cont[t]) @ w_hh.t() + x_h[t]
            if static_h is not None:
                pre = pre + static_h
            h = torch.tanh(pre)
            outputs.append(torch.tanh(h @ w_ho.t() + b_o))
        return torch.stack(outputs), [h]
