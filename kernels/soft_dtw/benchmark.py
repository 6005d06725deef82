"""Soft-DTW benchmarks, each against its baselines in the same process (this machine is shared and noisy).

    python jobs/benchmark.py soft_dtw                       # CPU: numba + torch backends vs tslearn, pysdtw
    python jobs/benchmark.py soft_dtw --dtype float32       # the same inputs in float32 (no 1e-6 check)
    python jobs/benchmark.py soft_dtw --gpu                 # = run_gpu (also run by `jobs/benchmark.py kernels`)
    python jobs/benchmark.py soft_dtw --gpu --sdtw-lengths 64 256 --sdtw-batch 128

CPU: forward+backward of `kernels.soft_dtw` with backend "auto" (= the numba backend on CPU, column "ours") and
backend "torch" (column "torch") beside tslearn's SoftDTWLossPyTorch and pysdtw's CPU (numba) soft-DTW on the same cost matrices (gamma 0.1), at (B=256, 32x12) - the paper's K x verbs regime -,
(64, 128x128) and (8, 512x512). The three take turns, `--rounds` times, each turn one untimed call (torch's OpenMP
pool and numba's pool spin-wait after a parallel region, stealing the cores from whoever runs next) and one timed
call; the table shows the median wall time of each, the speedup of ours and of the torch backend over the best
peer (goal, for ours: 10x, 3x, 1x), and the largest value and gradient differences. Every implementation is run
once before timing, so numba's compilation (ours and the peers') is excluded.
Both peers hand their float64 results back through float32 (`torch.Tensor(ndarray)`), so against them values can
only agree to ~6e-8 |R|: in float64 the check is |dvalue| <= 1e-6 max(1, |R|) against both, and |dvalue| <= 1e-9
against pysdtw's float64 DP itself (its numba `compute_softdtw`, before that rounding); non-zero exit otherwise.
Needs the `bench` extra (tslearn, pysdtw). Torch and numba run on `--threads 1` by default: the comparison is work
per call, and it stays reproducible on a shared machine, where every intra-op parallel region waits for a
descheduled thread (at load > #cores the 2-thread timings of all three inflate 10-100x, ours most: it issues tens of
parallel regions per call, numba one or two). `--threads 0` keeps the libraries' defaults.

GPU (run_gpu): B=512 pairs of L x L (L in 64, 256, 1024, 4096; B is lowered where the memory would not fit and
the table says so), forward+backward of the Triton kernels vs pysdtw's numba-CUDA kernel and the torch backend on
the GPU: CUDA-event time and peak memory. Without CUDA it says so and runs an interpreter correctness check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

CPU_SHAPES = [(256, 32, 12, 10.0), (64, 128, 128, 3.0), (8, 512, 512, 1.0)]  # B, N, M, speedup goal
GPU_LENGTHS = [64, 256, 1024, 4096]


def random_cost(batch: int, n: int, m: int, seed: int = 0, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Cosine-distance-like costs in [0, 2] (the DTW-Align regime), reproducible; shared with the tests."""
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.rand(batch, n, m, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


def _peers_cpu(gamma: float) -> dict:
    """name -> fn(cost [B,N,M] leaf) -> values [B], for the peers that are installed."""
    peers = {}
    try:
        from tslearn.metrics import SoftDTWLossPyTorch

        # dist_func hands the cost matrix through (a copy: tslearn writes +inf into it for global constraints)
        tslearn_loss = SoftDTWLossPyTorch(gamma=gamma, dist_func=lambda x, y: x.clone())
        peers["tslearn"] = lambda c: tslearn_loss(c, c.new_empty(1, 1, 1).expand(c.shape[0], 1, c.shape[2]))
    except ImportError as err:
        print(f"tslearn unavailable ({err}); pip install -e '.[bench]'")
    try:
        import pysdtw

        pysdtw_cpu = pysdtw.SoftDTW(gamma=gamma, dist_func=lambda x, y: x, use_cuda=False)
        peers["pysdtw"] = lambda c: pysdtw_cpu(c, c.new_empty(1, 1, 1).expand(c.shape[0], c.shape[2], c.shape[2]))
    except ImportError as err:
        print(f"pysdtw unavailable ({err}); pip install -e '.[bench]'")
    return peers


def _pysdtw_float64(cost: torch.Tensor, gamma: float) -> torch.Tensor:
    """pysdtw's numba DP in float64, read before its float32 round trip: R[b, N, M]."""
    from pysdtw.sdtw_cpu import compute_softdtw

    b, n, m = cost.shape
    lengths = torch.tensor([[n, m]] * b).numpy()
    return torch.from_numpy(compute_softdtw(cost.double().numpy(), lengths, gamma, 0.0)[:, n, m])


def _fwd_bwd(fn, cost: torch.Tensor):
    """(values, gradient of their sum, seconds) of one forward+backward."""
    leaf = cost.detach().clone().requires_grad_()
    start = time.perf_counter()
    values = fn(leaf)
    values.sum().backward()
    return values.detach(), leaf.grad, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=9, help="round-robin repetitions per shape")
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads (0: library defaults)")
    parser.add_argument("--gpu", action="store_true", help="run the GPU benchmark (run_gpu) instead")
    ns, rest = parser.parse_known_args(argv)
    if ns.gpu:
        return run_gpu(rest)
    numba_threads = "-"
    try:
        import numba

        if ns.threads:
            numba.set_num_threads(ns.threads)
        numba_threads = numba.get_num_threads()
    except ImportError:
        pass
    if ns.threads:
        torch.set_num_threads(ns.threads)
    from instraction import kernels
    from instraction.kernels.soft_dtw.reference import soft_dtw_torch

    dtype = getattr(torch, ns.dtype)
    ours = {"ours": lambda c: kernels.soft_dtw(c, ns.gamma), "torch": lambda c: soft_dtw_torch(c, ns.gamma)}
    impls = {**ours, **_peers_cpu(ns.gamma)}
    print(f"soft-DTW fwd+bwd, CPU, threads: torch {torch.get_num_threads()} / numba {numba_threads}, {ns.dtype}, "
          f"gamma={ns.gamma}, median of {ns.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    header = f"{'B x N x M':>16} " + " ".join(f"{name + ' ms':>11}" for name in impls) + \
        f" {'speedup':>8} {'torch':>6} {'goal':>5}  max|dvalue| / max|dgrad| vs each peer (of ours)"
    print(header)
    ok = True
    for b, n, m, goal in CPU_SHAPES:
        cost = random_cost(b, n, m, seed=n * m, dtype=dtype)
        results = {name: _fwd_bwd(fn, cost) for name, fn in impls.items()}  # warm-up (numba compiles here)
        times = {name: [] for name in impls}
        for r in range(ns.rounds):
            names = list(impls)[r % len(impls):] + list(impls)[:r % len(impls)]
            for name in names:  # an untimed call first: the other library's thread pool may still be spinning
                _fwd_bwd(impls[name], cost)
                times[name].append(_fwd_bwd(impls[name], cost)[2])
        median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        peers = [name for name in impls if name not in ours]
        best = min((median[name] for name in peers), default=float("nan"))
        diffs = []
        ours_v = results["ours"][0].double()
        for name in peers + ["torch"]:
            dv = (results[name][0].double() - ours_v).abs().max().item()
            dg = (results[name][1].double() - results["ours"][1].double()).abs().max().item()
            diffs.append(f"{name} {dv:.1e} / {dg:.1e}")
            ok &= dtype != torch.float64 or dv <= 1e-6 * max(1.0, ours_v.abs().max().item())
        if dtype == torch.float64 and "pysdtw" in peers:
            dv = (_pysdtw_float64(cost, ns.gamma) - ours_v).abs().max().item()
            diffs.append(f"pysdtw-f64 DP {dv:.1e}")
            ok &= dv <= 1e-9
        print(f"{f'{b} x {n}x{m}':>16} " + " ".join(f"{median[name]:11.2f}" for name in impls) +
              f" {best / median['ours']:7.2f}x {best / median['torch']:5.2f}x {goal:4.0f}x  " + ", ".join(diffs))
    if dtype == torch.float64:
        print("values agree with every peer to 1e-6:", "yes" if ok else "NO")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------------- GPU
def _interpreter_check() -> int:
    """Triton kernels in the interpreter vs the torch backend on small odd shapes (correctness only)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from instraction.kernels.soft_dtw.reference import soft_dtw_torch
    from instraction.kernels.soft_dtw.triton import soft_dtw_triton

    worst = 0.0
    for b, n, m in [(4, 9, 7), (3, 33, 17), (2, 1, 5)]:
        cost = random_cost(b, n, m, seed=b + n + m, dtype=torch.float32)
        lengths_n, lengths_m = torch.randint(1, n + 1, (b,)), torch.randint(1, m + 1, (b,))
        runs = []
        for fn, c in ((soft_dtw_triton, cost), (soft_dtw_torch, cost.double())):
            leaf = c.clone().requires_grad_()
            value = fn(leaf, 0.1, lengths_n, lengths_m)
            value.sum().backward()
            runs.append((value.double(), leaf.grad.double()))
        dv = (runs[0][0] - runs[1][0]).abs().max().item()
        dg = (runs[0][1] - runs[1][1]).abs().max().item()
        worst = max(worst, dv, dg)
        print(f"  interpreter {b} x {n}x{m}: max|dvalue| {dv:.1e}  max|dgrad| {dg:.1e}")
    print("interpreter check:", "ok" if worst < 1e-4 else "FAILED")
    return 0 if worst < 1e-4 else 1


def _cuda_time(fn, cost: torch.Tensor, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(median ms, peak MiB above the input, values) of fwd+bwd on the GPU."""
    _fwd_bwd(fn, cost)  # warm-up: compiles and autotunes (whose benchmarking buffers must not count as peak memory)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    values = _fwd_bwd(fn, cost)[0]
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        leaf = cost.detach().clone().requires_grad_()
        start.record()
        fn(leaf).sum().backward()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), peak, values


def run_gpu(argv: list[str] | None = None) -> int:
    # flags are prefixed: `jobs/benchmark.py kernels` hands the banded-attention flags (--batch, ...) here as well
    parser = argparse.ArgumentParser(description="soft-DTW GPU benchmark (see kernels/soft_dtw/benchmark.py)")
    parser.add_argument("--sdtw-batch", dest="batch", type=int, default=512)
    parser.add_argument("--sdtw-lengths", dest="lengths", type=int, nargs="+", default=GPU_LENGTHS)
    parser.add_argument("--sdtw-gamma", dest="gamma", type=float, default=0.1)
    parser.add_argument("--sdtw-repeats", dest="repeats", type=int, default=5)
    parser.add_argument("--sdtw-memory-fraction", dest="memory_fraction", type=float, default=0.5,
                        help="of free GPU memory, per implementation")
    parser.add_argument("--sdtw-torch-max-length", dest="torch_max", type=int, default=1024,
                        help="skip the (slow, memory-hungry) torch backend above this length")
    ns, _ = parser.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("soft-DTW GPU benchmark needs a CUDA GPU: no timings; Triton interpreter correctness check instead")
        return _interpreter_check()
    from instraction.kernels.soft_dtw.reference import soft_dtw_torch
    from instraction.kernels.soft_dtw.triton import soft_dtw_triton, tuned_configs

    # name -> (fwd fn, bytes per cell: cost, grad and saved state; triton: 2 fp32 weights, torch: ~9 skewed buffers)
    impls = {"triton": (lambda c: soft_dtw_triton(c, ns.gamma), 20),
             "torch": (lambda c: soft_dtw_torch(c, ns.gamma), 72)}
    try:
        import numpy as np
        import pysdtw

        if not hasattr(np, "row_stack"):  # numpy >= 2.5 dropped it; the numba-cuda that pysdtw runs on still calls it
            np.row_stack = np.vstack
        sdtw_cuda = pysdtw.SoftDTW(gamma=ns.gamma, dist_func=lambda x, y: x, use_cuda=True)
        impls["pysdtw"] = (lambda c: sdtw_cuda(c, c.new_empty(1, 1, 1).expand(c.shape[0], c.shape[2], c.shape[2])), 28)
    except Exception as err:  # numba-cuda missing or no driver support: say so, keep going
        print(f"pysdtw CUDA unavailable: {err}")
    print(f"soft-DTW fwd+bwd on {torch.cuda.get_device_name()}, float32, gamma={ns.gamma}, median of {ns.repeats}")
    print(f"{'L':>5} {'B':>5} " + " ".join(f"{name + ' ms':>11} {name + ' MiB':>11}" for name in impls) +
          "  speedup vs pysdtw / torch, max|dvalue|")
    for length in ns.lengths:
        budget = ns.memory_fraction * torch.cuda.mem_get_info()[0]
        batch = max(1, min(ns.batch, int(budget // (impls["triton"][1] * length * length))))
        cost = random_cost(batch, length, length, seed=length, dtype=torch.float32, device="cuda")
        row, out = {}, {}
        for name, (fn, cell_bytes) in impls.items():
            if name == "torch" and length > ns.torch_max:
                print(f"  torch skipped at L={length} (--sdtw-torch-max-length {ns.torch_max})")
                continue
            if cell_bytes * batch * length * length > budget:
                need = cell_bytes * batch * length ** 2 / 2 ** 30
                print(f"  {name} skipped at L={length}, B={batch}: needs ~{need:.0f} GiB")
                continue
            try:
                row[name] = _cuda_time(fn, cost, ns.repeats)
            except Exception as err:  # e.g. out of memory, or pysdtw's kernel refusing a shape
                print(f"  {name} at L={length}, B={batch}: {type(err).__name__}: {err}")
                torch.cuda.empty_cache()
        cells = " ".join(f"{row[n][0]:11.2f} {row[n][1]:11.0f}" if n in row else f"{'-':>11} {'-':>11}" for n in impls)
        if "triton" in row:
            for name in ("pysdtw", "torch"):
                if name in row:
                    dv = (row[name][2].double() - row["triton"][2].double()).abs().max().item()
                    out[name] = f"{row[name][0] / row['triton'][0]:.1f}x ({dv:.1e})"
        print(f"{length:5d} {batch:5d} {cells}  " + ", ".join(f"{k} {v}" for k, v in out.items()))
        print("        autotuned: " + ", ".join(f"{k} {v}" for k, v in tuned_configs().items()))
        del cost
        torch.cuda.empty_cache()
    return 0
