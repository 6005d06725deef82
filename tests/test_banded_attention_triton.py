"""Triton banded cross-attention vs the PyTorch reference, forward and every gradient, in Triton's interpreter.

    python -m pytest tests/test_banded_attention_triton.py -q      # CPU: TRITON_INTERPRET=1 comes from conftest.py

Tolerances are on the normalised error max|x - ref| / max|ref|, the reference being computed in fp32 from the
same (already rounded) inputs:
  float32  1e-5  the kernel is exact fp32 math with another summation order (online softmax, tiled sums):
                 observed ~1e-6 on these sizes, relative error grows like sqrt(#terms) * 6e-8.
  float16  4e-3  = 4 * eps(fp16, 9.8e-4): the kernel rounds P before P@V and dS before dS@K / dS^T Q to the
                 input dtype (as on tensor cores) and the result once more; each rounding costs <= eps/2.
  bfloat16 3e-2  = 4 * eps(bf16, 7.8e-3), same argument with bf16's 8-bit mantissa.
"""

from __future__ import annotations

import os

import pytest
import torch

from instraction.kernels.banded_attention import banded_cross_attention, band
from instraction.kernels.banded_attention.benchmark import INTERPRETER_SHAPES, Shape, forward_backward, max_errors, shape_inputs
from instraction.kernels.banded_attention.reference import banded_cross_attention_reference, latent_range
from instraction.kernels.banded_attention import triton as kernels
from instraction.kernels.banded_attention.triton import banded_cross_attention_triton

TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# (shape, tiles): K=5 < one tile; window 0 and wider than the clip; K=37 over three 16-latent tiles (last
# partial); P=196 (not a power of two) with 64-key tiles that straddle frames; D=64 and D=128.
CASES = [
    (Shape(1, 2, 5, 7, 3, 32, 0), (16, 16)),
    (Shape(1, 2, 5, 7, 3, 32, 9), (16, 16)),
    (Shape(2, 1, 37, 7, 3, 64, 1), (16, 16)),
    (Shape(1, 1, 4, 3, 196, 32, 1), (16, 64)),
    (Shape(1, 1, 6, 4, 5, 128, 1), (16, 32)),
]


def normalised_errors(shape, dtype, blocks, scale=None, device="cpu", fuse_dq=False):
    q, k, v, do = shape_inputs(shape, dtype, device=device, seed=shape.K + shape.P)
    got = forward_backward(lambda a, b, c: banded_cross_attention_triton(a, b, c, shape.T, shape.window, scale,
                                                                         blocks=blocks, fuse_dq=fuse_dq), q, k, v, do)
    want = forward_backward(lambda a, b, c: banded_cross_attention_reference(a, b, c, shape.T, shape.window, scale),
                            q.float(), k.float(), v.float(), do.float())
    assert all(g.dtype == dtype for g in got)
    names = ("o", "dq", "dk", "dv")
    return {n: ((g.float() - w).abs().max() / w.abs().max()).item() for n, g, w in zip(names, got, want)}


@pytest.mark.parametrize("fuse_dq", [False, True], ids=["dq_kernel", "fused_dq"])
@pytest.mark.parametrize("shape,blocks", CASES)
def test_forward_and_gradients_match_reference_fp32(shape, blocks, fuse_dq):
    errors = normalised_errors(shape, torch.float32, blocks, fuse_dq=fuse_dq)
    assert max(errors.values()) < TOL[torch.float32], errors


@pytest.mark.parametrize("fuse_dq", [False, True], ids=["dq_kernel", "fused_dq"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,blocks", [CASES[0], CASES[2], CASES[3]])
def test_forward_and_gradients_match_reference_half(shape, blocks, dtype, fuse_dq):
    errors = normalised_errors(shape, dtype, blocks, fuse_dq=fuse_dq)
    assert max(errors.values()) < TOL[dtype], errors


PAPER_AT_B2 = Shape(2, 3, 64, 32, 196, 64, 2)


@pytest.fixture
def compiled():
    """The CUDA tests must run the compiled kernels: with TRITON_INTERPRET=1 they would pass in the interpreter."""
    assert os.environ.get("TRITON_INTERPRET", "0") == "0" and not kernels.INTERPRET, "run with TRITON_INTERPRET=0"


@pytest.fixture
def launches(monkeypatch):
    """Names of the kernels launched through ``_kernel`` ("fwd", "dkdv", "dkdv_dq", "dq"), in order."""
    seen, real = [], kernels._kernel

    def counting(name, blocks):
        kernel, tiles = real(name, blocks)

        class Counted:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    seen.append(name)
                    return kernel[grid](*args, **kwargs)
                return launch
        return Counted(), tiles

    monkeypatch.setattr(kernels, "_kernel", counting)
    return seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("fuse_dq", [False, True], ids=["dq_kernel", "fused_dq"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,blocks", CASES + [(PAPER_AT_B2, (16, 64))])
def test_compiled_kernels_on_cuda_match_reference(shape, blocks, dtype, fuse_dq, compiled):
    """The compiled kernels on CUDA tensors with the interpreter tests' tiles (one compile per dtype and tile)."""
    errors = normalised_errors(shape, dtype, blocks, device="cuda", fuse_dq=fuse_dq)
    assert max(errors.values()) < TOL[dtype], errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with TRITON_INTERPRET=0)")
@pytest.mark.parametrize("fuse_dq", [False, True], ids=["dq_kernel", "fused_dq"])
def test_autotuned_kernels_on_cuda_match_reference(fuse_dq, compiled):
    """blocks=None: the autotuned kernels, on the paper's shape (B=2, H=3) in bf16, the dtype the benchmark times
    (autotuning compiles every config once; the benchmark then finds them in Triton's cache)."""
    errors = normalised_errors(PAPER_AT_B2, torch.bfloat16, None, device="cuda", fuse_dq=fuse_dq)
    assert max(errors.values()) < TOL[torch.bfloat16], errors


def test_fused_dq_only_when_both_dq_and_dkdv_are_needed(launches):
    """fuse_dq with only q needing a gradient falls back to the dq kernel (no dk/dv pass to fuse into); with only
    k, v it launches no dq work at all; with all three the dk/dv kernel computes dq."""
    shape = Shape(1, 2, 21, 7, 3, 32, 1)
    q, k, v, do = shape_inputs(shape)
    want = forward_backward(lambda a, b, c: banded_cross_attention_reference(a, b, c, 7, 1), q, k, v, do)
    launches.clear()
    q_only = q.clone().requires_grad_()
    banded_cross_attention_triton(q_only, k, v, 7, 1, blocks=(16, 16), fuse_dq=True).backward(do)
    torch.testing.assert_close(q_only.grad, want[1], atol=1e-5, rtol=1e-5)
    assert launches == ["fwd", "dq"]
    launches.clear()
    kv = [t.clone().requires_grad_() for t in (k, v)]
    banded_cross_attention_triton(q, *kv, 7, 1, blocks=(16, 16), fuse_dq=True).backward(do)
    torch.testing.assert_close([t.grad for t in kv], list(want[2:]), atol=1e-5, rtol=1e-5)
    assert launches == ["fwd", "dkdv"]
    launches.clear()
    banded_cross_attention_triton(*(t.clone().requires_grad_() for t in (q, k, v)), 7, 1, blocks=(16, 16),
                                  fuse_dq=True).backward(do)
    assert launches == ["fwd", "dkdv_dq"]


def test_default_tiles_custom_scale_and_public_dispatch():
    shape = Shape(1, 2, 5, 7, 3, 32, 1)
    assert max(normalised_errors(shape, torch.float32, None, scale=0.7).values()) < TOL[torch.float32]
    q, k, v, _ = shape_inputs(shape)
    torch.testing.assert_close(banded_cross_attention(q, k, v, 7, 1, backend="triton"),
                               banded_cross_attention_reference(q, k, v, 7, 1), atol=1e-5, rtol=1e-5)


def test_strided_keys_give_the_same_result():
    """k/v as a [B,N,H,D] projection viewed as [B,H,N,D] (what a perceiver produces) need no copy."""
    shape = Shape(2, 3, 5, 7, 3, 32, 1)
    q, k, v, do = shape_inputs(shape)
    k_t, v_t = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    assert not k_t.is_contiguous()
    fn = lambda a, b, c: banded_cross_attention_triton(a, b, c, 7, 1)  # noqa: E731
    for got, want in zip(forward_backward(fn, q, k_t, v_t, do), forward_backward(fn, q, k, v, do)):
        torch.testing.assert_close(got, want)


def test_each_latent_sees_exactly_its_band():
    """Row i is unchanged (bit for bit) when every key outside its band changes, and moves with one visible key."""
    K, T, P, D, window = 5, 7, 3, 32, 1
    q, k, v, _ = shape_inputs(Shape(1, 1, K, T, P, D, window))
    lo, hi = band(K, T, window)
    base = banded_cross_attention_triton(q, k, v, T, window)
    frame = torch.arange(T * P) // P
    for i in range(K):
        outside = (frame < lo[i]) | (frame >= hi[i])
        k2, v2 = k.clone(), v.clone()
        k2[:, :, outside] = 50 * torch.randn_like(k2[:, :, outside])
        v2[:, :, outside] = 50 * torch.randn_like(v2[:, :, outside])
        assert torch.equal(banded_cross_attention_triton(q, k2, v2, T, window)[:, :, i], base[:, :, i]), i
        for last in (False, True):  # first and last visible key, both edges of the band
            n = int(hi[i]) * P - 1 if last else int(lo[i]) * P
            v3 = v.clone()
            v3[:, :, n] += 1.0
            assert not torch.allclose(banded_cross_attention_triton(q, k, v3, T, window)[:, :, i], base[:, :, i])


def test_forward_and_dq_never_read_keys_outside_the_tile_band_union():
    """K=40 latents over T=20 frames (2 latents/frame), window 0, 16-latent tiles: tile 1 (latents 16..31) sees
    frames [8, 16) = keys [24, 48) with P=3, so its first 16-key tile starts at the aligned key 16. NaN keys
    everywhere else must not reach its rows (they are masked at load, not only in the scores). The separate dq
    kernel's property: the fused backward loads whole key tiles for dk/dv, so a non-finite key outside a latent
    tile's band can reach that tile's dq as 0 * NaN (with finite keys both give the same gradients, tested above;
    a NaN key makes the step's loss NaN anyway)."""
    shape = Shape(1, 1, 40, 20, 3, 32, 0)
    q, k, v, do = shape_inputs(shape)
    outside = torch.ones(shape.T * shape.P, dtype=torch.bool)
    outside[24:48] = False
    k[:, :, outside] = float("nan")
    v[:, :, outside] = float("nan")
    out, dq, _, _ = forward_backward(
        lambda a, b, c: banded_cross_attention_triton(a, b, c, 20, 0, blocks=(16, 16), fuse_dq=False), q, k, v, do)
    want, want_dq, _, _ = forward_backward(
        lambda a, b, c: banded_cross_attention_reference(a, b, c, 8, 0), q[:, :, 16:32], k[:, :, 24:48],
        v[:, :, 24:48], do[:, :, 16:32])
    torch.testing.assert_close(out[:, :, 16:32], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dq[:, :, 16:32], want_dq, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the NaN rows' own forward, irrelevant here
def test_dkdv_visits_only_the_latent_tiles_that_see_the_keys():
    """NaN queries/output-grads in latent tile 2 (latents 32..39 see frames >= 16) must not reach dk, dv of the
    frames 0..15 (one 16-key tile per frame with P=16)."""
    shape = Shape(1, 1, 40, 20, 16, 32, 0)
    q, k, v, do = shape_inputs(shape)
    assert latent_range(0, 15, 40, 20, 0) == (0, 32)
    q[:, :, 32:] = float("nan")
    do[:, :, 32:] = float("nan")
    _, _, dk, dv = forward_backward(lambda a, b, c: banded_cross_attention_triton(a, b, c, 20, 0, blocks=(16, 16)),
                                    q, k, v, do)
    _, _, want_dk, want_dv = forward_backward(
        lambda a, b, c: banded_cross_attention_reference(a, b, c, 16, 0), q[:, :, :32], k[:, :, :256],
        v[:, :, :256], do[:, :, :32])
    torch.testing.assert_close(dk[:, :, :256], want_dk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dv[:, :, :256], want_dv, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("K,T,window", [(17, 5, 0), (33, 11, 0), (32, 11, 1), (47, 13, 2), (31, 40, 1)])
def test_tile_boundaries_sweep(K, T, window):
    """Latent counts around tile multiples (16) and ratios K/T that are not integers, one 16-key tile per frame
    (P=16): every tile's visited range is then decided by the exact band / latent-range integer formulas."""
    errors = normalised_errors(Shape(1, 1, K, T, 16, 16, window), torch.float32, (16, 16))
    assert max(errors.values()) < TOL[torch.float32], errors


def test_gradients_only_for_inputs_that_need_them_and_empty_batch(launches):
    shape = Shape(1, 2, 5, 7, 3, 32, 1)
    q, k, v, do = shape_inputs(shape)
    want = forward_backward(lambda a, b, c: banded_cross_attention_reference(a, b, c, 7, 1), q, k, v, do)[1]
    launches.clear()
    q.requires_grad_()
    banded_cross_attention_triton(q, k, v, 7, 1).backward(do)
    torch.testing.assert_close(q.grad, want, atol=1e-5, rtol=1e-5)
    assert k.grad is None and v.grad is None
    assert launches == ["fwd", "dq"]  # the dk/dv kernel was skipped
    empty = banded_cross_attention_triton(q[:0], k[:0], v[:0], 7, 1)
    assert empty.shape == (0, 2, 5, 32)


def test_rejects_bad_tiles_and_dtypes():
    q, k, v, _ = shape_inputs(Shape(1, 1, 5, 7, 3, 32, 1))
    with pytest.raises(ValueError, match="blocks"):
        banded_cross_attention_triton(q, k, v, 7, 1, blocks=(8, 16))
    with pytest.raises(TypeError, match="float"):
        banded_cross_attention_triton(q.double(), k.double(), v.double(), 7, 1)


def test_benchmark_interpreter_check_is_within_tolerance():
    errors = max_errors(INTERPRETER_SHAPES[0], torch.bfloat16)
    assert set(errors) == {"out", "dq", "dk", "dv"} and max(errors.values()) < 0.1, errors
