"""Soft-DTW Triton kernels: anti-diagonal wavefront forward and backward, many pairs per program; register kernels
for small DPs.

    soft_dtw_triton(cost [B,N,M], gamma, lengths_n [B] | None, lengths_m [B] | None) -> [B]  (cost.dtype)

Forward (one program = BLOCK_B pairs; the batch is the first axis of every tile so the interpreter, which pays per
operation, and the GPU, which pays per barrier, both amortise over pairs): for each anti-diagonal k = i + j the
cells are processed in tiles of BLOCK_I rows (no length cap), each cell
    R[i,j] = cost[i-1,j-1] + mn - gamma * log(sum_t e_t),   e_t = exp((mn - R_t) / gamma),  mn = min_t R_t
over its three predecessors t (up (i-1,j), left (i,j-1), diag (i-1,j-1)), with +inf borders. The last two
diagonals live in a rolling [B, 3, N+2] buffer; a CTA barrier separates diagonals. Two of the soft-min weights
w_t = e_t / sum e are saved ([2, B, N, M], float32; w_diag = 1 - w_up - w_left, an absolute error of ~1 ulp of 1
in a weight, like the rounding of each stored weight) so the backward is exponential-free:
    E[i,j] = w_up[i+1,j] E[i+1,j] + w_left[i,j+1] E[i,j+1] + w_diag[i+1,j+1] E[i+1,j+1],  E[n_b,m_b] = dL/dvalue_b
(Cuturi & Blondel 2017, alg. 2), a reverse wavefront that writes E straight into the gradient buffer. Cells past
(n_b, m_b) are masked: R = +inf, w = 0, E = 0 (so padding gets exactly zero gradient). float16/bfloat16 costs
accumulate in float32. Memory: 2 float32 per cell saved for the backward (2x a saved R; buys no exp/log there),
none when no gradient is needed (SAVE=False: the forward writes no weights).

Small DPs (`is_small`: <= 32 x 32 cells with a side <= 32, e.g. the model's 16 latents x 8 verb phrases) run on
register kernels instead, one launch per direction: a lane per pair (one warp of 32 pairs per program on CUDA), rows
along the longer side in a loop, columns unrolled, the previous row (forward: R; backward: E and the weights of the
row below) a [columns, pairs] register tile; the same weights are saved ([2, B, rows, cols]).

Configs: on CUDA the wavefront kernels are autotuned over (BLOCK_B, BLOCK_I, num_warps); under TRITON_INTERPRET=1 a
fixed config is used (autotuning with several configs needs a GPU). The register kernels have one fixed config.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["soft_dtw_triton"]

_INTERPRET_CONFIG = dict(BLOCK_B=16, BLOCK_I=16)  # small tiles: the tests' odd lengths (63) span several tiles
_CUDA_CONFIGS = [
    triton.Config(dict(BLOCK_B=bb, BLOCK_I=bi), num_warps=nw)
    for bb, bi, nw in [(1, 64, 2), (1, 256, 4), (1, 512, 8), (2, 64, 2), (2, 128, 4), (4, 32, 2), (4, 64, 4),
                       (4, 128, 4), (8, 32, 4), (8, 64, 4), (16, 32, 4)]
]


@triton.jit
def _sdtw_fwd_kernel(cost_ptr, len_n_ptr, len_m_ptr, out_ptr, w_up_ptr, w_left_ptr, rbuf_ptr, B, N, M,
                     stride_b, stride_n, stride_m, gamma, inv_gamma,
                     SAVE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0)
    b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    n_b = tl.load(len_n_ptr + b, mask=b_ok, other=1)[:, None]
    m_b = tl.load(len_m_ptr + b, mask=b_ok, other=1)[:, None]
    b64 = b.to(tl.int64)[:, None]
    width = N + 2
    rows = rbuf_ptr + b64 * (3 * width)  # rolling rows: diagonal k lives in row k % 3
    lane = tl.arange(0, BLOCK_I)[None, :]
    inf = float("inf")
    for i0 in range(0, width, BLOCK_I):  # diagonals 0 and 1: R[0,0] = 0, the rest of the border +inf
        i = i0 + lane
        ok = b_ok[:, None] & (i < width)
        tl.store(rows + i, tl.where(i == 0, 0.0, inf), mask=ok)
        tl.store(rows + width + i, tl.full([BLOCK_B, BLOCK_I], inf, tl.float32), mask=ok)
    tl.debug_barrier()
    for k in range(2, N + M + 1):
        cur = rows + (k % 3) * width
        prev = rows + ((k - 1) % 3) * width
        prev2 = rows + ((k - 2) % 3) * width
        border = tl.full([BLOCK_B, 1], inf, tl.float32)
        tl.store(cur, border, mask=b_ok[:, None])  # R[0, k]
        tl.store(cur + tl.minimum(k, N + 1), border, mask=b_ok[:, None])  # R[k, 0] (column N+1 is never read)
        lo = tl.maximum(k - M, 1)
        hi = tl.minimum(k - 1, N)
        for i0 in range(lo, hi + 1, BLOCK_I):
            i = i0 + lane
            j = k - i
            band = b_ok[:, None] & (i <= hi)
            valid = band & (i <= n_b) & (j <= m_b)
            up = tl.where(valid, tl.load(prev + i - 1, mask=band, other=inf), 0.0)  # R[i-1, j]
            left = tl.where(valid, tl.load(prev + i, mask=band, other=inf), 0.0)  # R[i, j-1]
            diag = tl.where(valid, tl.load(prev2 + i - 1, mask=band, other=inf), 0.0)  # R[i-1, j-1]
            c = tl.load(cost_ptr + b64 * stride_b + (i - 1) * stride_n + (j - 1) * stride_m, mask=valid, other=0.0)
            mn = tl.minimum(tl.minimum(up, left), diag)  # finite: a valid cell has a finite predecessor
            e_up = tl.exp((mn - up) * inv_gamma)
            e_left = tl.exp((mn - left) * inv_gamma)
            e_diag = tl.exp((mn - diag) * inv_gamma)
            total = e_up + e_left + e_diag  # >= 1
            r = c.to(tl.float32) + mn - gamma * tl.log(total)
            tl.store(cur + i, tl.where(valid, r, inf), mask=band)
            if SAVE:  # w_diag is not stored: the backward takes 1 - w_up - w_left
                cell = b64 * N * M + (i - 1) * M + (j - 1)
                inv_total = 1.0 / total
                tl.store(w_up_ptr + cell, tl.where(valid, e_up * inv_total, 0.0), mask=band)
                tl.store(w_left_ptr + cell, tl.where(valid, e_left * inv_total, 0.0), mask=band)
            tl.store(out_ptr + b64 + 0 * i, r, mask=valid & (i == n_b) & (j == m_b))
        tl.debug_barrier()  # diagonal k is complete before k + 1 reads it


@triton.jit
def _sdtw_bwd_kernel(w_up_ptr, w_left_ptr, len_n_ptr, len_m_ptr, grad_out_ptr, grad_ptr, B, N, M,
                     BLOCK_B: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0)
    b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    n_b = tl.load(len_n_ptr + b, mask=b_ok, other=1)[:, None]
    m_b = tl.load(len_m_ptr + b, mask=b_ok, other=1)[:, None]
    seed = tl.load(grad_out_ptr + b, mask=b_ok, other=0.0).to(tl.float32)[:, None]
    b64 = b.to(tl.int64)[:, None]
    lane = tl.arange(0, BLOCK_I)[None, :]
    for kk in range(0, N + M - 1):
        k = N + M - kk
        lo = tl.maximum(k - M, 1)
        hi = tl.minimum(k - 1, N)
        for i0 in range(lo, hi + 1, BLOCK_I):
            i = i0 + lane
            j = k - i
            band = b_ok[:, None] & (i <= hi)
            valid = band & (i <= n_b) & (j <= m_b)
            down = valid & (i < n_b)  # successor (i+1, j) exists; its "up" predecessor is (i, j)
            right = valid & (j < m_b)  # successor (i, j+1); its "left" predecessor is (i, j)
            both = down & right  # successor (i+1, j+1); its "diag" predecessor is (i, j)
            cell = b64 * N * M + (i - 1) * M + (j - 1)
            e = tl.load(w_up_ptr + cell + M, mask=down, other=0.0) * tl.load(grad_ptr + cell + M, mask=down, other=0.0)
            e += tl.load(w_left_ptr + cell + 1, mask=right, other=0.0) * \
                tl.load(grad_ptr + cell + 1, mask=right, other=0.0)
            w_diag = 1.0 - tl.load(w_up_ptr + cell + M + 1, mask=both, other=1.0) - \
                tl.load(w_left_ptr + cell + M + 1, mask=both, other=0.0)  # 0 where (i+1, j+1) is not a cell
            e += w_diag * tl.load(grad_ptr + cell + M + 1, mask=both, other=0.0)
            e = tl.where((i == n_b) & (j == m_b), seed, e)
            tl.store(grad_ptr + cell, tl.where(valid, e, 0.0), mask=band)
        tl.debug_barrier()  # diagonal k is complete before k - 1 reads it


@triton.jit
def _sdtw_small_fwd_kernel(cost_ptr, len_r_ptr, len_c_ptr, out_ptr, w_up_ptr, w_left_ptr, B, R, C,
                           stride_b, stride_r, stride_c, gamma, inv_gamma,
                           SAVE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
                           FAST_MATH: tl.constexpr):
    """Small DPs (C <= 32 columns): one lane per pair, the whole DP in registers. Row i of R is a [BLOCK_C, BLOCK_B]
    tile (pairs last: each thread holds its pairs' whole row); the row loop runs over i, the columns are unrolled, so
    the column masks are compile-time and a column read / write is a register select, not an indexed access. No
    barrier, no scratch memory. Weights are saved a row at a time ([2, B, R, C], 0 past the lengths)."""
    pid = tl.program_id(0)
    b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    n_b = tl.load(len_r_ptr + b, mask=b_ok, other=0)
    m_b = tl.load(len_c_ptr + b, mask=b_ok, other=0)
    b64 = b.to(tl.int64)
    col = tl.arange(0, BLOCK_C)[:, None]
    inf = float("inf")
    row = tl.full([BLOCK_C, BLOCK_B], inf, tl.float32)  # R[i-1, 1..C]; row 0 is +inf but for R[0, 0]
    value = tl.zeros([BLOCK_B], dtype=tl.float32)
    w_at = b64[None, :] * R * C + col
    scale = inv_gamma * 1.4426950408889634
    gamma_ln2 = gamma * 0.6931471805599453
    for i in range(1, R + 1):
        diag = tl.where(b_ok & (i == 1), 0.0, inf)  # R[i-1, 0]
        left = tl.full([BLOCK_B], inf, tl.float32)  # R[i, 0]
        wu_row = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)
        wl_row = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)
        for j in tl.static_range(BLOCK_C):  # column j + 1 of the DP
            up = tl.sum(tl.where(col == j, row, 0.0), axis=0)
            valid = b_ok & (i <= n_b) & (j < m_b)
            c = tl.load(cost_ptr + b64 * stride_b + (i - 1) * stride_r + j * stride_c, mask=valid, other=0.0)
            u = tl.where(valid, up, 0.0)
            lf = tl.where(valid, left, 0.0)
            d = tl.where(valid, diag, 0.0)
            mn = tl.minimum(tl.minimum(u, lf), d)
            if FAST_MATH:  # base 2: one ex2 / lg2 instruction each (tl.log is a ~25-instruction libdevice call)
                e_up = tl.exp2((mn - u) * scale)
                e_left = tl.exp2((mn - lf) * scale)
                e_diag = tl.exp2((mn - d) * scale)
                total = e_up + e_left + e_diag
                lg = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [total], dtype=tl.float32,
                                               is_pure=True, pack=1)
                r = tl.where(valid, c.to(tl.float32) + mn - gamma_ln2 * lg, inf)
            else:  # the interpreter (no PTX there), rounded like the wavefront kernels
                e_up = tl.exp((mn - u) * inv_gamma)
                e_left = tl.exp((mn - lf) * inv_gamma)
                e_diag = tl.exp((mn - d) * inv_gamma)
                total = e_up + e_left + e_diag
                r = tl.where(valid, c.to(tl.float32) + mn - gamma * tl.log(total), inf)
            row = tl.where(col == j, r[None, :], row)
            if SAVE:
                inv_total = 1.0 / total
                wu_row = tl.where(col == j, tl.where(valid, e_up * inv_total, 0.0)[None, :], wu_row)
                wl_row = tl.where(col == j, tl.where(valid, e_left * inv_total, 0.0)[None, :], wl_row)
            value = tl.where(valid & (i == n_b) & (j + 1 == m_b), r, value)
            diag = up
            left = r
        if SAVE:
            keep = (col < C) & b_ok[None, :]
            tl.store(w_up_ptr + w_at + (i - 1) * C, wu_row, mask=keep)
            tl.store(w_left_ptr + w_at + (i - 1) * C, wl_row, mask=keep)
    tl.store(out_ptr + b, value, mask=b_ok)


@triton.jit
def _sdtw_small_bwd_kernel(w_up_ptr, w_left_ptr, len_r_ptr, len_c_ptr, grad_out_ptr, grad_ptr, B, R, C,
                           stride_b, stride_r, stride_c, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """The E recursion of the small forward, rows R..1, columns unrolled right to left, E of the row below and its
    weights held as [BLOCK_C, BLOCK_B] register tiles; the gradient is written a row at a time. The weights are
    loaded a cell at a time ([BLOCK_B] vectors): a loaded tile would get the load's layout (columns across threads),
    and every column read would become a cross-thread reduction."""
    pid = tl.program_id(0)
    b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = b < B
    n_b = tl.load(len_r_ptr + b, mask=b_ok, other=0)
    m_b = tl.load(len_c_ptr + b, mask=b_ok, other=0)
    seed = tl.load(grad_out_ptr + b, mask=b_ok, other=0.0).to(tl.float32)
    b64 = b.to(tl.int64)
    col = tl.arange(0, BLOCK_C)[:, None]
    below = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)  # E[i+1, 1..C]
    wu_below = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)  # w_up[i+1, 1..C]
    wl_below = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)  # w_left[i+1, 1..C]
    for ii in range(0, R):
        i = R - ii
        at = b64 * R * C + (i - 1) * C
        e_right = tl.zeros([BLOCK_B], dtype=tl.float32)  # E[i, j+1]
        wl_right = tl.zeros([BLOCK_B], dtype=tl.float32)  # w_left[i, j+1]
        e_br = tl.zeros([BLOCK_B], dtype=tl.float32)  # E[i+1, j+1]
        wd_br = tl.zeros([BLOCK_B], dtype=tl.float32)  # w_diag[i+1, j+1]
        erow = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)
        wu_row = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)
        wl_row = tl.zeros([BLOCK_C, BLOCK_B], dtype=tl.float32)
        for jj in tl.static_range(BLOCK_C):
            j = BLOCK_C - 1 - jj  # column j + 1 of the DP
            here = b_ok & (b * 0 + j < C)  # a tensor compare (the interpreter rejects a scalar mask)
            wu_here = tl.load(w_up_ptr + at + j, mask=here, other=0.0)
            wl_here = tl.load(w_left_ptr + at + j, mask=here, other=0.0)
            e_b = tl.sum(tl.where(col == j, below, 0.0), axis=0)
            wu_b = tl.sum(tl.where(col == j, wu_below, 0.0), axis=0)
            wl_b = tl.sum(tl.where(col == j, wl_below, 0.0), axis=0)
            e = wu_b * e_b + wl_right * e_right + wd_br * e_br
            valid = b_ok & (i <= n_b) & (j < m_b)
            e = tl.where(valid, tl.where((i == n_b) & (j + 1 == m_b), seed, e), 0.0)
            erow = tl.where(col == j, e[None, :], erow)
            wu_row = tl.where(col == j, wu_here[None, :], wu_row)
            wl_row = tl.where(col == j, wl_here[None, :], wl_row)
            e_right = e
            wl_right = wl_here
            e_br = e_b
            wd_br = 1.0 - wu_b - wl_b  # where (i+1, j+1) is not a cell its E is 0
        keep = (col < C) & b_ok[None, :]
        tl.store(grad_ptr + b64[None, :] * stride_b + (i - 1) * stride_r + col * stride_c, erow, mask=keep)
        below = erow
        wu_below = wu_row
        wl_below = wl_row


_TUNED: dict = {}


def prune_configs(configs, named_args, **kwargs):
    """Autotuning's early prune: above 1024 rows a timing run of a narrow tile takes seconds (4096 rows: ~8k
    diagonals of 64+ tiles each), so only tiles of >= 128 rows over <= 2 pairs are tried there (the winners at 1024
    on an H200 were (1, 512) forward and (2, 128) backward)."""
    if named_args["N"] <= 1024:
        return configs
    kept = [c for c in configs if c.kwargs["BLOCK_I"] >= 128 and c.kwargs["BLOCK_B"] <= 2]
    return kept or configs


def _launcher(kernel, name: str, device: torch.device):
    """(kernel, fixed meta-parameters): autotuned on CUDA, fixed config in the interpreter."""
    if device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        if name not in _TUNED:
            _TUNED[name] = triton.autotune(configs=_CUDA_CONFIGS, key=["B", "N", "M"],
                                           prune_configs_by={"early_config_prune": prune_configs})(kernel)
        return _TUNED[name], {}
    return kernel, dict(_INTERPRET_CONFIG)


def tuned_configs() -> dict[str, str]:
    """kernel name -> the config autotuning picked last (CUDA only; empty before the first CUDA call)."""
    return {name: str(getattr(kernel, "best_config", None)) for name, kernel in _TUNED.items()}


def _grid(batch: int, meta: dict):
    return lambda m: (triton.cdiv(batch, (meta or m)["BLOCK_B"]),)


_SMALL_CELLS, _SMALL_SIDE = 32 * 32, 32  # DPs up to this many cells, with a side of at most this: the small kernels


def is_small(n: int, m: int) -> bool:
    """Whether (N, M) runs on the register kernels (one lane per pair) instead of the wavefront."""
    return n * m <= _SMALL_CELLS and min(n, m) <= _SMALL_SIDE


def _small_meta(device: torch.device, c: int) -> dict:
    """BLOCK_B pairs per program (a lane each: one warp of 32 on CUDA), BLOCK_C >= C columns."""
    block_c = triton.next_power_of_2(c)
    if device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return dict(BLOCK_B=32, BLOCK_C=block_c, num_warps=1)
    return dict(BLOCK_B=16, BLOCK_C=block_c)  # interpreter: no inline PTX


def _small_axes(t: torch.Tensor, transpose: bool) -> tuple[int, int, int]:
    """Strides (batch, row, column) of [B, N, M] `t` as the small kernels see it: rows along the longer side (the
    columns are unrolled, so the shorter side is cheaper there)."""
    return (t.stride(0), t.stride(2), t.stride(1)) if transpose else (t.stride(0), t.stride(1), t.stride(2))


def _forward(cost: torch.Tensor, gamma: float, lengths_n: torch.Tensor, lengths_m: torch.Tensor, save: bool = True):
    """Values [B] float32 and the soft-min weights w_up, w_left [2, B, N, M] float32 (None when not `save`); for
    small DPs (`is_small`) the weights are [2, B, rows, columns] of the small kernels' orientation."""
    b, n, m = cost.shape
    out = torch.empty(b, dtype=torch.float32, device=cost.device)
    if is_small(n, m):
        transpose = n < m
        rows, cols = (m, n) if transpose else (n, m)
        len_r, len_c = (lengths_m, lengths_n) if transpose else (lengths_n, lengths_m)
        weights = torch.empty((2, b, rows, cols) if save else (2, 1, 1, 1), dtype=torch.float32, device=cost.device)
        meta = _small_meta(cost.device, cols)
        _sdtw_small_fwd_kernel[_grid(b, meta)](cost, len_r, len_c, out, weights[0], weights[1], b, rows, cols,
                                               *_small_axes(cost, transpose), float(gamma), 1.0 / float(gamma),
                                               SAVE=save, FAST_MATH="num_warps" in meta, **meta)
        return out, weights if save else None
    weights = torch.empty((2, b, n, m) if save else (2, 1, 1, 1), dtype=torch.float32, device=cost.device)
    rbuf = torch.empty((b, 3, n + 2), dtype=torch.float32, device=cost.device)
    kernel, meta = _launcher(_sdtw_fwd_kernel, "fwd" if save else "fwd_nosave", cost.device)
    kernel[_grid(b, meta)](cost, lengths_n, lengths_m, out, weights[0], weights[1], rbuf, b, n, m,
                           cost.stride(0), cost.stride(1), cost.stride(2), float(gamma), 1.0 / float(gamma),
                           SAVE=save, **meta)
    return out, weights if save else None


def _backward(weights: torch.Tensor, lengths_n: torch.Tensor, lengths_m: torch.Tensor, grad_out: torch.Tensor,
              shape: tuple[int, int, int], small: bool):
    """Gradient [B, N, M] float32 of sum_b grad_out[b] * value_b (exactly zero past each pair's lengths), from the
    weights of the register kernels (`small`, as decided by the forward) or of the wavefront."""
    b, n, m = shape
    grad = torch.empty((b, n, m), dtype=torch.float32, device=weights.device)
    grad_out = grad_out.float().contiguous()
    if small:
        transpose = n < m
        rows, cols = (m, n) if transpose else (n, m)
        len_r, len_c = (lengths_m, lengths_n) if transpose else (lengths_n, lengths_m)
        meta = _small_meta(weights.device, cols)
        _sdtw_small_bwd_kernel[_grid(b, meta)](weights[0], weights[1], len_r, len_c, grad_out, grad, b, rows, cols,
                                               *_small_axes(grad, transpose), **meta)
        return grad
    kernel, meta = _launcher(_sdtw_bwd_kernel, "bwd", weights.device)
    kernel[_grid(b, meta)](weights[0], weights[1], lengths_n, lengths_m, grad_out, grad, b, n, m, **meta)
    return grad


class _SoftDTWTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, gamma, lengths_n, lengths_m):
        value, weights = _forward(cost, gamma, lengths_n, lengths_m, save=ctx.needs_input_grad[0])
        ctx.save_for_backward(weights, lengths_n, lengths_m)
        ctx.dtype, ctx.shape, ctx.small = cost.dtype, tuple(cost.shape), is_small(*cost.shape[1:])
        return value.to(cost.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        weights, lengths_n, lengths_m = ctx.saved_tensors
        grad = _backward(weights, lengths_n, lengths_m, grad_out, ctx.shape, ctx.small)
        return grad.to(ctx.dtype), None, None, None


@functools.lru_cache(maxsize=64)
def _full_length(b: int, size: int, device: torch.device) -> torch.Tensor:
    """int32 [B] filled with `size`, shared between calls (the kernels only read it): two allocations and fills
    fewer per call, which counts at the model's shape (a few microseconds of GPU work)."""
    return torch.full((b,), size, dtype=torch.int32, device=device)


def soft_dtw_triton(cost: torch.Tensor, gamma: float, lengths_n: torch.Tensor | None = None,
                    lengths_m: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-DTW values [B] (cost.dtype) of cost [B,N,M]; lengths_n/lengths_m long [B] (None: full length).
    Inputs are assumed validated (kernels.soft_dtw does it)."""
    b, n, m = cost.shape
    if b == 0:
        return cost.sum(dim=(1, 2))
    lengths_n = _full_length(b, n, cost.device) if lengths_n is None else \
        lengths_n.to(device=cost.device, dtype=torch.int32).contiguous()
    lengths_m = _full_length(b, m, cost.device) if lengths_m is None else \
        lengths_m.to(device=cost.device, dtype=torch.int32).contiguous()
    return _SoftDTWTriton.apply(cost, float(gamma), lengths_n, lengths_m)
