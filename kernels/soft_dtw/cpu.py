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
  * threads (`thread_budget`: numba's count, default the core count, capped by torch's intra-op threads): the pairs
    are split into up to that many lane blocks of equal width, whole 16-lane groups (`_plan`), run by a prange; every
    per-pair array is block-major ([blocks, ..., lanes]) so a block's loops are the single-threaded ones; when that
    leaves threads idle (fewer than 16 pairs per thread) and a pair's DP has >= 64 x 64 cells, each pair's DP is also
    cut into tiles (p blocks along the shorter side, 4p along the longer, >= 32 cells a side) run as a wavefront of
    tile anti-diagonals, one parallel region each; tiles hand their last row / column to their neighbours through
    small edge buffers. Every cell does the same arithmetic whatever the plan, so results are bit-identical at any
    thread count. One tile in all (one thread, or few pairs on a small DP) skips the parallel driver, whose launch
    costs ~40 us.
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
def _cost_row(src, i, ln, lm, scale, full, out, c0):
    """out[jj, b] = scale * src[b, i, c0 + jj] for the len(src) pairs (a lane block's; len(out) columns from c0),
    inside pair b's lengths (all of it when `full`), 0 in its padding; columns of the padding pairs (b >= len(src))
    are left alone (the caller zeroes them once). Two loop orders, chosen by measurement (the strided side is the
    slow one either way): for short rows (M <= 32: the paper's K x verbs) each pair's row is read contiguously and
    scattered over the rows of `out`; otherwise blocks of 8 pairs per column, whose strided reads stay in L1 (the
    `full` loop has no select: 2x faster than with one)."""
    nb, wd = src.shape[0], out.shape[0]
    if src.shape[2] <= 32:
        for b in range(nb):
            row = src[b, i, c0:c0 + wd]
            if full:
                for jj in range(wd):
                    out[jj, b] = scale * row[jj]
            else:
                lim = lm[b] - c0 if i < ln[b] else 0
                for jj in range(wd):
                    out[jj, b] = scale * row[jj] if jj < lim else 0.0
        return
    for b0 in range(0, nb, 8):
        b1 = min(nb, b0 + 8)
        for jj in range(wd):
            if full:
                for b in range(b0, b1):
                    out[jj, b] = scale * src[b, i, c0 + jj]
            else:
                for b in range(b0, b1):
                    out[jj, b] = scale * src[b, i, c0 + jj] if (i < ln[b] and c0 + jj < lm[b]) else 0.0


@numba.njit(**_JIT)
def _forward_tile(src, ln, lm, scale, full, w, gamma, value, hb_p, hb_x, vb_p, vb_x, i0, i1, j0, j1, r, q):
    """The forward DP (row-major, pairs innermost, in base 2) on the tile rows i0..i1 x columns j0..j1 (1-based) of
    one lane block (its arrays: src [<= lanes, N, M], ln, lm, value [lanes], w [2, N+2, M+2, lanes], edges
    [tiles, length, lanes]). A cell's value V = -R / (g ln 2) = P + log2 X is held as (P, X) with X in [1, 2).
    With Pm = max of the predecessors' P and F_t = 2^(P_t - Pm) in (0, 1] (the argmax's is exactly 1):
    Xr = sum_t F_t X_t in [1, 6), X = Xr / 2^k (k = 0, 1, 2: X back in [1, 2)), P = c + Pm + k - no log, no overflow.
    w[t, i, j, b] = F_t X_t / Xr: weight of predecessor t (0: up, 1: left) in cell (i, j); the diagonal's is
    1 - w_up - w_left (the backward derives it: a third of the weights' memory traffic saved, ~3% overall).
    value[b] = R of cell (ln[b], lm[b]) = -gamma ln2 (P + log2 X), written by the tile that holds that cell.
    Tile (r, q) reads row i0 - 1 from hb[r] and column j0 - 1 from vb[q] (the border when i0 = 1 / j0 = 1) and
    writes its last row to hb[r + 1], its last column to vb[q + 1] (when those exist). The cost is read one row at a
    time (`_cost_row`: scaled, batch last) into a buffer that stays in L1: no [N, M, B] copy of the whole cost."""
    n, m, nb = w.shape[1] - 2, w.shape[2] - 2, w.shape[3]
    wd = j1 - j0 + 1
    neg = -1e300  # P of the border cells (their X is 0, so they never contribute)
    c = np.zeros((wd, nb))  # the current row's cost; padding pairs keep 0
    prev_p, prev_x = np.empty((wd + 1, nb)), np.empty((wd + 1, nb))  # index jj <-> column j0 - 1 + jj
    cur_p, cur_x = np.empty((wd + 1, nb)), np.empty((wd + 1, nb))
    left_p, left_x = np.empty(nb), np.empty(nb)
    for jj in range(wd + 1):
        for b in range(nb):
            if i0 > 1:
                prev_p[jj, b] = hb_p[r, j0 - 1 + jj, b]
                prev_x[jj, b] = hb_x[r, j0 - 1 + jj, b]
            else:  # row 0: the origin (V = 0) at column 0, the border elsewhere
                prev_p[jj, b] = 0.0 if j0 + jj == 1 else neg
                prev_x[jj, b] = 1.0 if j0 + jj == 1 else 0.0
    for t in range(2):  # border the backward reads: row n+1 and column m+1 get weight 0
        if i1 == n:
            for j in range(j0, j1 + 2 if j1 == m else j1 + 1):
                for b in range(nb):
                    w[t, n + 1, j, b] = 0.0
        if j1 == m:
            for i in range(i0, i1 + 1):
                for b in range(nb):
                    w[t, i, m + 1, b] = 0.0
    for i in range(i0, i1 + 1):
        _cost_row(src, i - 1, ln, lm, scale, full, c, j0 - 1)
        for b in range(nb):
            left_p[b] = vb_p[q, i, b] if j0 > 1 else neg
            left_x[b] = vb_x[q, i, b] if j0 > 1 else 0.0
            cur_p[0, b] = left_p[b]
            cur_x[0, b] = left_x[b]
        for jj in range(1, wd + 1):
            up_p, up_x, diag_p, diag_x = prev_p[jj], prev_x[jj], prev_p[jj - 1], prev_x[jj - 1]
            out_p, out_x, cc = cur_p[jj], cur_x[jj], c[jj - 1]
            w_up, w_left = w[0, i, j0 - 1 + jj], w[1, i, j0 - 1 + jj]
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
        for b in range(nb):
            if ln[b] == i and j0 <= lm[b] <= j1:
                jj = lm[b] - j0 + 1
                value[b] = -gamma * (cur_p[jj, b] * _LN2 + math.log(cur_x[jj, b]))
        if q + 1 < vb_p.shape[0]:  # the last column, for the tile on the right
            for b in range(nb):
                vb_p[q + 1, i, b] = cur_p[wd, b]
                vb_x[q + 1, i, b] = cur_x[wd, b]
        prev_p, cur_p = cur_p, prev_p
        prev_x, cur_x = cur_x, prev_x
    if r + 1 < hb_p.shape[0]:  # the last row, for the tile below (column 0: the border, from the first tile)
        for jj in range(0 if j0 == 1 else 1, wd + 1):
            for b in range(nb):
                hb_p[r + 1, j0 - 1 + jj, b] = prev_p[jj, b]
                hb_x[r + 1, j0 - 1 + jj, b] = prev_x[jj, b]


@numba.njit(**_JIT)
def _backward_tile(w, ln, lm, grad_value, grad, eh, ev, i0, i1, j0, j1, r, q):
    """grad[b, i-1, j-1] = dvalue_b/dcost[b, i-1, j-1] * grad_value[b] (b < len(grad): the lane block's real pairs)
    on the tile rows i0..i1 x columns j0..j1, by the E recursion on two rolling rows of E; each finished row is
    transposed into grad while it is still in L1 (no [N, M, B] E array). E of row i1 + 1 comes from eh[r + 1], of
    column j1 + 1 from ev[q + 1] (0 past the last row / column); the tile leaves its first row in eh[r], its first
    column in ev[q]."""
    n, m, nb = w.shape[1] - 2, w.shape[2] - 2, w.shape[3]
    wd, nbo = j1 - j0 + 1, grad.shape[0]
    below = np.zeros((wd + 1, nb))  # E[i+1, j0 + jj]
    cur = np.zeros((wd + 1, nb))  # E[i, j0 + jj]
    if i1 < n:
        for jj in range(wd + 1):
            for b in range(nb):
                below[jj, b] = eh[r + 1, j0 + jj, b]
    for i in range(i1, i0 - 1, -1):
        for b in range(nb):
            cur[wd, b] = ev[q + 1, i, b] if j1 < m else 0.0
        for jj in range(wd - 1, -1, -1):
            j = j0 + jj
            e_below, e_below_right, e_right, out = below[jj], below[jj + 1], cur[jj + 1], cur[jj]
            w_up, w_left, wd_up, wd_left = w[0, i + 1, j], w[1, i, j + 1], w[0, i + 1, j + 1], w[1, i + 1, j + 1]
            for b in range(nb):
                w_diag = 1.0 - wd_up[b] - wd_left[b]
                v = w_up[b] * e_below[b] + w_left[b] * e_right[b] + w_diag * e_below_right[b]
                out[b] = v + (grad_value[b] if (ln[b] == i and lm[b] == j) else 0.0)
        for b in range(nbo):
            for jj in range(wd):
                grad[b, i - 1, j0 - 1 + jj] = cur[jj, b]
        if q > 0:
            for b in range(nb):
                ev[q, i, b] = cur[0, b]
        below, cur = cur, below
    if r > 0:  # the first row, for the tile above (column m + 1: 0, from the last tile)
        for jj in range(wd + 1 if j1 == m else wd):
            for b in range(nb):
                eh[r, j0 + jj, b] = below[jj, b]


@numba.njit(parallel=True, **_JIT)
def _forward(src, ln, lm, scale, full, w, gamma, value, hb_p, hb_x, vb_p, vb_x, rows, cols):
    """The forward over tiles: lane block c (pairs c*lanes.., arrays [c]) and tile (r, q) of rows rows[r]+1..rows[r+1]
    and columns cols[q]+1..cols[q+1]. Tiles on one anti-diagonal r + q = d of blocks, over all lane blocks, run in
    parallel (numba's threads)."""
    nc, lanes, nr, nq = w.shape[0], w.shape[4], len(rows) - 1, len(cols) - 1
    for d in range(nr + nq - 1):
        r_lo = max(0, d - nq + 1)
        tasks = (min(d, nr - 1) - r_lo + 1) * nc
        for t in numba.prange(tasks):
            c, r = t % nc, r_lo + t // nc
            _forward_tile(src[c * lanes:(c + 1) * lanes], ln[c], lm[c], scale, full, w[c], gamma, value[c], hb_p[c],
                          hb_x[c], vb_p[c], vb_x[c], rows[r] + 1, rows[r + 1], cols[d - r] + 1, cols[d - r + 1], r,
                          d - r)


@numba.njit(parallel=True, **_JIT)
def _backward(w, ln, lm, grad_value, grad, eh, ev, rows, cols):
    """The backward over the forward's tiles, anti-diagonals of blocks in reverse order, each in parallel."""
    nc, lanes, nr, nq = w.shape[0], w.shape[4], len(rows) - 1, len(cols) - 1
    for dd in range(nr + nq - 1):
        d = nr + nq - 2 - dd
        r_lo = max(0, d - nq + 1)
        tasks = (min(d, nr - 1) - r_lo + 1) * nc
        for t in numba.prange(tasks):
            c, r = t % nc, r_lo + t // nc
            _backward_tile(w[c], ln[c], lm[c], grad_value[c], grad[c * lanes:(c + 1) * lanes], eh[c], ev[c],
                           rows[r] + 1, rows[r + 1], cols[d - r] + 1, cols[d - r + 1], r, d - r)


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
def _full_lengths(b: int, n: int, m: int, nc: int, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(ln, lm) int64 [nc, lanes] (the batch in lane blocks) of a batch without lengths: N and M, 0 for the padding
    pairs. Shared between calls (the kernels only read them)."""
    ln, lm = np.zeros(nc * lanes, dtype=np.int64), np.zeros(nc * lanes, dtype=np.int64)
    ln[:b], lm[:b] = n, m
    return ln.reshape(nc, lanes), lm.reshape(nc, lanes)


@numba.njit(**_JIT)
def _forward_one(src, ln, lm, scale, full, w, gamma, value):
    """The whole DP as one tile, without the parallel driver (its thread-pool launch costs ~40 us a call)."""
    e = np.zeros((1, 1, 1))  # no edges to hand over
    _forward_tile(src, ln[0], lm[0], scale, full, w[0], gamma, value[0], e, e, e, e, 1, w.shape[2] - 2, 1,
                  w.shape[3] - 2, 0, 0)


@numba.njit(**_JIT)
def _backward_one(w, ln, lm, grad_value, grad):
    e = np.zeros((1, 1, 1))
    _backward_tile(w[0], ln[0], lm[0], grad_value[0], grad, e, e, 1, w.shape[2] - 2, 1, w.shape[3] - 2, 0, 0)


_TILE_MIN_CELLS = 64 * 64  # below this a pair's DP is not split into tiles
_TILE_MIN_SIDE = 32  # rows / columns per tile at least


@functools.lru_cache(maxsize=256)
def _plan(b: int, n: int, m: int, threads: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(lane blocks, lanes per block, row boundaries, column boundaries) of the tiles: the pairs go in up to
    `threads` blocks of equal width, whole groups of _LANES (the widest block sets the time of a parallel step, so
    equal widths cost no time); when that leaves threads idle (few pairs) and the DP is big enough, each pair's DP is
    also cut into a wavefront of tiles, p blocks along its shorter side and 4p along the longer one (p threads busy
    on all but the first and last p - 1 of the 5p - 1 tile anti-diagonals)."""
    groups = -(-b // _LANES)
    lanes = _LANES * -(-groups // max(1, min(threads, groups)))
    nc = -(-groups * _LANES // lanes)
    nr = nq = 1
    p = -(-threads // nc)
    if p > 1 and n * m >= _TILE_MIN_CELLS:
        short, long = (n, m) if n <= m else (m, n)
        ps = min(p, short // _TILE_MIN_SIDE)
        pl = min(4 * ps, long // _TILE_MIN_SIDE)
        if ps > 1:
            nr, nq = (ps, pl) if n <= m else (pl, ps)
    rows = np.array([n * r // nr for r in range(nr + 1)], dtype=np.int64)
    cols = np.array([m * q // nq for q in range(nq + 1)], dtype=np.int64)
    return nc, lanes, rows, cols


def thread_budget() -> int:
    """Threads for one call: numba's count, capped by torch's intra-op count, the process's CPU budget (a Ray
    worker of one CPU gets OMP_NUM_THREADS=1: two such workers on two cores must not each run two threads).

    With a budget of one, numba's threading layer is never started: its OpenMP layer shares torch's OpenMP runtime
    and setting up its pool raised torch's own thread count to the core count (the embedded default's two workers
    then ran 3.5x slower per step). When it is started, torch's count is put back."""
    budget = torch.get_num_threads()
    if budget <= 1:
        return 1
    threads = numba.get_num_threads()
    if torch.get_num_threads() != budget:
        torch.set_num_threads(budget)
    return max(1, min(threads, budget))


class _SoftDTWNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, gamma, lengths_n, lengths_m):
        b, n, m = cost.shape
        nc, lanes, rows, cols = plan = _plan(b, n, m, thread_budget())
        full = lengths_n is None  # check_inputs gives both or neither
        if full:
            ln, lm = _full_lengths(b, n, m, nc, lanes)
        else:  # padded pairs: length 0, never read
            ln, lm = np.zeros(nc * lanes, dtype=np.int64), np.zeros(nc * lanes, dtype=np.int64)
            ln[:b] = lengths_n.cpu().numpy()
            lm[:b] = lengths_m.cpu().numpy()
            ln, lm = ln.reshape(nc, lanes), lm.reshape(nc, lanes)
        src = cost.detach().to(torch.float64).contiguous().numpy()
        w = _POOL.get((nc, 2, n + 2, m + 2, lanes))
        value = np.empty((nc, lanes))
        nr, nq = len(rows) - 1, len(cols) - 1
        if nc == nr == nq == 1:
            _forward_one(src, ln, lm, -_LOG2E / gamma, full, w, gamma, value)
        else:
            hb = [np.empty((nc, nr, m + 1, lanes)) for _ in range(2)]
            vb = [np.empty((nc, nq, n + 1, lanes)) for _ in range(2)]
            _forward(src, ln, lm, -_LOG2E / gamma, full, w, gamma, value, *hb, *vb, rows, cols)
        ctx.lease, ctx.ln, ctx.lm, ctx.dtype, ctx.plan = _Lease(w), ln, lm, cost.dtype, plan
        return torch.from_numpy(value.reshape(-1)[:b]).to(cost.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        w = ctx.lease.array
        nc, lanes, rows, cols = ctx.plan
        n, m = w.shape[2] - 2, w.shape[3] - 2
        b = grad_out.shape[0]
        seed = np.zeros(nc * lanes)
        seed[:b] = grad_out.detach().to(torch.float64).numpy()
        grad = torch.empty((b, n, m), dtype=torch.float64)  # torch aligns to 64 bytes
        nr, nq = len(rows) - 1, len(cols) - 1
        if nc == nr == nq == 1:
            _backward_one(w, ctx.ln, ctx.lm, seed.reshape(nc, lanes), grad.numpy())
        else:
            eh = np.empty((nc, nr, m + 2, lanes))
            ev = np.empty((nc, nq, n + 2, lanes))
            _backward(w, ctx.ln, ctx.lm, seed.reshape(nc, lanes), grad.numpy(), eh, ev, rows, cols)
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
