"""kernels.soft_dtw Triton kernels against the torch backend (float64), forward and gradient, in Triton's
interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 unless it is set). On a CUDA machine the same tests
also run on CUDA tensors (their ids contain "cuda"); those check the compiled kernels and fail if the interpreter is on:

    python -m pytest tests/test_soft_dtw_triton.py -q
    TRITON_INTERPRET=0 python -m pytest tests/test_soft_dtw_triton.py -q -k cuda     # GPU: compiled kernels

Both kernel families are tested on the same shapes: the register kernels for small DPs (`is_small`: <= 32 x 32
cells, one lane per pair) and the anti-diagonal wavefront (forced for small shapes by the `kernel` fixture).

Tolerances (the reference is float64 on the very same, already rounded, cost):
  float32 kernel: values rtol 4e-6 - each of the n+m-1 wavefront steps adds a log/exp rounding of ~eps32 = 1.2e-7
      relative to R (<= 126 steps here, errors partly cancel). Gradients atol 4 * eps32 * max(R) / gamma: R is held
      to ~eps32 * R, which is an absolute error eps32 * R / gamma in the exponents of the soft-min weights, and
      E (in [0, 1]) inherits it; any float32 soft-DTW has this floor (e.g. 4e-5 at R ~ 80, gamma = 0.1).
  compiled on a GPU: tl.exp / tl.log lower to the approximate ex2 / lg2 instructions (absolute error ~2^-22 in the
      exponent / logarithm), so each wavefront step may add gamma * 2^-22 to R: values also get atol (n+m) * gamma *
      2^-22 there (seen on an H200: |dvalue| 2.1e-7 on a value of 0.02 at 20x37, gamma 1, i.e. rtol 1.1e-5).
  float16 / bfloat16 costs: the kernel accumulates in float32, so on top of that only the final rounding of value
      and gradient to the half type is added: rtol = 2 ulp (fp16 2^-10, bf16 2^-7) on values, atol = 2 ulp of 1 on E.
"""

from __future__ import annotations

import os

import pytest
import torch

from instraction import kernels
from instraction.kernels.soft_dtw.benchmark import random_cost as shared_random_cost
from instraction.kernels.soft_dtw.reference import soft_dtw_torch
from instraction.kernels.soft_dtw.triton import is_small, soft_dtw_triton

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_cost(b, n, m, seed, dtype=torch.float32, device="cpu"):
    if device == "cuda":  # the GPU run is there to test the compiled kernels
        assert os.environ.get("TRITON_INTERPRET", "0") != "1", "CUDA tests need TRITON_INTERPRET=0 (compiled kernels)"
    return shared_random_cost(b, n, m, seed, dtype=dtype, device=device)


@pytest.fixture(params=["small", "wavefront"])
def kernel(request, monkeypatch):
    """Which kernels run: "small" (the register kernels; shapes under test must be small) or "wavefront" (forced)."""
    from instraction.kernels.soft_dtw import triton as sdtw_triton

    if request.param == "wavefront":
        monkeypatch.setattr(sdtw_triton, "_SMALL_CELLS", 0)
    return request.param


def weights(b, seed=0):
    """Random upstream gradients, so grad_out is not all ones."""
    return torch.randn(b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_triton(cost, gamma, lengths_n, lengths_m, w):
    """(value, d sum(w * value) / d cost) from the Triton kernels."""
    ours = cost.detach().clone().requires_grad_()
    value = soft_dtw_triton(ours, gamma, lengths_n, lengths_m)
    (value.double() * w.to(value.device)).sum().backward()
    return value, ours.grad


def check_against_torch(cost, gamma, lengths_n=None, lengths_m=None, rtol=4e-6, atol=0.0):
    """Value and gradient against the float64 torch backend; the gradient tolerance is
    (atol + 4 * eps32 * max|R| / gamma) * max|w| (see the module docstring). Returns the Triton (value, grad)."""
    w = weights(cost.shape[0])
    value, grad = run_triton(cost, gamma, lengths_n, lengths_m, w)
    ref = cost.detach().cpu().double().requires_grad_()
    lengths = [None if t is None else t.cpu() for t in (lengths_n, lengths_m)]
    want = soft_dtw_torch(ref, gamma, *lengths)
    (want * w).sum().backward()
    assert value.dtype == cost.dtype and grad.dtype == cost.dtype
    approx = (cost.shape[1] + cost.shape[2]) * gamma * 2.0 ** -22 if cost.is_cuda else 0.0  # GPU ex2/lg2.approx
    torch.testing.assert_close(value.double().cpu(), want, rtol=rtol, atol=approx)
    floor = 4 * torch.finfo(torch.float32).eps * want.abs().max().item() / gamma
    torch.testing.assert_close(grad.double().cpu(), ref.grad, rtol=0, atol=(atol + floor) * w.abs().max().item())
    return value, grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gamma", [0.1, 1.0])
@pytest.mark.parametrize("n,m", [(1, 1), (7, 7), (1, 7), (7, 1), (16, 8), (13, 5), (5, 13), (63, 5), (5, 63), (20, 37)])
def test_matches_torch_backend_odd_shapes(kernel, device, n, m, gamma):
    check_against_torch(random_cost(5, n, m, seed=n * 64 + m, device=device), gamma)


@pytest.mark.parametrize("device", DEVICES)
def test_long_diagonals_span_several_tiles(device):
    """63 x 63: diagonals of up to 63 cells are tiled (16 rows per tile in the interpreter); gamma 0.01."""
    check_against_torch(random_cost(2, 63, 63, seed=1, device=device), 0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_unequal_lengths_and_padding(kernel, device):
    """19 pairs (two programs of 16), lengths 1, 7, 63 and mixed; nan/inf in the padding; zero grad there."""
    b, n, m = 19, 63, 9
    lengths_n = torch.tensor([1, 7, 63, 63, 1, 30, 2, 5, 63, 17, 9, 1, 44, 3, 63, 8, 21, 12, 50], device=device)
    lengths_m = torch.tensor([1, 9, 9, 1, 7, 4, 2, 9, 5, 1, 3, 8, 6, 9, 2, 7, 9, 5, 1], device=device)
    cost = random_cost(b, n, m, seed=2, device=device)
    for i in range(b):
        cost[i, lengths_n[i]:, :] = float("nan")
        cost[i, :, lengths_m[i]:] = float("inf")
    value, grad = check_against_torch(cost, 0.1, lengths_n, lengths_m)  # the reference masks the padding
    assert torch.isfinite(value).all()
    for i in range(b):
        pad = grad[i].clone()
        pad[:lengths_n[i], :lengths_m[i]] = 0.0
        assert torch.count_nonzero(pad) == 0
    clean = run_triton(torch.nan_to_num(cost, nan=0.0, posinf=0.0), 0.1, lengths_n, lengths_m, weights(b))
    torch.testing.assert_close((value, grad), clean, rtol=0, atol=0)  # padding content is irrelevant, bit for bit


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,ulp", [(torch.float16, 2.0 ** -10), (torch.bfloat16, 2.0 ** -7)])
def test_half_precision_costs_accumulate_in_fp32(kernel, device, dtype, ulp):
    cost = random_cost(6, 23, 11, seed=3, dtype=dtype, device=device)
    check_against_torch(cost, 0.1, rtol=2 * ulp, atol=2 * ulp)


@pytest.mark.parametrize("device", DEVICES)
def test_public_dispatch(device):
    cost = random_cost(3, 6, 4, seed=4, device=device)
    direct = soft_dtw_triton(cost, 0.5)
    torch.testing.assert_close(kernels.soft_dtw(cost, 0.5, backend="triton"), direct, rtol=0, atol=0)
    if device == "cuda":  # auto = Triton for CUDA tensors
        torch.testing.assert_close(kernels.soft_dtw(cost, 0.5), soft_dtw_triton(cost, 0.5), rtol=0, atol=0)
    with pytest.raises(ValueError, match="lengths_n"):
        kernels.soft_dtw(cost, 0.5, lengths_n=torch.tensor([7, 1, 1]), backend="triton")


def test_autotuning_prunes_narrow_tiles_on_long_sequences():
    from instraction.kernels.soft_dtw.triton import _CUDA_CONFIGS, prune_configs

    assert prune_configs(_CUDA_CONFIGS, {"N": 1024}) == _CUDA_CONFIGS
    long = prune_configs(_CUDA_CONFIGS, {"N": 4096})
    assert long and len(long) < len(_CUDA_CONFIGS)
    assert all(c.kwargs["BLOCK_I"] >= 128 and c.kwargs["BLOCK_B"] <= 2 for c in long)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_without_gradient_saves_nothing_and_agrees_bit_for_bit(kernel, device):
    """No grad needed: the forward is compiled without the weight stores, the value must not change."""
    from instraction.kernels.soft_dtw import triton as sdtw_triton

    cost = random_cost(4, 21, 13, seed=5, device=device)
    lengths_n, lengths_m = torch.tensor([21, 3, 17, 1], device=device), torch.tensor([13, 13, 2, 5], device=device)
    lengths_n, lengths_m = lengths_n.int(), lengths_m.int()
    with_grad, weights = sdtw_triton._forward(cost, 0.1, lengths_n, lengths_m, save=True)
    without, none = sdtw_triton._forward(cost, 0.1, lengths_n, lengths_m, save=False)
    assert none is None and weights.shape == (2, 4, 21, 13)
    torch.testing.assert_close(without, with_grad, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(soft_dtw_triton(cost, 0.1, lengths_n, lengths_m), with_grad, rtol=0, atol=0)
    # the stored weights are those of the softmin: w_up + w_left <= 1 (w_diag the rest), zero past the lengths
    assert (weights >= 0).all() and (weights.sum(0) <= 1 + 1e-6).all()
    assert torch.count_nonzero(weights[:, 1, 3:, :]) == 0 and torch.count_nonzero(weights[:, 2, :, 2:]) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 4e-6, 0.0), (torch.float16, 2.0 ** -9, 2.0 ** -9),
                                             (torch.bfloat16, 2.0 ** -6, 2.0 ** -6)])
@pytest.mark.parametrize("transpose", [False, True])
def test_model_shape_with_lengths(device, dtype, rtol, atol, transpose):
    """The model's shape, K = 16 latents x up to 8 verb phrases (and its transpose), 37 pairs (programs not full),
    per-pair lengths including 1 x 1 and full: the register kernels, against float64, per-dtype tolerances."""
    b, n, m = 37, 16, 8
    assert is_small(n, m) and is_small(m, n)
    g = torch.Generator().manual_seed(11)
    lengths_n, lengths_m = torch.randint(1, n + 1, (b,), generator=g), torch.randint(1, m + 1, (b,), generator=g)
    lengths_n[:3], lengths_m[:3] = torch.tensor([1, n, n]), torch.tensor([1, m, 1])
    cost = random_cost(b, n, m, seed=12, dtype=dtype, device=device)
    if transpose:
        cost, lengths_n, lengths_m = cost.transpose(1, 2), lengths_m, lengths_n  # strided, not copied
    check_against_torch(cost, 0.1, lengths_n.to(device), lengths_m.to(device), rtol=rtol, atol=atol)


def test_small_dispatch_and_orientation():
    """Register kernels up to 32 x 32 cells with a side <= 32; their saved weights are [2, B, rows, cols] with the
    rows along the longer side (the columns are unrolled)."""
    from instraction.kernels.soft_dtw import triton as sdtw_triton

    assert is_small(16, 8) and is_small(8, 16) and is_small(1, 1) and is_small(32, 32) and is_small(1, 1000)
    assert not is_small(33, 32) and not is_small(63, 63)
    lengths = torch.full((3,), 5, dtype=torch.int32), torch.full((3,), 9, dtype=torch.int32)
    _, weights = sdtw_triton._forward(random_cost(3, 5, 9, seed=6), 0.1, *lengths)
    assert weights.shape == (2, 3, 9, 5)
