"""Soft-DTW, PyTorch backend: an anti-diagonal wavefront vectorised over the batch, with an explicit backward.

    soft_dtw_torch(cost [B,N,M], gamma, lengths_n=None, lengths_m=None) -> [B]   (input dtype)

Recurrence (Cuturi & Blondel 2017), with R[0,0] = 0 and R[i,0] = R[0,j] = +inf:
    R[i,j] = cost[i-1,j-1] + softmin_g(R[i-1,j-1], R[i-1,j], R[i,j-1]),   softmin_g(a) = -g log sum exp(-a/g)
and the value of pair b is R[n_b, m_b]. The maths is in README.md; in short:
  * work with V = -R/g, so each cell is V = Cn + logsumexp(three predecessors), Cn = -cost/g;
  * the max-shift of that logsumexp is the hard-DTW potential P (P = Cn + max of the predecessors' P), computed by
    a cheap max-plus wavefront first; then X = exp(V - P) obeys a *linear* recurrence
        X = F_up * X_up + F_left * X_left + F_diag * X_diag,    F = exp(P_pred + Cn - P) in [0, 1],
    so a diagonal costs three multiply-adds and the exponentials are taken whole-tensor, once;
  * X >= 1 (P is the best path, V sums all of them) and X <= #paths grows at most like (1+sqrt2)^diagonals, so
    every `block` diagonals the potential is re-anchored to V (X := 1), keeping X < e^50 (fp32) / e^600 (fp64);
  * backward = the E-matrix recursion of Cuturi & Blondel, E_c = sum_s E_s exp(V_c + Cn_s - V_s), run as
    G = E / X, which obeys G_c = sum_s F(s <- c) G_s with the saved F (no exponential in the backward).
Layout: diagonal-major ("skewed"), flattened: buffer[k*W + i, b] holds cell (i, j = k - i) of pair b, W = N+2, so
a diagonal is a contiguous [len, B] slice and its predecessors are contiguous slices of the two previous rows.
The shorter side is `i` (the cost is transposed when N > M; soft-DTW is symmetric). Buffers and their per-diagonal
views are built once per shape and reused (a pool; small shapes are dominated by per-op overhead, not flops).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import torch
from torch.autograd.function import once_differentiable

__all__ = ["soft_dtw_torch", "check_inputs", "compute_dtype"]

_LOG_GROWTH = math.log1p(math.sqrt(2.0))  # number of monotone paths grows at most like (1 + sqrt 2)^diagonals
_LOG_BOUND = {torch.float32: 50.0, torch.float64: 600.0}  # keep log X below this ...
_LOG_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}  # ... and F >= e^floor: a normal number, so exp() stays
# on its fast path (it is >10x slower on underflow); the error, <= e^(floor + bound) relative, is below rounding.
_CHUNK = 64  # at most this many diagonals per whole-tensor F computation
_CHUNK_OVERHEAD = 1536  # per-chunk fixed cost (6 ops) in F entries x B, for the chunking trade-off
_POOL_PER_SHAPE, _POOL_BYTES = 2, 256 * 2 ** 20  # free workspaces kept per shape, and in all (LRU by shape)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32/float16/bfloat16 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inputs(cost: torch.Tensor, gamma: float, lengths_n, lengths_m):
    """Validate the public arguments; returns (lengths_n, lengths_m) as long tensors [B] on cost.device, or
    (None, None) when both are None. Raises ValueError with the reason on bad input."""
    if cost.dim() != 3:
        raise ValueError(f"soft_dtw: cost must be [B,N,M], got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise ValueError(f"soft_dtw: cost must be floating point, got {cost.dtype}")
    b, n, m = cost.shape
    if n < 1 or m < 1:
        raise ValueError(f"soft_dtw: sequences must be non-empty, got N={n}, M={m}")
    if isinstance(gamma, bool) or not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"soft_dtw: gamma must be a finite float > 0, got {gamma!r}")
    if lengths_n is None and lengths_m is None:
        return None, None
    out = []
    for name, lengths, full in (("lengths_n", lengths_n, n), ("lengths_m", lengths_m, m)):
        if lengths is None:
            lengths = torch.full((b,), full, dtype=torch.long, device=cost.device)
        lengths = torch.as_tensor(lengths, device=cost.device)
        if lengths.shape != (b,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise ValueError(f"soft_dtw: {name} must be an integer tensor [B={b}], got {lengths.dtype} "
                             f"{tuple(lengths.shape)}")
        lengths = lengths.long()
        if b and (int(lengths.min()) < 1 or int(lengths.max()) > full):
            raise ValueError(f"soft_dtw: {name} must lie in [1, {full}], got {lengths.tolist()}")
        out.append(lengths)
    return out[0], out[1]


def _diag_range(k: int, n: int, m: int) -> tuple[int, int]:
    """Rows i of the cells on anti-diagonal k = i + j (1 <= i <= n, 1 <= j <= m): the closed range [lo, hi]."""
    return max(1, k - m), min(n, k - 1)


def block_size(dtype: torch.dtype, n: int) -> int:
    """Diagonals per potential re-anchoring: log X <= log(2(n+2)) + log(1+sqrt2) * block <= _LOG_BOUND."""
    return max(2, int((_LOG_BOUND[dtype] - math.log(2 * (n + 2))) / _LOG_GROWTH))


def _chunking(k0: int, k1: int, n: int, m: int, batch: int) -> list[int]:
    """Ends of the chunks [c0, c1) that split diagonals [k0, k1) for the whole-tensor F computation, minimising
    sum of rectangle areas (rows x (hi - lo + 1)) + a per-chunk overhead: a small DP over chunk boundaries (the valid
    band's triangles make one big rectangle wasteful, many small ones cost op overhead)."""
    overhead = _CHUNK_OVERHEAD / batch
    best, back = [0.0] + [math.inf] * (k1 - k0), [0] * (k1 - k0 + 1)
    for e in range(1, k1 - k0 + 1):
        for s in range(max(0, e - _CHUNK), e):
            c0, c1 = k0 + s, k0 + e
            area = (c1 - c0) * (min(n, c1 - 2) - max(1, c0 - m) + 1)
            if best[s] + area + overhead < best[e]:
                best[e], back[e] = best[s] + area + overhead, s
    ends, e = [], k1 - k0
    while e > 0:
        ends.append(k0 + e)
        e = back[e]
    return ends[::-1]


class _Workspace:
    """Buffers [K*W, B] (flattened skew layout) for one (n, m, B, dtype, device), their constant borders, and the
    views each diagonal step reads and writes. Cells never written keep their one-time initial values: borders
    P = NEG ("-inf" that stays finite, so no inf - inf), X = 0, and G = 0 off the valid cells."""

    def __init__(self, n: int, m: int, batch: int, dtype: torch.dtype, device: torch.device):
        self.key = (n, m, batch, dtype, device)
        self.n, self.m, self.batch = n, m, batch
        k_rows, width = n + m + 1, n + 2
        self.k_rows, self.width = k_rows, width
        neg = torch.finfo(dtype).min / 1e6
        self.floor = _LOG_FLOOR[dtype]
        new = dict(dtype=dtype, device=device)
        self.cn = torch.zeros((k_rows * width, batch), **new)  # skewed -cost/gamma
        self.p = torch.full((k_rows * width, batch), neg, **new)  # hard-DTW potential
        self.x = torch.zeros((k_rows * width, batch), **new)  # exp(V - P)
        self.g = torch.zeros((k_rows * width, batch), **new)  # E / X
        self.f = torch.zeros((3, k_rows * width, batch), **new)  # F_up, F_left, F_diag of each cell
        self.d = torch.zeros((min(_CHUNK, k_rows), width, batch), **new)  # scratch: P - Cn = max of the preds' P
        self.p[0], self.x[0] = 0.0, 1.0  # the origin R[0,0] = 0
        self.blocks = [(k0, min(k_rows, k0 + block_size(dtype, n))) for k0 in range(2, k_rows, block_size(dtype, n))]
        self.nbytes = sum(t.numel() * t.element_size() for t in (self.cn, self.p, self.x, self.g, self.f, self.d))
        self._build_views()

    def cells(self, buf: torch.Tensor) -> torch.Tensor:
        """The [n, m, B] cells of a skewed buffer as a strided view: cell (i, j) (1-based) sits at row
        (i + j) * W + i = i * (W + 1) + j * W, an affine map, so skewing and unskewing are single strided copies."""
        b = self.batch
        return buf.as_strided((self.n, self.m, b), ((self.width + 1) * b, self.width * b, 1),
                              buf.storage_offset() + (2 * self.width + 1) * b)

    def _build_views(self):
        n, m, w = self.n, self.m, self.width
        p, x, g, f, cn = self.p, self.x, self.g, self.f, self.cn
        self.fwd_p, self.fwd_x, self.bwd = {}, {}, {}
        tmp = torch.empty((w, self.batch), dtype=p.dtype, device=p.device)
        for k in range(2, self.k_rows):
            lo, hi = _diag_range(k, n, m)
            c, up, left, diag = slice(k * w + lo, k * w + hi + 1), (k - 1) * w + lo - 1, (k - 1) * w + lo, \
                (k - 2) * w + lo - 1
            ln = hi - lo + 1
            self.fwd_p[k] = (p[up:up + ln], p[left:left + ln], p[diag:diag + ln], tmp[:ln], cn[c], p[c])
            self.fwd_x[k] = (x[c], f[0, c], x[up:up + ln], f[1, c], x[left:left + ln], f[2, c], x[diag:diag + ln])
            # successors of cell (k, i): up-successor (k+1, i+1), left-successor (k+1, i), diagonal (k+2, i+1)
            s_up, s_left, s_diag = (k + 1) * w + lo + 1, (k + 1) * w + lo, (k + 2) * w + lo + 1
            last = self.k_rows * w  # successors past the last diagonal are never used (block flags)
            view = lambda t, s: t[s:s + ln] if s + ln <= last else None  # noqa: E731
            self.bwd[k] = (g[c], view(f[0], s_up), view(g, s_up), view(f[1], s_left), view(g, s_left),
                           view(f[2], s_diag), view(g, s_diag))
        p3, f3, cn3 = p.view(-1, w, self.batch), f.view(3, -1, w, self.batch), cn.view(-1, w, self.batch)
        self.chunks_of = {}  # block start -> F over rectangles of diagonals [c0, c1) x rows [lo, hi] (entries off
        for k0, k1 in self.blocks:  # the valid cells get finite junk or keep their initial 0: read only against G = 0)
            ends = _chunking(k0, k1, n, m, self.batch)
            for c0, c1 in zip([k0] + ends[:-1], ends):
                lo, hi = max(1, c0 - m), min(n, c1 - 2)
                cols = slice(lo, hi + 1)
                preds = (p3[c0 - 1:c1 - 1, lo - 1:hi], p3[c0 - 1:c1 - 1, cols], p3[c0 - 2:c1 - 2, lo - 1:hi])
                self.chunks_of.setdefault(k0, []).append(
                    (p3[c0:c1, cols], cn3[c0:c1, cols], self.d[:c1 - c0, :hi - lo + 1], preds,
                     tuple(f3[t, c0:c1, cols] for t in range(3)), f3[:, c0:c1, cols]))

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, ends: torch.Tensor) -> torch.Tensor:
        """Wavefronts over self.cn; returns V at the flat cells `ends` [B] (pair b reads column b)."""
        saved = {}
        for k0, k1 in self.blocks:
            if k0 > 2:
                saved[k0] = self._reanchor(k0)
            for k in range(k0, k1):  # max-plus: P = Cn + max(P_up, P_left, P_diag)
                up, left, diag, mx, cn, out = self.fwd_p[k]
                torch.maximum(up, left, out=mx)
                torch.maximum(mx, diag, out=mx)
                torch.add(mx, cn, out=out)
            for p, cn, d, preds, fs, f_all in self.chunks_of[k0]:  # F_t = exp(P_pred_t - (P - Cn)) <= 1,
                torch.sub(p, cn, out=d)  # floored at e^floor: exp() stays on its fast path (>10x slower on underflow)
                for pred, out in zip(preds, fs):
                    torch.sub(pred, d, out=out)
                f_all.clamp_(self.floor, 0.0).exp_()  # the three planes at once: [3, rows, cols, B]
            for k in range(k0, k1):  # X = F_up X_up + F_left X_left + F_diag X_diag
                out, f_up, up, f_left, left, f_diag, diag = self.fwd_x[k]
                torch.mul(f_up, up, out=out)
                out.addcmul_(f_left, left)
                out.addcmul_(f_diag, diag)
            if k0 > 2:  # rows k0-2, k0-1 go back to the block that computed them
                rows = slice((k0 - 2) * self.width, k0 * self.width)
                self.p[rows], self.x[rows] = saved[k0]
        cols = torch.arange(self.batch, device=self.x.device)
        return self.x[ends, cols].log() + self.p[ends, cols]

    def _reanchor(self, k0: int):
        """Rows k0-2, k0-1 become the next block's inputs: P := V = P + log X and X := 1 on their cells."""
        rows = slice((k0 - 2) * self.width, k0 * self.width)
        saved = (self.p[rows].clone(), self.x[rows].clone())
        for k in (k0 - 2, k0 - 1):
            c = self.fwd_x[k][0]
            self.fwd_p[k][5].add_(c.log())
            c.fill_(1.0)
        return saved

    # ---------------------------------------------------------------------------------------------- backward
    def backward(self, ends: torch.Tensor) -> None:
        """Reverse wavefront of G = E / X into self.g, with E = 1 at each pair's end cell."""
        cols = torch.arange(self.batch, device=self.x.device)
        seed_val = self.x[ends, cols].reciprocal()
        end_k = torch.div(ends, self.width, rounding_mode="floor")
        seeds = {k: (end_k == k).nonzero().squeeze(1) for k in end_k.unique().tolist()}
        carry: dict[int, torch.Tensor] = {}  # next block's share of E on a block's last two rows
        for k0, k1 in reversed(self.blocks):
            for k in range(k1 - 1, k0 - 1, -1):
                out = self.bwd[k][0]
                self._adjoint(out, k, k + 1 < k1, k + 2 < k1)
                if k in carry:
                    out.add_(carry.pop(k).div_(self.fwd_x[k][0]))
                if k in seeds:
                    sel = seeds[k]
                    self.g[ends[sel], sel] += seed_val[sel]
            if k0 > 2:  # this block's share of E on its input rows, where X was 1 (the last of the row k0-2
                for k, use_next in ((k0 - 1, True), (k0 - 2, False)):  # successors are in the previous block)
                    part = torch.empty_like(self.bwd[k][0])
                    self._adjoint(part, k, use_next, k + 2 < k1)
                    carry[k] = part

    def _adjoint(self, out, k, use_next, use_next2):
        """out = sum over successors s of F(s <- c) G[s]; those outside the current block are skipped."""
        _, f_up, g_up, f_left, g_left, f_diag, g_diag = self.bwd[k]
        if use_next:
            torch.mul(f_up, g_up, out=out)
            out.addcmul_(f_left, g_left)
        else:
            out.zero_()
        if use_next2:
            out.addcmul_(f_diag, g_diag)


_POOL: OrderedDict = OrderedDict()
_POOL_LOCK = threading.Lock()


def _acquire(n, m, batch, dtype, device) -> _Workspace:
    key = (n, m, batch, dtype, device)
    with _POOL_LOCK:
        free = _POOL.get(key)
        if free:
            _POOL.move_to_end(key)
            return free.pop()
    return _Workspace(n, m, batch, dtype, device)


def _release(ws: _Workspace) -> None:
    with _POOL_LOCK:
        free = _POOL.setdefault(ws.key, [])
        _POOL.move_to_end(ws.key)
        if len(free) < _POOL_PER_SHAPE:
            free.append(ws)
        while sum(w.nbytes for kept in _POOL.values() for w in kept) > _POOL_BYTES:  # drop least recently used
            oldest = next(iter(_POOL))
            if _POOL[oldest]:
                _POOL[oldest].pop(0)
            if not _POOL[oldest]:
                del _POOL[oldest]


class _Lease:
    """Holds a workspace while an autograd graph may still need it; gives it back to the pool when collected."""

    def __init__(self, ws: _Workspace):
        self.ws = ws

    def __del__(self):
        if _release is not None:  # None only while the interpreter tears the module down
            _release(self.ws)


class _SoftDTWTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, gamma, lengths_n, lengths_m):
        b, n, m = cost.shape
        transposed = n > m
        if lengths_n is None:
            masked = cost
            end_n, end_m = torch.full((b,), n, device=cost.device), torch.full((b,), m, device=cost.device)
        else:  # padding never reaches valid cells (the DP is causal), but nan/inf there must not reach E
            i = torch.arange(n, device=cost.device).view(1, -1, 1)
            j = torch.arange(m, device=cost.device).view(1, 1, -1)
            masked = cost.masked_fill((i >= lengths_n.view(-1, 1, 1)) | (j >= lengths_m.view(-1, 1, 1)), 0.0)
            end_n, end_m = lengths_n, lengths_m
        if transposed:
            masked, n, m, end_n, end_m = masked.transpose(1, 2), m, n, end_m, end_n
        ws = _acquire(n, m, b, compute_dtype(cost.dtype), cost.device)
        ctx.lease = _Lease(ws)
        torch.mul(masked.permute(1, 2, 0), -1.0 / gamma, out=ws.cells(ws.cn))  # skew: one strided copy
        ends = (end_n + end_m) * ws.width + end_n  # flat skewed index of each pair's last cell
        value = ws.forward(ends)
        ctx.ends, ctx.transposed, ctx.dtype = ends, transposed, cost.dtype
        return (-gamma * value).to(cost.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        ws = ctx.lease.ws
        ws.backward(ctx.ends)  # G = E / X on the skewed cells
        g, x = ws.cells(ws.g), ws.cells(ws.x)  # [n, m, B] strided views, rows of B contiguous
        if ctx.transposed:
            g, x = g.transpose(0, 1), x.transpose(0, 1)
        n, m, b = g.shape
        cells = torch.empty((n, m, b), dtype=g.dtype, device=g.device)
        torch.mul(g, grad_out.to(g.dtype), out=cells)  # dR/dcost = dV/dCn = E = X * G (the -1/gamma's cancel)
        cells.mul_(x)
        grad = cells.view(n * m, b).t().contiguous().view(b, n, m)  # one blocked 2-D transpose to [B,N,M]
        return grad.to(ctx.dtype), None, None, None


def soft_dtw_torch(cost: torch.Tensor, gamma: float = 1.0, lengths_n=None, lengths_m=None) -> torch.Tensor:
    """Soft-DTW values [B] of cost [B,N,M] (per-pair lengths optional), differentiable w.r.t. cost.

    Args:
        cost: [B,N,M] float64/float32/float16/bfloat16 (half types accumulate in float32).
        gamma: smoothing > 0.
        lengths_n, lengths_m: optional long [B] in [1, N] / [1, M]; pair b uses cost[b, :n_b, :m_b] and its
            gradient is exactly zero outside that block.
    Returns:
        [B] in cost.dtype: R[n_b, m_b].
    """
    lengths_n, lengths_m = check_inputs(cost, gamma, lengths_n, lengths_m)
    if cost.shape[0] == 0:
        return cost.sum(dim=(1, 2))
    return _SoftDTWTorch.apply(cost, float(gamma), lengths_n, lengths_m)
