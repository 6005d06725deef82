"""kernels.soft_dtw, numba CPU backend (kernels/soft_dtw/cpu.py): values and gradients against the float64 brute-force
loops and the torch backend over odd shapes, per-pair lengths with nan/inf padding, gamma 0.01 / 0.1 / 1, float32 and
float64, stability at gamma 0.01 / length 1024, all-paths-tied counts, gradcheck, dispatch.

    python -m pytest tests/test_soft_dtw_numba.py -q
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import torch

from instraction import kernels
from instraction.kernels.soft_dtw.benchmark import random_cost
from instraction.kernels.soft_dtw.reference import soft_dtw_torch
from instraction.kernels.soft_dtw.cpu import soft_dtw_numba
from tests.test_soft_dtw import brute_force, delannoy


def _run(fn, cost, gamma, lengths_n=None, lengths_m=None, weights=None):
    leaf = cost.detach().clone().requires_grad_()
    value = fn(leaf, gamma, lengths_n, lengths_m)
    (value * (1.0 if weights is None else weights)).sum().backward()
    return value.detach(), leaf.grad


@pytest.mark.parametrize("gamma", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("n,m", [(1, 1), (1, 7), (7, 1), (7, 7), (63, 5), (9, 63)])
def test_matches_brute_force_float64(n, m, gamma):
    cost = random_cost(3, n, m, seed=n * 100 + m)
    value, grad = _run(soft_dtw_numba, cost, gamma)
    for b in range(3):
        want, want_grad = brute_force(cost[b].numpy(), gamma)
        assert value[b].item() == pytest.approx(want, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(grad[b].numpy(), want_grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gamma", [0.01, 0.1, 1.0])
def test_unequal_lengths_nan_inf_padding_vs_torch_float64(dtype, gamma):
    b, n, m = 37, 63, 29  # B not a multiple of the 16 lanes
    g = torch.Generator().manual_seed(int(gamma * 100))
    lengths_n, lengths_m = torch.randint(1, n + 1, (b,), generator=g), torch.randint(1, m + 1, (b,), generator=g)
    lengths_n[:3], lengths_m[:3] = torch.tensor([1, n, 7]), torch.tensor([m, 1, 1])
    cost = random_cost(b, n, m, seed=17)
    padded = cost.clone()
    for k in range(b):
        padded[k, lengths_n[k]:, :] = float("nan")
        padded[k, :, lengths_m[k]:] = float("inf")
    weights = torch.linspace(-1.0, 2.0, b, dtype=torch.float64)
    want, want_grad = _run(soft_dtw_torch, cost, gamma, lengths_n, lengths_m, weights)
    value, grad = _run(soft_dtw_numba, padded.to(dtype), gamma, lengths_n, lengths_m, weights.to(dtype))
    assert value.dtype == dtype and grad.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(value, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-11)
    else:  # the float32 input is rounded; the kernels accumulate in float64 either way
        exact = _run(soft_dtw_torch, cost.to(dtype).double(), gamma, lengths_n, lengths_m, weights)
        torch.testing.assert_close(value.double(), exact[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad.double(), exact[1], rtol=1e-5, atol=1e-6)
    for k in range(b):  # the padding gets exactly zero gradient
        pad = grad[k].clone()
        pad[:lengths_n[k], :lengths_m[k]] = 0
        assert torch.count_nonzero(pad) == 0


@pytest.mark.parametrize("n,m", [(1024, 48), (48, 1024)])
def test_stable_at_small_gamma_and_length_1024(n, m):
    cost = random_cost(2, n, m, seed=5)
    want, want_grad = _run(soft_dtw_torch, cost, 0.01)
    value, grad = _run(soft_dtw_numba, cost, 0.01)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(value, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-9)
    value32, grad32 = _run(soft_dtw_numba, cost.float(), 0.01)
    assert torch.isfinite(value32).all() and torch.isfinite(grad32).all()


def test_all_paths_tied_exact_counts():
    """Zero cost, gamma=1: R = -log(#paths) ~ -700 (past exp's range if the DP were not normalised per cell)."""
    n, m = 400, 400
    value, grad = _run(soft_dtw_numba, torch.zeros(1, n, m, dtype=torch.float64), 1.0)
    total = delannoy(n - 1, m - 1)
    assert value.item() == pytest.approx(-math.log(total), rel=1e-12)
    for i, j in [(1, 1), (n, m), (n // 2, m // 3)]:
        share = delannoy(i - 1, j - 1) * delannoy(n - i, m - j) / total
        assert grad[0, i - 1, j - 1].item() == pytest.approx(share, rel=5e-11)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    cost = random_cost(3, 17, 9, seed=2, dtype=dtype)
    value, grad = _run(soft_dtw_numba, cost, 0.1)
    assert value.dtype == dtype and grad.dtype == dtype
    want, want_grad = _run(soft_dtw_torch, cost.double(), 0.1)
    rtol = 1e-3 if dtype == torch.float16 else 8e-3
    torch.testing.assert_close(value.double(), want, rtol=rtol, atol=0)
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=4 * rtol)


def test_gradcheck_with_lengths():
    cost = random_cost(3, 5, 4, seed=7).requires_grad_()
    lengths_n, lengths_m = torch.tensor([5, 2, 4]), torch.tensor([4, 4, 1])
    assert torch.autograd.gradcheck(lambda c: soft_dtw_numba(c, 0.3, lengths_n, lengths_m), (cost,))


def test_retain_graph_and_graphs_in_flight():
    a, b = random_cost(4, 6, 5, seed=1).requires_grad_(), random_cost(4, 6, 5, seed=2).requires_grad_()
    total = soft_dtw_numba(a, 0.2).sum() + 3 * soft_dtw_numba(b, 0.2).sum()
    first = torch.autograd.grad(total, (a, b), retain_graph=True)
    second = torch.autograd.grad(total, (a, b))
    for x, y, c, scale in zip(first, second, (a, b), (1.0, 3.0)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
        torch.testing.assert_close(x, scale * _run(soft_dtw_numba, c, 0.2)[1], rtol=1e-14, atol=1e-15)  # no state shared


def test_dispatch():
    cost = random_cost(3, 4, 7, seed=9)
    torch.testing.assert_close(kernels.soft_dtw(cost, 0.5), soft_dtw_numba(cost, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(kernels.soft_dtw(cost, 0.5, backend="numba"), soft_dtw_torch(cost, 0.5),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(kernels.soft_dtw(cost.transpose(1, 2), 0.5, backend="numba"),
                               soft_dtw_torch(cost, 0.5), rtol=1e-12, atol=0)
    assert kernels.soft_dtw(torch.zeros(0, 3, 4), 1.0, backend="numba").shape == (0,)
    with pytest.raises(ValueError, match="gamma"):
        kernels.soft_dtw(cost, 0.0, backend="numba")


@pytest.mark.parametrize("b,n,m,full", [(19, 7, 12, True), (19, 7, 12, False), (21, 3, 40, True), (21, 3, 40, False)])
def test_row_copy_scales_and_zeroes_the_padding(b, n, m, full):
    """Both loop orders of the forward's per-row copy [B,N,M] row i -> [columns, lanes] (rows of <= 32 / longer rows),
    for the whole row and for a tile's columns c0.. of a lane block's pairs: scaled costs inside each pair's lengths,
    exact zeros outside them, whatever the buffer held before; the padding pairs' columns are not touched (the
    forward zeroes them once)."""
    from instraction.kernels.soft_dtw.cpu import _LANES, _cost_row

    rng = np.random.default_rng(b * n * m)
    cost = rng.random((b, n, m))
    nbp = -(-b // _LANES) * _LANES
    ln, lm = np.zeros(nbp, dtype=np.int64), np.zeros(nbp, dtype=np.int64)
    ln[:b] = n if full else rng.integers(1, n + 1, b)
    lm[:b] = m if full else rng.integers(1, m + 1, b)
    for b0, b1, c0, wd in [(0, nbp, 0, m), (_LANES, nbp, 1, m - 3), (0, _LANES, m // 2, m - m // 2)]:
        for i in range(n):
            out = np.full((wd, b1 - b0), np.nan)
            _cost_row(cost[b0:b1], i, ln[b0:b1], lm[b0:b1], -2.5, full, out, c0)
            want = np.full((wd, b1 - b0), np.nan)
            want[:, :max(0, min(b1, b) - b0)] = 0.0
            for k in range(b0, min(b1, b)):
                if i < ln[k]:
                    lim = max(0, lm[k] - c0)
                    want[:lim, k - b0] = -2.5 * cost[k, i, c0:c0 + min(lim, wd)]
            np.testing.assert_array_equal(out, want)


def test_no_writable_cache_location_compiles_instead_of_failing_the_import(tmp_path):
    """Where numba finds no writable cache location (a read-only install, no writable HOME; simulated by leaving it
    only the zip-import locator), importing the backend warns and compiles in-process instead of raising."""
    import json
    import os
    import subprocess
    import sys

    cost = random_cost(3, 5, 4, seed=7)
    torch.save(cost, tmp_path / "cost.pt")
    script = ("import json, sys, torch; from instraction.kernels.soft_dtw.cpu import soft_dtw_numba; "
              "print(json.dumps(soft_dtw_numba(torch.load(sys.argv[1]), 0.3).tolist()))")
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}
    env.pop("NUMBA_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cost.pt")], env=env, capture_output=True,
                         text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "numba cannot cache compiled kernels here" in run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == soft_dtw_numba(cost, 0.3).tolist()


@pytest.mark.parametrize("b,n,m,threads", [(5, 70, 130, 7), (5, 130, 70, 3), (37, 100, 64, 2), (3, 64, 64, 2),
                                           (40, 33, 200, 5), (2, 1, 1, 4), (17, 96, 64, 16)])
def test_parallel_plans_are_bit_identical_to_one_thread(monkeypatch, b, n, m, threads):
    """Pairs split over lane blocks, and each pair's DP cut into a wavefront of tiles (forced here by planning for
    more threads than the machine has: the plan, not the thread count, decides the tiles): every cell does the same
    arithmetic, so values and gradients equal the single-tile run bit for bit, with and without per-pair lengths."""
    from instraction.kernels.soft_dtw import cpu

    plan = cpu._plan.__wrapped__
    g = torch.Generator().manual_seed(b + n + m)
    cost = random_cost(b, n, m, seed=n + m)
    weights = torch.linspace(-1.0, 2.0, b, dtype=torch.float64)
    some = (torch.randint(1, n + 1, (b,), generator=g), torch.randint(1, m + 1, (b,), generator=g))
    for lengths in [(None, None), some]:
        monkeypatch.setattr(cpu, "_plan", lambda *shape: plan(*shape[:3], 1))
        one = _run(soft_dtw_numba, cost, 0.1, *lengths, weights)
        monkeypatch.setattr(cpu, "_plan", lambda *shape: plan(*shape[:3], threads))
        many = _run(soft_dtw_numba, cost, 0.1, *lengths, weights)
        torch.testing.assert_close(many, one, rtol=0, atol=0)
        want = _run(soft_dtw_torch, cost, 0.1, *lengths, weights)
        torch.testing.assert_close(many, want, rtol=1e-9, atol=1e-11)


def test_plan_splits_pairs_first_then_tiles():
    from instraction.kernels.soft_dtw.cpu import _LANES, _TILE_MIN_SIDE, _plan

    nc, lanes, rows, cols = _plan(256, 32, 12, 2)  # many pairs: two lane blocks, no tiles
    assert (nc, lanes) == (2, 128) and rows.tolist() == [0, 32] and cols.tolist() == [0, 12]
    nc, lanes, rows, cols = _plan(8, 512, 512, 2)  # one lane block: a wavefront of 2 x 8 tiles
    assert (nc, lanes) == (1, _LANES) and len(rows) == 3 and len(cols) == 9
    nc, lanes, rows, cols = _plan(33, 96, 4000, 8)  # 3 lane blocks for 8 threads: 3 x 12 tiles, 3 along the short side
    assert nc == 3 and len(rows) == 4 and len(cols) == 13
    for b, n, m, threads in [(8, 20, 500, 4), (1, 64, 64, 1), (300, 128, 128, 4)]:  # too thin / one thread / many pairs
        _, _, rows, cols = _plan(b, n, m, threads)
        assert len(rows) == len(cols) == 2
    for b, n, m, threads in [(33, 96, 4000, 8), (1, 1000, 70, 16), (100, 3, 3, 3), (80, 5, 5, 4), (17, 9, 9, 2)]:
        nc, lanes, rows, cols = _plan(b, n, m, threads)
        padded = -(-b // _LANES) * _LANES
        assert lanes % _LANES == 0 and nc <= threads and (nc - 1) * lanes < padded <= nc * lanes
        for edges, size in ((rows, n), (cols, m)):
            assert edges[0] == 0 and edges[-1] == size and (np.diff(edges) > 0).all()
            assert len(edges) == 2 or np.diff(edges).min() >= _TILE_MIN_SIDE


def test_threads_follow_the_process_cpu_budget():
    """A Ray worker of one CPU runs torch on one thread (OMP_NUM_THREADS=1): soft-DTW must not start more threads,
    nor start numba's threading layer, whose OpenMP pool raised torch's own thread count (it shares the runtime).
    With a budget of two, the layer starts and torch's count stays. Fresh processes: the layer starts once each."""
    import subprocess
    import sys

    probe = (
        "import torch\n"
        "from instraction import kernels\n"
        "from instraction.kernels.soft_dtw.cpu import thread_budget\n"
        "before = torch.get_num_threads()\n"
        "for shape in ((64, 8, 4), (5, 130, 70)):\n"
        "    kernels.soft_dtw(torch.rand(*shape, requires_grad=True), 0.1, backend='numba').sum().backward()\n"
        "import numba.np.ufunc.parallel as layer\n"
        "print(before, torch.get_num_threads(), thread_budget(), bool(layer._is_initialized))\n"
    )
    for threads, started in ((1, False), (2, True)):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": "2"}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        before, after, budget, layer = out.stdout.split()[-4:]
        assert (int(before), int(after), int(budget)) == (threads, threads, threads)
        assert layer == str(started)
