"""3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2015), on CPU.

Each 2×2 output tile is computed from a 4×4 input tile with 16 multiplies per channel pair
instead of 36 (2.25× fewer): ``Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A``. Over a layer that is 16 GEMMs,
one per transform point, ``U_k (O×C) · V_k (C×tiles)``, between element-wise tile transforms.
The same holds for the input gradient (dy convolved with the flipped, transposed kernel, whose
transformed weights are ``U`` re-indexed) and for the weight gradient (``dU_k = Ŷ_k · V_kᵀ``
with ``Ŷ = A dY Aᵀ``, then ``dW = Gᵀ dU G``).

Why: on the CPU the VGG body of FCN-8s is most of a training step, and torch's (oneDNN's)
direct kernels already run near the core's peak, so fewer multiplies is what is left to gain
(bench/conv_kernels.py, bench/RESULTS.md). F(2×2, 3×3) is the variant whose transforms only
add and halve (entries 0, ±1, ±½): its float32 error stays at or below the direct kernel's
(~1e-6 of the output's scale), far inside the golden tolerance (1e-4 of the scale).

Speed comes from the transforms being a few large unit-stride element-wise operations: the
input is split into even and odd columns once, so every later operation reads whole rows.
Work is done in chunks of tile rows (``_CHUNK_BYTES`` of transformed tiles at most), and the
intermediate buffers are kept per thread between calls (``_Workspace``): freshly mapped memory
costs a page fault per 4 KiB, which was a third of a layer's time.
"""
from __future__ import annotations

import threading

import torch

#: transformed input tiles (16 values per 2×2 output tile and channel) per chunk, at most
_CHUNK_BYTES = 16 << 20

# G (4×3) of F(2×2, 3×3): U[α,β] = Σ_ij G[α,i]·G[β,j]·g[i,j]
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# Ŷ = A dY Aᵀ is formed without the sign of A's last row (Ŷ[3,·] = +dY[1,·]); the weight
# gradient puts it back through these factors: dW = Σ_k s_α·s_β·G[α,i]·G[β,j]·dU_k
_SIGN = (1.0, 1.0, 1.0, -1.0)

# The input gradient's kernel rot180(g)ᵀ has U'[α,β] = U[π(α), π(β)]ᵀ: reversing g reverses
# G's columns, which is G with rows 0 and 3 swapped.
_SWAP = (3, 1, 2, 0)
_FLIP = [4 * _SWAP[a] + _SWAP[b] for a in range(4) for b in range(4)]


def _kernel_matrix(signed: bool, dtype) -> torch.Tensor:
    """(16, 9): row k = 4α + β, column 3i + j: G[α,i]·G[β,j] (times s_α·s_β if ``signed``)."""
    rows = []
    for a in range(4):
        for b in range(4):
            s = _SIGN[a] * _SIGN[b] if signed else 1.0
            rows.append([s * _G[a][i] * _G[b][j] for i in range(3) for j in range(3)])
    return torch.tensor(rows, dtype=dtype)


_KERNELS = {}


def _kernels(signed, dtype):
    key = (signed, dtype)
    if key not in _KERNELS:
        _KERNELS[key] = _kernel_matrix(signed, dtype)
    return _KERNELS[key]


def applies(weight, stride, pad, dilation) -> bool:
    """Whether this module computes the convolution: a 3×3 kernel, stride 1, no dilation,
    the same padding ≤ 2 on both axes (the input gradient pads 2 − pad)."""
    return (tuple(weight.shape[2:]) == (3, 3) and list(stride) == [1, 1] and list(dilation) == [1, 1]
            and pad[0] == pad[1] and 0 <= pad[0] <= 2)


class _Workspace(threading.local):
    """Scratch buffers by name, grown as needed and kept for the next call (one set per thread,
    so two nets running in two threads never share one)."""

    def __init__(self):
        self.buffers = {}

    def take(self, name, shape, dtype, zero=False):
        count = 1
        for d in shape:
            count *= d
        buf = self.buffers.get((name, dtype))
        if buf is None or buf.numel() < count:
            buf = self.buffers[(name, dtype)] = torch.empty(count, dtype=dtype)
        out = buf[:count].view(shape)
        return out.zero_() if zero else out


_WORK = _Workspace()


def release_workspace() -> None:
    """Drop this thread's scratch buffers (they are otherwise kept for the next convolution)."""
    _WORK.buffers.clear()


def _chunks(n, th, tw, channels, itemsize):
    """(first image, end image, first tile row, end tile row) per chunk: whole images while
    they fit ``_CHUNK_BYTES``, else one image in bands of tile rows."""
    row_bytes = 16 * channels * tw * itemsize
    if row_bytes * th <= _CHUNK_BYTES:
        step = max(1, _CHUNK_BYTES // (row_bytes * th))
        return [(i, min(n, i + step), 0, th) for i in range(0, n, step)]
    band = max(1, _CHUNK_BYTES // row_bytes)
    return [(i, i + 1, r, min(th, r + band)) for i in range(n) for r in range(0, th, band)]


def _split_columns(x, pad, row0, rows, tw):
    """Tile rows from ``row0`` on need padded rows 2·row0 … : those ``rows`` rows of the zero-padded
    input, as even and odd columns (2, N, C, rows, tw+1): ``[p][..., r, j] = x_pad[2·row0 + r, 2j + p]``."""
    n, c, h, w = x.shape
    out = _WORK.take("a", (2, n, c, rows, tw + 1), x.dtype, zero=True)
    top = 2 * row0 - pad  # the input row of padded row 2·row0
    lo, hi = max(0, top), min(h, top + rows)
    if hi <= lo:
        return out
    for parity in (0, 1):
        j0 = max(0, (pad - parity + 1) // 2)  # padded column 2j + parity is input column 2j + parity − pad
        first = 2 * j0 + parity - pad
        count = min(len(range(first, w, 2)), tw + 1 - j0)
        if count > 0:
            out[parity, :, :, lo - top:hi - top, j0:j0 + count] = x[:, :, lo:hi, first:first + 2 * count - 1:2]
    return out


def input_transform(x, pad, row0, row1, tw):
    """V = Bᵀ d B of the 4×4 input tiles (stride 2) of tile rows row0…row1−1, as
    (4, 4, C, N, row1 − row0, tw) in the workspace."""
    n, c = x.shape[:2]
    tr = row1 - row0
    cols = _split_columns(x, pad, row0, 2 * tr + 2, tw)
    e0, e1, o0, o1 = cols[0, ..., :tw], cols[0, ..., 1:], cols[1, ..., :tw], cols[1, ..., 1:]
    # columns (β): Bᵀ applied to (d0, d1, d2, d3) = (e0, o0, e1, o1)
    cb = _WORK.take("b", (4, n, c, 2 * tr + 2, tw), x.dtype)
    torch.sub(e0, e1, out=cb[0])
    torch.add(o0, e1, out=cb[1])
    torch.sub(e1, o0, out=cb[2])
    torch.sub(o0, o1, out=cb[3])
    # rows (α), the four β at once; stored (α, β, C, N, …) so V_k is a (C, N·tiles) matrix
    v = _WORK.take("v", (4, 4, c, n, tr, tw), x.dtype)
    r = [cb[:, :, :, i:i + 2 * tr:2] for i in range(4)]  # (β, N, C, tr, tw)
    dest = v.permute(0, 1, 3, 2, 4, 5)
    torch.sub(r[0], r[2], out=dest[0])
    torch.add(r[1], r[2], out=dest[1])
    torch.sub(r[2], r[1], out=dest[2])
    torch.sub(r[1], r[3], out=dest[3])
    return v


def output_transform(m, y, bias=None):
    """Y = Aᵀ M A per tile, ``m`` (4, 4, O, N, tr, tw) into ``y`` (N, O, ≤2·tr, ≤2·tw), plus ``bias``."""
    _, _, o, n, tr, tw = m.shape
    s = _WORK.take("a", (2, 4, o, n, tr, tw), m.dtype)  # rows (α → a), the four β at once
    torch.add(m[0], m[1], out=s[0])
    s[0] += m[2]
    torch.sub(m[1], m[2], out=s[1])
    s[1] -= m[3]
    q = _WORK.take("b", (2, 2, o, n, tr, tw), m.dtype)  # columns (β → b)
    torch.add(s[:, 0], s[:, 1], out=q[:, 0])
    q[:, 0] += s[:, 2]
    torch.sub(s[:, 1], s[:, 2], out=q[:, 1])
    q[:, 1] -= s[:, 3]
    if bias is not None:
        q += bias.view(1, 1, o, 1, 1, 1)
    for a in (0, 1):
        for b in (0, 1):
            part = y[:, :, a::2, b::2]
            part.copy_(q[a, b, :, :, :part.shape[2], :part.shape[3]].transpose(0, 1))


def gradient_transform(dy, tr, tw):
    """Ŷ = A dY Aᵀ per 2×2 tile of ``dy`` (N, O, ≤2·tr, ≤2·tw), without the last row's and
    column's sign (``_SIGN``): (4, 4, O, N, tr, tw); tiles past the edge of ``dy`` are zero."""
    n, o = dy.shape[:2]
    d = _WORK.take("a", (2, 2, o, n, tr, tw), dy.dtype, zero=True)
    for a in (0, 1):
        for b in (0, 1):
            part = dy[:, :, a::2, b::2]
            d[a, b, :, :, :part.shape[2], :part.shape[3]] = part.transpose(0, 1)
    t = _WORK.take("b", (4, 2, o, n, tr, tw), dy.dtype)  # rows: (d0, d0 + d1, d0 − d1, d1)
    t[0] = d[0]
    torch.add(d[0], d[1], out=t[1])
    torch.sub(d[0], d[1], out=t[2])
    t[3] = d[1]
    g = _WORK.take("g", (4, 4, o, n, tr, tw), dy.dtype)  # columns, the four rows at once
    g[:, 0] = t[:, 0]
    torch.add(t[:, 0], t[:, 1], out=g[:, 1])
    torch.sub(t[:, 0], t[:, 1], out=g[:, 2])
    g[:, 3] = t[:, 1]
    return g


def weight_transform(weight, gemm):
    """U = G g Gᵀ: (O, C/group, 3, 3) → (16, O, C/group)."""
    o, cg = weight.shape[:2]
    u = weight.new_empty((16, o * cg))
    gemm(_kernels(False, weight.dtype), weight.reshape(o * cg, 9).t(), u)
    return u.view(16, o, cg)


def _batched(gemm, a, b, out, accumulate=False):
    """out[i] (+)= a[i] @ b[i] for the leading axis (one GEMM per transform point and group)."""
    for i in range(a.shape[0]):
        gemm(a[i], b[i], out[i], accumulate)


def _conv(x, u, pad, group, bias, gemm):
    """``x`` convolved with the transformed 3×3 weights ``u`` (16·group, O/g, C/g), stride 1."""
    n, c, h, w = x.shape
    og = u.shape[1]
    o = og * group
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    y = x.new_empty((n, o, oh, ow))
    for i0, i1, r0, r1 in _chunks(n, th, tw, max(c, o), x.element_size()):
        tr, nc = r1 - r0, i1 - i0
        v = input_transform(x[i0:i1], pad, r0, r1, tw).view(16 * group, c // group, nc * tr * tw)
        m = _WORK.take("m", (16 * group, og, nc * tr * tw), x.dtype)
        _batched(gemm, u, v, m)
        output_transform(m.view(4, 4, o, nc, tr, tw), y[i0:i1, :, 2 * r0:2 * r1], bias)
    return y


def convolve(x, weight, bias, pad, group, gemm):
    """conv2d(x, weight, bias, stride 1, padding ``pad``, groups ``group``) for a 3×3 kernel.
    ``gemm(a, b, out, accumulate)`` writes (or adds) the 2-D product a @ b into ``out``."""
    u = weight_transform(weight, gemm)
    return _conv(x, u.view(16 * group, u.shape[1] // group, u.shape[2]), pad, group, bias, gemm)


def input_gradient(dy, weight, pad, group, gemm):
    """dx of ``convolve``: dy convolved with rot180(W)ᵀ, padding 2 − pad."""
    o, cg = weight.shape[:2]
    u = weight_transform(weight, gemm)[_FLIP]  # the flipped kernel's points, still (O, C/g)
    u = u.view(16 * group, o // group, cg).transpose(1, 2)  # (16·g, C/g, O/g), a view
    return _conv(dy, u, 2 - pad, group, None, gemm)


def weight_gradient(x, dy, pad, group, gemm, out, accumulate=False):
    """dW of ``convolve`` written into (or, with ``accumulate``, added to) ``out`` (O, C/g, 3, 3)."""
    n, c = x.shape[:2]
    o = dy.shape[1]
    oh, ow = dy.shape[2:]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    cg, og = c // group, o // group
    du = _WORK.take("du", (16 * group, og, cg), x.dtype)
    first = True
    for i0, i1, r0, r1 in _chunks(n, th, tw, max(c, o), x.element_size()):
        tr, nc = r1 - r0, i1 - i0
        v = input_transform(x[i0:i1], pad, r0, r1, tw).view(16 * group, cg, nc * tr * tw)
        g = gradient_transform(dy[i0:i1, :, 2 * r0:2 * r1], tr, tw).view(16 * group, og, nc * tr * tw)
        _batched(gemm, g, v.transpose(1, 2), du, accumulate=not first)  # Σ Ŷ_k V_kᵀ
        first = False
    gemm(du.view(16, o * cg).t(), _kernels(True, x.dtype), out.view(o * cg, 9), accumulate)
    return out
