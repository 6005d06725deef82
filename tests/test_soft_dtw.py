"""kernels.soft_dtw, torch backend: against a brute-force float64 loop (values and gradients), exact path counts,
the hard-DTW limit, per-pair lengths and padding, dtypes, stability at gamma=0.01 / length 1024.

    python -m pytest tests/test_soft_dtw.py -q
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from instraction import kernels
from instraction.kernels.soft_dtw import reference
from instraction.kernels.soft_dtw.benchmark import random_cost
from instraction.kernels.soft_dtw.reference import soft_dtw_torch


def brute_force(cost: np.ndarray, gamma: float) -> tuple[float, np.ndarray]:
    """Soft-DTW value and gradient of one [n, m] float64 cost by plain loops (Cuturi & Blondel 2017, alg. 1-2)."""
    n, m = cost.shape
    r = np.full((n + 2, m + 2), np.inf)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = np.array([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]])
            low = prev.min()
            r[i, j] = cost[i - 1, j - 1] + low - gamma * np.log(np.exp(-(prev - low) / gamma).sum())
    c = np.zeros((n + 2, m + 2))
    c[1:n + 1, 1:m + 1] = cost
    e = np.zeros((n + 2, m + 2))
    e[n + 1, m + 1] = 1.0
    r[1:n + 1, m + 1] = -np.inf
    r[n + 1, 1:m + 1] = -np.inf
    r[n + 1, m + 1] = r[n, m]
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            a = np.exp((r[i + 1, j] - r[i, j] - c[i + 1, j]) / gamma)
            b = np.exp((r[i, j + 1] - r[i, j] - c[i, j + 1]) / gamma)
            d = np.exp((r[i + 1, j + 1] - r[i, j] - c[i + 1, j + 1]) / gamma)
            e[i, j] = e[i + 1, j] * a + e[i, j + 1] * b + e[i + 1, j + 1] * d
    return float(r[n, m]), e[1:n + 1, 1:m + 1]


def hard_dtw(cost: np.ndarray) -> float:
    n, m = cost.shape
    r = np.full((n + 1, m + 1), np.inf)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            r[i, j] = cost[i - 1, j - 1] + min(r[i - 1, j - 1], r[i - 1, j], r[i, j - 1])
    return float(r[n, m])


def delannoy(a: int, b: int) -> int:
    """Number of monotone (right, down, diagonal) paths from (0, 0) to (a, b)."""
    return sum(math.comb(a, k) * math.comb(b, k) * 2 ** k for k in range(min(a, b) + 1))


@pytest.fixture
def small_blocks(monkeypatch):
    """Force the potential re-anchoring every few diagonals (normally every ~40 (fp32) / ~600 (fp64))."""
    def use(block: int):
        monkeypatch.setattr(reference, "block_size", lambda dtype, n: block)
        reference._POOL.clear()  # workspaces bake their block layout in
    yield use
    reference._POOL.clear()


@pytest.mark.parametrize("gamma", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("n,m", [(1, 1), (1, 6), (6, 1), (7, 5), (5, 9), (13, 11)])
def test_matches_brute_force(n, m, gamma):
    cost = random_cost(3, n, m, seed=n * 100 + m).requires_grad_()
    value = soft_dtw_torch(cost, gamma)
    value.sum().backward()
    for b in range(3):
        want, grad = brute_force(cost[b].detach().numpy(), gamma)
        assert value[b].item() == pytest.approx(want, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(cost.grad[b].numpy(), grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("block", [2, 3, 7])
def test_reanchoring_blocks_are_exact(small_blocks, block):
    small_blocks(block)
    cost = random_cost(4, 9, 12, seed=block).requires_grad_()
    lengths_n, lengths_m = torch.tensor([9, 1, 5, 8]), torch.tensor([12, 4, 1, 10])
    soft_dtw_torch(cost, 0.1, lengths_n, lengths_m).sum().backward()
    for b in range(4):
        want, grad = brute_force(cost[b, :lengths_n[b], :lengths_m[b]].detach().numpy(), 0.1)
        assert soft_dtw_torch(cost.detach(), 0.1, lengths_n, lengths_m)[b].item() == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(cost.grad[b, :lengths_n[b], :lengths_m[b]].numpy(), grad, atol=1e-11)


def test_gradcheck_with_lengths_and_weights():
    cost = random_cost(3, 5, 4, seed=7).requires_grad_()
    lengths_n, lengths_m = torch.tensor([5, 2, 4]), torch.tensor([4, 4, 1])
    assert torch.autograd.gradcheck(lambda c: soft_dtw_torch(c, 0.3, lengths_n, lengths_m), (cost,))


def test_padded_batch_equals_unpadded_pairs_and_padding_gets_zero_grad():
    lengths_n, lengths_m = torch.tensor([7, 1, 4, 7, 2]), torch.tensor([3, 9, 9, 1, 5])
    cost = random_cost(5, 7, 9, seed=3)
    for b in range(5):  # garbage in the padding must not leak (the DP is causal; E is masked)
        cost[b, lengths_n[b]:, :] = float("nan")
        cost[b, :, lengths_m[b]:] = float("inf")
    cost.requires_grad_()
    values = soft_dtw_torch(cost, 0.1, lengths_n, lengths_m)
    weights = torch.arange(1.0, 6.0, dtype=torch.float64)
    (values * weights).sum().backward()
    for b in range(5):
        block = cost.detach()[b:b + 1, :lengths_n[b], :lengths_m[b]].clone().requires_grad_()
        alone = soft_dtw_torch(block, 0.1)
        (alone * weights[b]).sum().backward()
        assert values[b].item() == pytest.approx(alone.item(), rel=1e-12)
        torch.testing.assert_close(cost.grad[b, :lengths_n[b], :lengths_m[b]], block.grad[0], rtol=1e-10, atol=1e-12)
        pad = cost.grad[b].clone()
        pad[:lengths_n[b], :lengths_m[b]] = 0.0
        assert torch.count_nonzero(pad) == 0


def test_tends_to_hard_dtw_as_gamma_goes_to_zero():
    cost = random_cost(2, 8, 6, seed=11)
    gaps = []
    for gamma in (1.0, 0.1, 0.01, 0.001):
        values = soft_dtw_torch(cost, gamma)
        for b in range(2):
            hard = hard_dtw(cost[b].numpy())
            # soft-min <= min, and min - soft-min <= gamma * log(#paths)
            assert values[b].item() <= hard + 1e-12
            assert hard - values[b].item() <= gamma * math.log(delannoy(7, 5)) + 1e-12
        gaps.append(max(hard_dtw(cost[b].numpy()) - values[b].item() for b in range(2)))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-2


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("n,m", [(400, 400), (1024, 40)])
def test_all_paths_tied_exact_counts(dtype, rel, n, m):
    """Zero cost, gamma=1: R = -log(#paths) and E[i,j] = paths through (i,j) / all paths. X reaches e^(1.76 n)
    here, far past the float range, so this passes only if the potential re-anchoring works."""
    cost = torch.zeros(1, n, m, dtype=dtype, requires_grad=True)
    value = soft_dtw_torch(cost, 1.0)
    value.backward()
    total = delannoy(n - 1, m - 1)
    assert value.item() == pytest.approx(-math.log(total), rel=rel)
    for i, j in [(1, 1), (n, m), (n // 2, m // 3), (n // 3, m - 1), (2, 1)]:
        share = Fraction(delannoy(i - 1, j - 1) * delannoy(n - i, m - j), total)
        assert cost.grad[0, i - 1, j - 1].item() == pytest.approx(float(share), rel=50 * rel, abs=1e-30)


@pytest.mark.parametrize("n,m", [(1024, 48), (48, 1024)])
def test_stable_at_small_gamma_and_length_1024(n, m):
    cost = random_cost(2, n, m, seed=5)
    out = {}
    for dtype in (torch.float64, torch.float32):
        c = cost.to(dtype).clone().requires_grad_()
        v = soft_dtw_torch(c, 0.01)
        v.sum().backward()
        assert torch.isfinite(v).all() and torch.isfinite(c.grad).all()
        out[dtype] = (v.double(), c.grad.double())
    torch.testing.assert_close(out[torch.float32][0], out[torch.float64][0], rtol=1e-5, atol=0)
    # Any float32 soft-DTW stores R (here ~285) to ~eps32 * R, i.e. an error of eps32 * R / gamma (~2e-3) in the
    # exponents of the soft-min weights, so E (in [0, 1]) is good to a few times that, not to eps32.
    bound = 4 * torch.finfo(torch.float32).eps * out[torch.float64][0].max().item() / 0.01
    torch.testing.assert_close(out[torch.float32][1], out[torch.float64][1], rtol=0, atol=bound)
    grad = out[torch.float64][1]
    assert grad.min() >= 0 and grad.max() <= 1 + 1e-9  # E is the expected occupancy of a cell
    assert (grad.sum(2) >= 1 - 1e-9).all() and (grad.sum(1) >= 1 - 1e-9).all()  # every path visits each row/col


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_reduced_precision_inputs_accumulate_in_fp32(dtype, rtol):
    """The half-precision cost is rounded on input; the reference is float64 on that same rounded cost, so only the
    float32 accumulation (~1e-6 here) and the rounding of the outputs to `dtype` remain."""
    cost = random_cost(3, 17, 9, seed=2, dtype=dtype).requires_grad_()
    value = soft_dtw_torch(cost, 0.1)
    value.sum().backward()
    assert value.dtype == dtype and cost.grad.dtype == dtype
    exact = cost.detach().double().requires_grad_()
    soft_dtw_torch(exact, 0.1).sum().backward()
    torch.testing.assert_close(value.double(), soft_dtw_torch(exact.detach(), 0.1), rtol=rtol, atol=0)
    torch.testing.assert_close(cost.grad.double(), exact.grad, rtol=0, atol=4 * rtol)


def test_graphs_in_flight_do_not_share_a_workspace():
    a, b = random_cost(4, 6, 5, seed=1).requires_grad_(), random_cost(4, 6, 5, seed=2).requires_grad_()
    (soft_dtw_torch(a, 0.2).sum() + 3 * soft_dtw_torch(b, 0.2).sum()).backward()
    for c, scale in ((a, 1.0), (b, 3.0)):
        alone = c.detach().clone().requires_grad_()
        (scale * soft_dtw_torch(alone, 0.2).sum()).backward()
        torch.testing.assert_close(c.grad, alone.grad, rtol=0, atol=0)


def test_workspace_pool_is_bounded_and_reuse_is_exact(monkeypatch):
    monkeypatch.setattr(reference, "_POOL_BYTES", 200_000)
    reference._POOL.clear()
    cost = random_cost(4, 9, 7, seed=6)
    first = soft_dtw_torch(cost, 0.1)
    for n, m in [(30, 20), (9, 7), (25, 25), (9, 7)]:  # other shapes come and go; (9, 7) is reused
        soft_dtw_torch(random_cost(4, n, m, seed=n), 0.1)
    kept = sum(w.nbytes for free in reference._POOL.values() for w in free)
    assert 0 < kept <= 200_000
    torch.testing.assert_close(soft_dtw_torch(cost, 0.1), first, rtol=0, atol=0)
    reference._POOL.clear()


def test_retain_graph_backward_twice_is_identical():
    cost = random_cost(3, 5, 8, seed=4).requires_grad_()
    value = soft_dtw_torch(cost, 0.1).sum()
    first = torch.autograd.grad(value, cost, retain_graph=True)[0]
    second = torch.autograd.grad(value, cost)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_public_dispatch_and_symmetry():
    cost = random_cost(3, 4, 7, seed=9)
    torch.testing.assert_close(kernels.soft_dtw(cost, 0.5, backend="torch"), soft_dtw_torch(cost, 0.5), rtol=0, atol=0)
    transposed = kernels.soft_dtw(cost.transpose(1, 2), 0.5)  # the soft-min is symmetric: R(C) = R(C^T)
    torch.testing.assert_close(kernels.soft_dtw(cost, 0.5, backend="torch"), transposed, rtol=1e-12, atol=0)
    original = cost.clone()
    kernels.soft_dtw(cost, 0.5, torch.tensor([1, 4, 2]), torch.tensor([7, 3, 1]))
    assert torch.equal(cost, original)  # the input is never written
    assert kernels.soft_dtw(torch.zeros(0, 3, 4), 1.0).shape == (0,)


@pytest.mark.parametrize("call,match", [
    (lambda: kernels.soft_dtw(torch.zeros(3, 4)), "must be \\[B,N,M\\]"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 3, 4, dtype=torch.long)), "floating point"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 0, 4)), "non-empty"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 3, 4), gamma=0.0), "gamma"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 3, 4), lengths_n=torch.tensor([0, 3])), "lengths_n must lie in"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 3, 4), lengths_m=torch.tensor([4, 5])), "lengths_m must lie in"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 3, 4), lengths_n=torch.tensor([1.0, 2.0])), "integer tensor"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 3, 4), lengths_m=torch.tensor([1, 2, 3])), "integer tensor"),
    (lambda: kernels.soft_dtw(torch.zeros(2, 3, 4), backend="cuda"), "backend"),
])
def test_bad_input_is_rejected_with_a_reason(call, match):
    with pytest.raises(ValueError, match=match):
        call()
