"""Triton kernels of the banded perceiver cross-attention: flash-style forward and FA2-style backward that visit
only the key tiles inside the band (README.md has the maths and the visiting rule).

Read in order: the band helpers and the four kernels (forward, delta preprocess, dk/dv, dq), the forward and
backward host functions, the autograd Function, the public function.

On CUDA each kernel is autotuned over a few tile shapes; in Triton's interpreter (TRITON_INTERPRET=1, CPU tests)
fixed tiles are used because autotuning needs a GPU, and bf16 tiles are upcast to fp32 before `tl.dot` because the
interpreter's numpy matmul reads bf16 (stored as uint16) as integers. The rounding of probabilities to the input
dtype before the P@V and dS@K products is kept in both modes, so tests see the same numerics as the GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from instraction.kernels.banded_attention.reference import banded_cross_attention_reference, check_inputs

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Interpreter tiles: tl.dot needs every dimension >= 16; tests pass smaller/larger tiles explicitly.
DEFAULT_BLOCKS = (16, 16)


@triton.jit
def _frame_bounds(rows, K, FRAMES, WINDOW):
    """Band of each latent row (docs/ARCHITECTURE.md): [max(0, floor(iT/K)-w), min(T, ceil((i+1)T/K)+w)).
    Numerators >= 0."""
    f_lo = tl.maximum(rows * FRAMES // K - WINDOW, 0)
    f_hi = tl.minimum(((rows + 1) * FRAMES + K - 1) // K + WINDOW, FRAMES)
    return f_lo, f_hi


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    if DOT_F32:  # interpreter + bf16 only (see module docstring)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _fwd_kernel(
    Q, Kp, V, O, LSE,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    H, BH, K, N, P, FRAMES, WINDOW, qk_scale,
    BLOCK_D: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program = BLOCK_M latents of one (b, h). Online softmax in base 2 over the tiles of the band union."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < K
    d_ok = offs_d < D
    # Padded rows borrow the last latent's band so their softmax stays finite; they are never stored.
    f_lo, f_hi = _frame_bounds(tl.minimum(offs_m, K - 1), K, FRAMES, WINDOW)
    n_lo = f_lo * P
    n_hi = f_hi * P
    # lo_i and hi_i are non-decreasing in i: the union of the block's bands is [lo(first row), hi(last row)).
    first = pid_m * BLOCK_M
    last = tl.minimum(first + BLOCK_M, K) - 1
    union_lo = tl.maximum(first * FRAMES // K - WINDOW, 0) * P
    union_hi = tl.minimum(((last + 1) * FRAMES + K - 1) // K + WINDOW, FRAMES) * P

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = Kp + b * skb + h * skh
    v_base = V + b * svb + h * svh
    # Finite start for the running max: a row with no visible key in a tile then gets p = exp2(-inf) = 0 and
    # alpha = 1 instead of exp2(-inf - -inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(union_lo // BLOCK_N * BLOCK_N, union_hi, BLOCK_N):  # tile-aligned start
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = (offs_n >= union_lo) & (offs_n < union_hi)  # never read keys outside the band union
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = _dot(q, tl.trans(k), DOT_F32, PRECISION) * qk_scale
        visible = (offs_n[None, :] >= n_lo[:, None]) & (offs_n[None, :] < n_hi[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_F32, PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = O + bh.to(tl.int64) * K * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * K + offs_m, m_i + tl.log2(l_i), mask=row_ok)  # base-2 logsumexp


@triton.jit
def _delta_kernel(O, DO, DELTA, K, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO_id * O_id (= sum_j P_ij dP_ij), fp32. O and dO are contiguous [B*H, K, D]."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < K)[:, None] & (offs_d < D)[None, :]
    ptrs = bh * K * D + offs_m[:, None] * D + offs_d[None, :]
    o = tl.load(O + ptrs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * K + offs_m, tl.sum(o * do, 1), mask=offs_m < K)


@triton.jit
def _dkdv_kernel(
    Q, Kp, V, DO, LSE, DELTA, DK, DV, DQ,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    H, BH, K, N, P, FRAMES, WINDOW, qk_scale, scale,
    BLOCK_D: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, FUSE_DQ: tl.constexpr,
):
    """One program = BLOCK_N keys of one (b, h); visits only the latent tiles whose band reaches these keys.

    Works in the transposed layout (keys x latents): dV = P^T dO, dK = scale * dS^T Q, dS = P o (dP - delta).
    FUSE_DQ: also adds this key tile's share of dQ = scale * dS K into the fp32 buffer DQ [B*H, K, D] with atomics
    (FlashAttention-2's choice), so no second pass re-reads K and V; the summation order, and so the last bits of
    dQ, then vary from run to run.
    """
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < D
    frame_n = tl.minimum(offs_n, N - 1) // P
    # Latents [i0, i1) seeing a frame in [fa, fb] (closed form derived in reference.latent_range).
    fa = pid_n * BLOCK_N // P
    fb = (tl.minimum(pid_n * BLOCK_N + BLOCK_N, N) - 1) // P
    i0 = tl.maximum(fa - WINDOW, 0) * K // FRAMES
    i1 = tl.minimum(((fb + WINDOW + 1) * K + FRAMES - 1) // FRAMES, K)

    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(Kp + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    q_base = Q + b * sqb + h * sqh
    do_base = DO + bh.to(tl.int64) * K * D
    for start_m in range(i0 // BLOCK_M * BLOCK_M, i1, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < K
        f_lo, f_hi = _frame_bounds(offs_m, K, FRAMES, WINDOW)
        visible = (frame_n[:, None] >= f_lo[None, :]) & (frame_n[:, None] < f_hi[None, :])
        visible = visible & row_ok[None, :] & n_ok[:, None]
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * K + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * K + offs_m, mask=row_ok, other=0.0)
        s_t = _dot(k, tl.trans(q), DOT_F32, PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
        p_t = tl.where(visible, tl.exp2(s_t - lse[None, :]), 0.0)  # recomputed softmax probabilities
        dv += _dot(p_t.to(do.dtype), do, DOT_F32, PRECISION)
        dp_t = _dot(v, tl.trans(do), DOT_F32, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, DOT_F32, PRECISION)
        if FUSE_DQ:
            dq = _dot(tl.trans(ds_t.to(k.dtype)), k, DOT_F32, PRECISION) * scale  # [BLOCK_M, BLOCK_D]
            tl.atomic_add(DQ + (bh.to(tl.int64) * K + offs_m)[:, None] * D + offs_d[None, :], dq, mask=q_mask,
                          sem="relaxed")
    out = bh.to(tl.int64) * N * D + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_kernel(
    Q, Kp, V, DO, LSE, DELTA, DQ,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    H, BH, K, N, P, FRAMES, WINDOW, qk_scale, scale,
    BLOCK_D: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program = BLOCK_M latents of one (b, h), same tiles as the forward: dQ = scale * dS K."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < K
    d_ok = offs_d < D
    f_lo, f_hi = _frame_bounds(tl.minimum(offs_m, K - 1), K, FRAMES, WINDOW)
    n_lo = f_lo * P
    n_hi = f_hi * P
    first = pid_m * BLOCK_M
    last = tl.minimum(first + BLOCK_M, K) - 1
    union_lo = tl.maximum(first * FRAMES // K - WINDOW, 0) * P
    union_hi = tl.minimum(((last + 1) * FRAMES + K - 1) // K + WINDOW, FRAMES) * P

    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=q_mask, other=0.0)
    rows = bh.to(tl.int64) * K + offs_m
    do = tl.load(DO + rows[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    k_base = Kp + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(union_lo // BLOCK_N * BLOCK_N, union_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = (offs_n >= union_lo) & (offs_n < union_hi)
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = _dot(q, tl.trans(k), DOT_F32, PRECISION) * qk_scale
        visible = (offs_n[None, :] >= n_lo[:, None]) & (offs_n[None, :] < n_hi[:, None]) & row_ok[:, None]
        p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), DOT_F32, PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_F32, PRECISION)
    tl.store(DQ + rows[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------------------------------------------- launching

def _configs(block_ms, block_ns):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m in block_ms for n in block_ns for w in (4, 8) for s in (3,)]


# BH = B*H is an argument for the key only: the best tiles depend on how many (b, h) programs fill the GPU (without
# it the GPU benchmark reused the tiles tuned at its B=H=2 error check for B=32, H=12)
_TUNE_KEY = ["BH", "K", "N", "P", "FRAMES", "WINDOW", "BLOCK_D"]
_tuned: dict = {}


def _kernel(name: str, blocks: tuple[int, int] | None):
    """The kernel to launch: autotuned on CUDA when no tile is forced, the plain jit function otherwise."""
    raw = {"fwd": _fwd_kernel, "dkdv": _dkdv_kernel, "dkdv_dq": _dkdv_kernel, "dq": _dq_kernel}[name]
    if blocks is not None or INTERPRET:
        return raw, dict(zip(("BLOCK_M", "BLOCK_N"), blocks or DEFAULT_BLOCKS))
    if name not in _tuned:
        # Latent tiles stay small: a tile's band union grows with BLOCK_M, and K is small (tens of latents).
        space = _configs((16, 32), (64, 128)) if not name.startswith("dkdv") else _configs((16, 32, 64), (32, 64, 128))
        # the fused dq buffer is accumulated into: every timing run of the autotuner must start from zeros
        reset = {"reset_to_zero": ["DQ"]} if name == "dkdv_dq" else {}
        _tuned[name] = triton.autotune(configs=space, key=_TUNE_KEY, **reset)(raw)
    return _tuned[name], {}


def _dot_args(dtype: torch.dtype) -> dict:
    """fp32 follows torch's TF32 switch (off by default: exact fp32 products); halves use tensor cores."""
    if dtype == torch.float32:
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        precision = "tf32"  # ignored for fp16/bf16 operands
    return {"DOT_F32": INTERPRET and dtype == torch.bfloat16, "PRECISION": precision}


def _strides(q, k, v) -> list[int]:
    return [*q.stride()[:3], *k.stride()[:3], *v.stride()[:3]]


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _forward(q, k, v, frames, window, scale, blocks):
    """q [B,H,K,D], k/v [B,H,N,D] (last stride 1) -> (o [B,H,K,D] contiguous, lse [B,H,K] fp32 base 2)."""
    B, H, K, D = q.shape
    N = k.shape[2]
    o = torch.empty((B, H, K, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, K), device=q.device, dtype=torch.float32)
    kernel, tiles = _kernel("fwd", blocks)
    grid = lambda meta: (triton.cdiv(K, meta["BLOCK_M"]), B * H)  # noqa: E731
    kernel[grid](
        q, k, v, o, lse, *_strides(q, k, v),
        H, B * H, K, N, N // frames, frames, window, scale * LOG2E,
        BLOCK_D=max(16, triton.next_power_of_2(D)), D=D, **tiles, **_dot_args(q.dtype),
    )
    return o, lse


def _backward(do, q, k, v, o, lse, frames, window, scale, blocks, need_dq=True, need_dkdv=True, fuse_dq=False):
    """Gradients (dq [B,H,K,D], dk, dv [B,H,N,D]) by recomputing P from the saved base-2 logsumexp.

    A gradient that is not needed is returned as None and its kernel is skipped. fuse_dq: dq is accumulated by the
    dk/dv kernel (atomics into an fp32 buffer) instead of a dq kernel that reads K and V a second time."""
    B, H, K, D = q.shape
    N = k.shape[2]
    do = do.contiguous()
    block_d = max(16, triton.next_power_of_2(D))
    delta = torch.empty((B, H, K), device=q.device, dtype=torch.float32)
    _delta_kernel[(triton.cdiv(K, 16), B * H)](o, do, delta, K, D=D, BLOCK_D=block_d, BLOCK_M=16)
    fuse_dq = fuse_dq and need_dq and need_dkdv
    dq = torch.zeros((B, H, K, D), device=q.device, dtype=torch.float32) if fuse_dq else \
        torch.empty((B, H, K, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, H, N, D), device=q.device, dtype=k.dtype)
    dv = torch.empty((B, H, N, D), device=q.device, dtype=v.dtype)
    common = (*_strides(q, k, v), H, B * H, K, N, N // frames, frames, window, scale * LOG2E, scale)
    meta = dict(BLOCK_D=block_d, D=D, **_dot_args(q.dtype))
    if need_dkdv:
        kernel, tiles = _kernel("dkdv_dq" if fuse_dq else "dkdv", blocks)
        kernel[lambda m: (triton.cdiv(N, m["BLOCK_N"]), B * H)](q, k, v, do, lse, delta, dk, dv, dq, *common,
                                                                 FUSE_DQ=fuse_dq, **tiles, **meta)
    if fuse_dq:
        dq = dq.to(q.dtype)
    elif need_dq:
        kernel, tiles = _kernel("dq", blocks)
        kernel[lambda m: (triton.cdiv(K, m["BLOCK_M"]), B * H)](q, k, v, do, lse, delta, dq, *common, **tiles,
                                                                 **meta)
    return (dq if need_dq else None), (dk if need_dkdv else None), (dv if need_dkdv else None)


class BandedCrossAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, o and the logsumexp; backward recomputes the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, frames, window, scale, blocks, fuse_dq):
        q, k, v = (_unit_last_stride(t) for t in (q, k, v))
        o, lse = _forward(q, k, v, frames, window, scale, blocks)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (frames, window, scale, blocks)
        ctx.fuse_dq = fuse_dq
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        dq, dk, dv = _backward(do, q, k, v, o, lse, *ctx.args, need_dq=need_q, need_dkdv=need_k or need_v,
                               fuse_dq=ctx.fuse_dq)
        return dq, dk, dv, None, None, None, None, None


def banded_cross_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frames: int,
    window: int,
    scale: float | None = None,
    blocks: tuple[int, int] | None = None,
    fuse_dq: bool = True,
) -> torch.Tensor:
    """Triton banded cross-attention, differentiable in q, k, v.

    Args:
        q: [B,H,K,D]; k, v: [B,H,frames*P,D] frame-major (any strides; the last dim is made unit-stride).
        frames, window: the band (see kernels.banded_attention.reference.band).
        scale: softmax scale, default D**-0.5.
        blocks: (BLOCK_M latents, BLOCK_N keys) per tile, each >= 16 and a power of two; None = autotune on CUDA,
            DEFAULT_BLOCKS in the interpreter. Tests force small tiles to cover partial and multiple tiles.
        fuse_dq: compute dq inside the dk/dv kernel with fp32 atomics (one read of K and V in the backward instead
            of two; dq's last bits then depend on the order the atomics land). The default: on an H200 it took
            fwd+bwd at the paper shape from 0.832 to 0.681 ms (README, Kernels); False runs the separate dq kernel.
    Returns:
        [B,H,K,D] in q's dtype; fp32 accumulation for every dtype.
    """
    check_inputs(q, k, v, frames, window)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"triton backend supports float32/float16/bfloat16, got {q.dtype}")
    if blocks is not None and any(x < 16 or x & (x - 1) for x in blocks):
        raise ValueError(f"blocks must be powers of two >= 16, got {blocks}")
    if q.numel() == 0:  # nothing to launch (B*H == 0 or D == 0); the reference handles empty shapes
        return banded_cross_attention_reference(q, k, v, frames, window, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return BandedCrossAttention.apply(q, k, v, int(frames), int(window), scale, blocks, bool(fuse_dq))
