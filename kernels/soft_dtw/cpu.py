"""Soft-DTW, numba CPU backend: row-major DP with the batch innermost, so every cell update is one SIMD loop over pairs.

    soft_dtw_numba(cost [B,N,M], gamma, lengths_n=None, lengths_m=None) -> [B]   (input dtype)

Same recurrence as reference.py (README.md has the maths). Design:
  * layout [N, M, B] (batch last, contiguous): R[i, j, :] depends on R[i-1, j-1, :], R[i-1, j, :], R[i, j-1, :]
    only, so the DP walks the cells row by row and each cell is an independent loop over the B pairs that LLVM
    vectorises (no wavefront, no per-diagonal overhead). The cost is copied to this layout one row at a time, into
    an [M, B] buffer that stays in L1, just before the row's DP. Per-pair lengths: the padding is replaced by 0 on
    that copy (nan/inf never enter), each pair's value is read when the row loop reaches n_b, and the
    backward is seeded at (n_b, m_b) only, so the padding's E is exactly 0 (all its successors are padding).
  * stable soft-min without a log, in base 2: a cell holds V = -R / (g ln 2) as (P, X), V = P + log2 X with X in
    [1, 2); the soft-min is a max of the predecessors' P plus a renormalised sum of X (see _forward). No overflow at
    any gamma or length. Only the two non-argmax factors 2^(P_t - Pm) are computed (the argmax's is exactly 1):
    two exponentials per cell, not three.
  * 2^x is an inlined polynomial (exponent bits for the integer part, degree-12 Taylor of e^r for |r| <= ln2/2,
    truncation error < 2e-16, evaluated by Estrin's scheme): numba has no vector libm here (no SVML), and calls to
    the scalar libm would keep the loop scalar. fastmath is limited to `contract` (fused multiply-adds: a 26% faster
    forward, no reassociation). Degree 11 was 5% faster at 32x12 but changed LLVM's interleaving so that a 16-pair
    loop ran in its scalar remainder (6x slower at B <= 16): check `_forward` at B = 16 after touching this loop.
  * the forward saves two of the three soft-min weights w_t = e_t / sum of every cell (up and left, [2, N+2, M+2, B],
    zero border; the diagonal's is 1 - w_up - w_left, exact to ~2 ulp of 1 in absolute terms); the backward is the E
    recursion E[i,j] = w_up[i+1,j] E[i+1,j] + w_left[i,j+1] E[i,j+1] + w_diag[i+1,j+1] E[i+1,j+1], seeded with
    dL/dvalue_b at (n_b, m_b): three multiply-adds per cell, no transcendental.
  * every input dtype accumulates in float64 (float32 and half inputs too: the kernels are compiled once, and the
    extra precision is free of the float32 floor `eps32 R / g` of reference.py); outputs are cast back.
  * single-threaded (nogil); a prange over batch blocks has not been tried (the benchmark compares one thread each).
"""

from __future__ import annotations

import functools
import math
import threading
import warnings

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

__all__ = ["soft_dtw_numba"]


def _on_disk_cache() -> bool:
    """Whether numba can cache compiled kernels on disk here. It picks the first writable location (__pycache__ beside
    this file, NUMBA_CACHE_DIR, the user-wide cache dir) when a function is decorated, and raises if there is none
    (a read-only install with no writable HOME): then every process compiles (~3-10 s) instead of the import failing."""
    try:
        numba.njit(cache=True)(_on_disk_cache_probe)
    except RuntimeError as err:  # "cannot cache function ...: no locator available for file ..."
        warnings.warn(f"kernels.soft_dtw: numba cannot cache compiled kernels here ({err}); compiling them in every "
                      "process. Set NUMBA_CACHE_DIR to a writable directory to keep them.", RuntimeWarning,
                      stacklevel=2)
        return False
    return True


def _on_disk_cache_probe():
    return 0


_JIT = dict(cache=_on_disk_cache(), nogil=True, fastmath={"contract"}, error_model="numpy")  # contract: FMAs only
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LANES = 16  # the batch is padded to a multiple of this: LLVM vectorises the pair loop 16 wide (2 x AVX-512),
# a shorter loop would run its scalar remainder (~8x slower per cell)


@numba.njit(inline="always", **_JIT)
def _exp2_nonpos(x):
    """2^x for x <= 0 (clamped at -1020: 2^-1020 is still normal), vectorisable: x = k + r, |r| <= 1/2, 2^r by its
    Taylor series to r^12 (relative error < 2e-16), 2^k from the exponent bits."""
    x = max(x, -1020.0)
    k = math.floor(x + 0.5)
    r = (x - k) * _LN2  # exact subtraction; |r| <= ln2 / 2
    # Estrin's scheme, not Horner: the same 12 FMAs (+3 squarings) in 4 dependent levels instead of 12. A cell of a
    # block of 8 pairs is one long dependency chain (~120 instructions) and the out-of-order window holds only ~2 of
    # them, so the shorter chain pays: the forward DP ~10% faster at 32x12 (results change in the last bit only).
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    q0 = 1.0 + r
    q1 = 0.5 + r * (1.0 / 6.0)
    q2 = 1.0 / 24.0 + r * (1.0 / 120.0)
    q3 = 1.0 / 720.0 + r * (1.0 / 5040.0)
    q4 = 1.0 / 40320.0 + r * (1.0 / 362880.0)
    q5 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0)
    s0 = q0 + r2 * q1
    s1 = q2 + r2 * q3
    s2 = q4 + r2 * q5
    t0 = s0 + r4 * s1
    t1 = s2 + r4 * (1.0 / 479001600.0)
    p = t0 + r8 * t1
    return p * np.int64((np.int64(k) + 1023) << 52).view(np.float64)


@numba.njit(**_JIT)
def _cost_row(src, i, ln, lm, scale, full, out):
    """out[j, b] = scale * src[b, i, j] inside pair b's lengths (all of it when `full`), 0 in its padding; columns
    b >= B are left alone (the caller zeroes them once). Two loop orders, chosen by measurement (the strided side is
    the slow one either way): for short rows (M <= 32: the paper's K x verbs) each pair's row is read contiguously
    and scattered over the M rows of `out`; otherwise blocks of 8 pairs per column, whose strided reads stay in L1
    (the `full` loop has no select: 2x faster than with one)."""
    nb, m = src.shape[0], src.shape[2]
    if m <= 32:
        for b in range(nb):
            row = src[b, i]
            if full:
                for j in range(m):
                    out[j, b] = scale * row[j]
            else:
                lim = lm[b] if i < ln[b] else 0
                for j in range(m):
                    out[j, b] = scale * row[j] if j < lim else 0.0
        return
    for b0 in range(0, nb, 8):
        b1 = min(nb, b0 + 8)
        for j in range(m):
            if full:
                for b in range(b0, b1):
                    out[j, b] = scale * src[b, i, j]
            else:
                for b in range(b0, b1):
                    out[j, b] = scale * src[b, i, j] if (i < ln[b] and j < lm[b]) else 0.0


@numba.njit(**_JIT)
def _forward(src, ln, lm, scale, full, w, gamma, value):
    """Row-major DP, B innermost, in base 2: cell value V = -R / (g ln 2) = P + log2 X, held as (P, X) with
    X in [1, 2). With Pm = max of the predecessors' P and F_t = 2^(P_t - Pm) in (0, 1] (the argmax's is exactly 1):
    Xr = sum_t F_t X_t in [1, 6), X = Xr / 2^k (k = 0, 1, 2: X back in [1, 2)), P = c + Pm + k - no log, no overflow.
    w[t, i, j, b] = F_t X_t / Xr: weight of predecessor t (0: up, 1: left) in cell (i, j); the diagonal's is
    1 - w_up - w_left (the backward derives it: a third of the weights' memory traffic saved, ~3% overall).
    value[b] (b < len(value)) = R of cell (ln[b], lm[b]) = -gamma ln2 (P + log2 X).
    The cost is read from src [B,N,M] one row at a time (`_cost_row`: scaled by `scale`, batch last) into a
    [M, B_padded] buffer that stays in L1: no [N, M, B] copy of the whole cost (2x the traffic) and no second call.
    """
    n, m, nb = w.shape[1] - 2, w.shape[2] - 2, w.shape[3]
    c = np.zeros((m, nb))  # the current row's cost; padding pairs (b >= B) keep 0
    neg = -1e300  # P of the border cells (their X is 0, so they never contribute)
    prev_p, prev_x = np.full((m + 1, nb), neg), np.zeros((m + 1, nb))
    cur_p, cur_x = np.empty((m + 1, nb)), np.empty((m + 1, nb))
    left_p, left_x = np.empty(nb), np.empty(nb)
    for b in range(nb):
        prev_p[0, b] = 0.0  # the origin: V = 0
        prev_x[0, b] = 1.0
    for t in range(2):  # border the backward reads: row n+1 and column m+1 get weight 0
        for j in range(m + 2):
            for b in range(nb):
                w[t, n + 1, j, b] = 0.0
        for i in range(n + 2):
            for b in range(nb):
                w[t, i, m + 1, b] = 0.0
    for i in range(1, n + 1):
        _cost_row(src, i - 1, ln, lm, scale, full, c)
        for b in range(nb):
            left_p[b] = neg
            left_x[b] = 0.0
            cur_p[0, b] = neg
            cur_x[0, b] = 0.0
        for j in range(1, m + 1):
            up_p, up_x, diag_p, diag_x = prev_p[j], prev_x[j], prev_p[j - 1], prev_x[j - 1]
            out_p, out_x, cc = cur_p[j], cur_x[j], c[j - 1]
            w_up, w_left = w[0, i, j], w[1, i, j]
            for b in range(nb):
                pu = up_p[b]
                pl = left_p[b]
                pd = diag_p[b]
                # Two exponentials, not three: the argmax's factor is exactly 1. lo <= mid <= pm are the sorted
                # predecessors; blends route 1 / 2^(lo-pm) / 2^(mid-pm) to up, left, diag (ties included).
                lo = min(pu, pl)
                hi = max(pu, pl)
                pm = max(hi, pd)
                e_lo = _exp2_nonpos(lo - pm)
                e_mid = _exp2_nonpos(min(hi, pd) - pm)
                d_top = pd >= hi
                e_hi = e_mid if d_top else 1.0  # the larger of up / left: mid when diag is the max, else the max
                u_lo = pu <= pl
                fu = (e_lo if u_lo else e_hi) * up_x[b]
                fl = (e_hi if u_lo else e_lo) * left_x[b]
                fd = (1.0 if d_top else e_mid) * diag_x[b]
                xr = fu + fl + fd
                rx = 1.0 / xr
                w_up[b] = fu * rx
                w_left[b] = fl * rx
                k = (1.0 if xr >= 2.0 else 0.0) + (1.0 if xr >= 4.0 else 0.0)
                x = xr * (1.0 if xr < 2.0 else (0.5 if xr < 4.0 else 0.25))
                p = cc[b] + pm + k
                out_p[b] = p
                out_x[b] = x
                left_p[b] = p
                left_x[b] = x
        for b in range(value.shape[0]):
            if ln[b] == i:
                value[b] = -gamma * (cur_p[lm[b], b] * _LN2 + math.log(cur_x[lm[b], b]))
        prev_p, cur_p = cur_p, prev_p
        prev_x, cur_x = cur_x, prev_x


@numba.njit(**_JIT)
def _backward(w, ln, lm, grad_value, grad):
    """grad[b, i-1, j-1] = dvalue_b/dcost[b, i-1, j-1] * grad_value[b] for b < B, by the E recursion on two rolling
    rows of E (1-based, zero border at row n+1 / column m+1); each finished row is transposed into grad while it is
    still in L1 (no [N, M, B] E array, no separate transposing pass)."""
    n, m, nb = w.shape[1] - 2, w.shape[2] - 2, w.shape[3]
    nbo = grad.shape[0]
    below = np.zeros((m + 2, nb))  # E[i+1, :, :]
    cur = np.zeros((m + 2, nb))  # E[i, :, :]; column m+1 stays 0
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            e_below, e_below_right, e_right, out = below[j], below[j + 1], cur[j + 1], cur[j]
            w_up, w_left, wd_up, wd_left = w[0, i + 1, j], w[1, i, j + 1], w[0, i + 1, j + 1], w[1, i + 1, j + 1]
            for b in range(nb):
                w_diag = 1.0 - wd_up[b] - wd_left[b]
                v = w_up[b] * e_below[b] + w_left[b] * e_right[b] + w_diag * e_below_right[b]
                out[b] = v + (grad_value[b] if (ln[b] == i and lm[b] == j) else 0.0)
        for b in range(nbo):
            for j in range(m):
                grad[b, i - 1, j] = cur[j + 1, b]
        below, cur = cur, below


def _aligned_empty(shape: tuple) -> np.ndarray:
    """np.empty(shape) of float64 starting on a 64-byte boundary (numpy only guarantees 16): whole-cache-line AVX-512
    loads and stores (the backward at 32x12: ~10% faster)."""
    size = math.prod(shape)
    buf = np.empty(size + 8)
    start = (-buf.ctypes.data % 64) // 8
    return buf[start:start + size].reshape(shape)


class _Pool:
    """Free scratch arrays by (kind, shape), reused across calls: fresh arrays of this size cost a page fault per
    4 KiB on first touch (more than the DP itself at the paper's shapes). Bounded; thread-safe."""

    def __init__(self, max_bytes: int = 256 * 2 ** 20):
        self.free: dict = {}
        self.bytes, self.max_bytes = 0, max_bytes
        self.lock = threading.Lock()

    def get(self, shape: tuple) -> np.ndarray:
        with self.lock:
            kept = self.free.get(shape)
            if kept:
                self.bytes -= kept[-1].nbytes
                return kept.pop()
        return _aligned_empty(shape)

    def put(self, array: np.ndarray) -> None:
        with self.lock:
            if self.bytes + array.nbytes <= self.max_bytes and len(self.free.setdefault(array.shape, [])) < 2:
                self.free[array.shape].append(array)
                self.bytes += array.nbytes


_POOL = _Pool()


class _Lease:
    """Holds the saved weights while the autograd graph may still need them; returns them to the pool after."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __del__(self):
        if _POOL is not None:  # None only while the interpreter tears the module down
            _POOL.put(self.array)


@functools.lru_cache(maxsize=64)
def _full_lengths(b: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(ln, lm) int64 [B padded to _LANES] of a batch without lengths: N and M, 0 for the padding pairs. Shared
    between calls (the kernels only read them)."""
    nbp = -(-b // _LANES) * _LANES
    ln, lm = np.zeros(nbp, dtype=np.int64), np.zeros(nbp, dtype=np.int64)
    ln[:b], lm[:b] = n, m
    return ln, lm


class _SoftDTWNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, gamma, lengths_n, lengths_m):
        b, n, m = cost.shape
        nbp = -(-b // _LANES) * _LANES
        full = lengths_n is None  # check_inputs gives both or neither
        if full:
            ln, lm = _full_lengths(b, n, m)
        else:  # padded pairs: length 0, never read
            ln, lm = np.zeros(nbp, dtype=np.int64), np.zeros(nbp, dtype=np.int64)
            ln[:b] = lengths_n.cpu().numpy()
            lm[:b] = lengths_m.cpu().numpy()
        src = cost.detach().to(torch.float64).contiguous().numpy()
        w = _POOL.get((2, n + 2, m + 2, nbp))
        value = np.empty(b)
        _forward(src, ln, lm, -_LOG2E / gamma, full, w, gamma, value)
        ctx.lease, ctx.ln, ctx.lm, ctx.dtype = _Lease(w), ln, lm, cost.dtype
        return torch.from_numpy(value).to(cost.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        w = ctx.lease.array
        nbp, n, m = w.shape[3], w.shape[1] - 2, w.shape[2] - 2
        b = grad_out.shape[0]
        seed = np.zeros(nbp)
        seed[:b] = grad_out.detach().to(torch.float64).numpy()
        grad = torch.empty((b, n, m), dtype=torch.float64)  # torch aligns to 64 bytes
        _backward(w, ctx.ln, ctx.lm, seed, grad.numpy())
        return grad.to(ctx.dtype), None, None, None


def soft_dtw_numba(cost: torch.Tensor, gamma: float = 1.0, lengths_n=None, lengths_m=None) -> torch.Tensor:
    """Soft-DTW values [B] of a CPU cost [B,N,M] (per-pair lengths optional), differentiable w.r.t. cost.

    Args:
        cost: [B,N,M] CPU float64/float32/float16/bfloat16 (all accumulate in float64; outputs in cost.dtype).
        gamma: smoothing > 0.
        lengths_n, lengths_m: optional long [B] in [1, N] / [1, M]; pair b uses cost[b, :n_b, :m_b] and its
            gradient is exactly zero outside that block.
    Returns:
        [B] in cost.dtype: R[n_b, m_b].
    """
    from instraction.kernels.soft_dtw.reference import check_inputs

    if cost.device.type != "cpu":
        raise ValueError(f"soft_dtw: the numba backend needs a CPU tensor, got {cost.device}")
    lengths_n, lengths_m = check_inputs(cost, gamma, lengths_n, lengths_m)
    if cost.shape[0] == 0:
        return cost.sum(dim=(1, 2))
    return _SoftDTWNumba.apply(cost, float(gamma), lengths_n, lengths_m)
