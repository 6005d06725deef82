"""Soft-DTW benchmarks, each against its baselines in the same process (this machine is shared and noisy).

    python jobs/benchmark.py soft_dtw                       # CPU: numba + torch backends vs tslearn, pysdtw
    python jobs/benchmark.py soft_dtw --dtype float32       # the same inputs in float32 (no 1e-6 check)
    python jobs/benchmark.py soft_dtw --gpu                 # = run_gpu (also run by `jobs/benchmark.py kernels`)
    python jobs/benchmark.py soft_dtw --gpu --sdtw-lengths 64 256 --sdtw-batch 128

CPU: forward+backward of `kernels.soft_dtw` with backend "auto" (= the numba backend on CPU, column "ours") and
backend "torch" (column "torch") beside tslearn's SoftDTWLossPyTorch and pysdtw's CPU (numba) soft-DTW on the same
cost matrices (gamma 0.1), at (B=256, 32x12) - the paper's K x verbs regime -, (64, 128x128) and (8, 512x512), each
at every thread setting of `--threads` (default: 0 = each library's default, i.e. numba's and torch's own thread
counts (the core count), then 1 thread for all), in one process: all (setting, implementation) combinations take
turns, `--rounds` times, each turn one untimed call (torch's OpenMP pool and numba's pool spin-wait after a parallel
region, stealing the cores from whoever runs next) and one timed call; a row per shape and setting shows the median
wall time of each, the speedup of ours and of the torch backend over the best peer at the same setting (goal, for
ours: 10x, 3x, 1x), and the largest value and gradient differences. Every implementation is run once before timing,
so numba's compilation (ours and the peers') is excluded.
Both peers hand their float64 results back through float32 (`torch.Tensor(ndarray)`), so against them values can
only agree to ~6e-8 |R|: in float64 the check is |dvalue| <= 1e-6 max(1, |R|) against both, and |dvalue| <= 1e-9
against pysdtw's float64 DP itself (its numba `compute_softdtw`, before that rounding); non-zero exit otherwise.
Needs the `bench` extra (tslearn, pysdtw). On a shared machine the default-thread timings depend on the load: every
parallel region waits for a descheduled thread (at load > #cores the multi-thread timings of all three inflate
10-100x, the torch backend's most: it issues tens of parallel regions per call, numba one or a few).

GPU (run_gpu): first the model's shape (B=512 pairs of K=16 latents x 8 verb phrases: the register kernels), fwd+bwd
of the Triton backend (and, for comparison, the wavefront kernels forced, the torch backend and pysdtw-CUDA) timed
two ways: back-to-back (`triton.testing.do_bench`, median; GPU time per call with the L2 flushed between calls) and
one synchronised call (wall time from a synchronised start to the end of a synchronize, median), with cells/ns
(B N M over the back-to-back time). Then B=512 pairs of L x L (L in 64, 256, 1024, 4096; B is lowered where the
memory would not fit and the table says so), forward+backward of the Triton kernels vs pysdtw's numba-CUDA kernel and
the torch backend: CUDA-event time of one call, cells/ns and peak memory; the repetitions shrink where one call is
slow (`--sdtw-seconds` per implementation and shape) so the whole run stays within ~1.5 min on an H200. Without CUDA
it says so and runs an interpreter correctness check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

CPU_SHAPES = [(256, 32, 12, 10.0), (64, 128, 128, 3.0), (8, 512, 512, 1.0)]  # B, N, M, speedup goal
GPU_LENGTHS = [64, 256, 1024, 4096]
MODEL_SHAPE = (512, 16, 8)  # per-GPU batch x K latents x verb phrases


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
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                        help="torch and numba thread settings to compare at (0: each library's default)")
    parser.add_argument("--gpu", action="store_true", help="run the GPU benchmark (run_gpu) instead")
    ns, rest = parser.parse_known_args(argv)
    if ns.gpu:
        return run_gpu(rest)
    try:
        import numba

        numba_default = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        numba, numba_default = None, 0
    torch_default = torch.get_num_threads()
    settings = {t: (t or torch_default, t or numba_default) for t in ns.threads}  # setting -> (torch, numba)

    def use(setting):
        torch.set_num_threads(settings[setting][0])
        if numba is not None:
            numba.set_num_threads(settings[setting][1])

    from instraction import kernels
    from instraction.kernels.soft_dtw.reference import soft_dtw_torch

    dtype = getattr(torch, ns.dtype)
    ours = {"ours": lambda c: kernels.soft_dtw(c, ns.gamma), "torch": lambda c: soft_dtw_torch(c, ns.gamma)}
    impls = {**ours, **_peers_cpu(ns.gamma)}
    label = {t: f"{'default' if t == 0 else t} ({settings[t][0]}/{settings[t][1]})" for t in ns.threads}
    print(f"soft-DTW fwd+bwd, CPU, {os.cpu_count()} cores, threads (torch/numba): "
          + ", ".join(label.values()) + f"; {ns.dtype}, gamma={ns.gamma}, median of {ns.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f}")
    header = f"{'threads':>14} {'B x N x M':>13} " + " ".join(f"{name + ' ms':>11}" for name in impls) + \
        f" {'speedup':>8} {'torch':>6} {'goal':>5}  max|dvalue| / max|dgrad| vs each peer (of ours)"
    print(header)
    ok = True
    peers = [name for name in impls if name not in ours]
    for b, n, m, goal in CPU_SHAPES:
        cost = random_cost(b, n, m, seed=n * m, dtype=dtype)
        use(ns.threads[0])
        results = {name: _fwd_bwd(fn, cost) for name, fn in impls.items()}  # warm-up (numba compiles here)
        combos = [(t, name) for t in ns.threads for name in impls]
        times = {combo: [] for combo in combos}
        for r in range(ns.rounds):
            for t, name in combos[r % len(combos):] + combos[:r % len(combos)]:
                use(t)  # an untimed call first: the other library's thread pool may still be spinning
                _fwd_bwd(impls[name], cost)
                times[t, name].append(_fwd_bwd(impls[name], cost)[2])
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
        for k, t in enumerate(ns.threads):
            median = {name: 1e3 * statistics.median(times[t, name]) for name in impls}
            best = min((median[name] for name in peers), default=float("nan"))
            print(f"{label[t]:>14} {f'{b} x {n}x{m}':>13} " + " ".join(f"{median[name]:11.2f}" for name in impls) +
                  f" {best / median['ours']:7.2f}x {best / median['torch']:5.2f}x {goal:4.0f}x  " +
                  (", ".join(diffs) if k == 0 else ""))
    use(ns.threads[0])
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
    for b, n, m in [(4, 9, 7), (3, 33, 17), (2, 1, 5), (2, 40, 36)]:  # register kernels; the last: wavefront
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


def _cuda_time(fn, cost: torch.Tensor, repeats: int, seconds: float) -> tuple[float, float, torch.Tensor]:
    """(median ms, peak MiB above the input, values) of fwd+bwd on the GPU; at most `repeats` timed calls, fewer
    where they would take more than `seconds`."""
    _fwd_bwd(fn, cost)  # warm-up: compiles and autotunes (whose benchmarking buffers must not count as peak memory)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    values = _fwd_bwd(fn, cost)[0]
    torch.cuda.synchronize()
    once = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    times = []
    for _ in range(max(1, min(repeats, int(seconds / once)))):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        leaf = cost.detach().clone().requires_grad_()
        start.record()
        fn(leaf).sum().backward()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), peak, values


def _both_timings(fn, cost: torch.Tensor, calls: int = 50) -> tuple[float, float]:
    """(back-to-back ms: do_bench's median, one synchronised call's ms: median wall time) of fwd+bwd."""
    import triton.testing

    leaf = cost.detach().clone().requires_grad_()

    def step():
        fn(leaf).sum().backward()

    step()
    torch.cuda.synchronize()
    back_to_back = triton.testing.do_bench(step, warmup=25, rep=200, grad_to_none=[leaf], return_mode="median")
    walls = []
    for _ in range(calls):
        leaf.grad = None
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    return back_to_back, 1e3 * statistics.median(walls)


def _model_shape(impls: dict, gamma: float, wavefront: bool = True) -> None:
    """The model's shape: Triton (register kernels), the wavefront kernels forced (unless not `wavefront`: their
    autotuning at this shape compiles ~20 configs), and the other implementations."""
    from instraction.kernels.soft_dtw import triton as sdtw_triton

    b, n, m = MODEL_SHAPE
    cost = random_cost(b, n, m, seed=1, dtype=torch.float32, device="cuda")

    def forced(c):
        small, sdtw_triton._SMALL_CELLS = sdtw_triton._SMALL_CELLS, 0
        try:
            return sdtw_triton.soft_dtw_triton(c, gamma)
        finally:
            sdtw_triton._SMALL_CELLS = small

    runs = {"triton": impls["triton"][0], **({"triton-wavefront": forced} if wavefront else {}),
            **{name: fn for name, (fn, _) in impls.items() if name != "triton"}}
    print(f"model shape B={b}, {n}x{m} (register kernels: {sdtw_triton.is_small(n, m)}), fwd+bwd float32, "
          f"gamma={gamma}: back-to-back (do_bench median) / one synchronised call, cells/ns of the first")
    first = None
    for name, fn in runs.items():
        try:
            start = time.perf_counter()
            b2b, sync = _both_timings(fn, cost)
            first = first or (b2b, sync)
            took = time.perf_counter() - start
            print(f"  {name:>16}: {1e3 * b2b:9.1f} us / {1e3 * sync:9.1f} us  {b * n * m / (1e6 * b2b):6.2f} cells/ns"
                  f"  ({b2b / first[0]:.3g}x / {sync / first[1]:.3g}x triton's time; {took:.1f} s)")
        except Exception as err:  # e.g. pysdtw refusing a shape
            print(f"  {name}: {type(err).__name__}: {err}")
    values = {name: _fwd_bwd(fn, cost)[:2] for name, fn in runs.items() if name in ("triton", "torch")}
    if len(values) == 2:
        dv = (values["triton"][0].double() - values["torch"][0].double()).abs().max().item()
        dg = (values["triton"][1].double() - values["torch"][1].double()).abs().max().item()
        print(f"  triton vs torch backend: max|dvalue| {dv:.1e}, max|dgrad| {dg:.1e}")


def run_gpu(argv: list[str] | None = None) -> int:
    # flags are prefixed: `jobs/benchmark.py kernels` hands the banded-attention flags (--batch, ...) here as well
    parser = argparse.ArgumentParser(description="soft-DTW GPU benchmark (see kernels/soft_dtw/benchmark.py)")
    parser.add_argument("--sdtw-batch", dest="batch", type=int, default=512)
    parser.add_argument("--sdtw-lengths", dest="lengths", type=int, nargs="+", default=GPU_LENGTHS)
    parser.add_argument("--sdtw-gamma", dest="gamma", type=float, default=0.1)
    parser.add_argument("--sdtw-repeats", dest="repeats", type=int, default=5)
    parser.add_argument("--sdtw-no-wavefront", dest="wavefront", action="store_false",
                        help="skip the wavefront kernels' line at the model shape (saves their autotuning there)")
    parser.add_argument("--sdtw-seconds", dest="seconds", type=float, default=2.0,
                        help="timed calls per implementation and length stop after about this long")
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
    begin = time.perf_counter()
    _model_shape(impls, ns.gamma, ns.wavefront)
    print(f"soft-DTW fwd+bwd on {torch.cuda.get_device_name()}, float32, gamma={ns.gamma}, median of <= {ns.repeats} "
          f"calls (fewer past {ns.seconds:g} s), CUDA events per call")
    print(f"{'L':>5} {'B':>5} " + " ".join(f"{name + ' ms':>11} {name + ' MiB':>11}" for name in impls) +
          f" {'cells/ns':>8}  speedup vs pysdtw / torch, max|dvalue|")
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
                row[name] = _cuda_time(fn, cost, ns.repeats, ns.seconds)
            except Exception as err:  # e.g. out of memory, or pysdtw's kernel refusing a shape
                print(f"  {name} at L={length}, B={batch}: {type(err).__name__}: {err}")
                torch.cuda.empty_cache()
        cells = " ".join(f"{row[n][0]:11.2f} {row[n][1]:11.0f}" if n in row else f"{'-':>11} {'-':>11}" for n in impls)
        if "triton" in row:
            for name in ("pysdtw", "torch"):
                if name in row:
                    dv = (row[name][2].double() - row["triton"][2].double()).abs().max().item()
                    out[name] = f"{row[name][0] / row['triton'][0]:.1f}x ({dv:.1e})"
        rate = f"{batch * length ** 2 / (1e6 * row['triton'][0]):8.2f}" if "triton" in row else f"{'-':>8}"
        print(f"{length:5d} {batch:5d} {cells} {rate}  " + ", ".join(f"{k} {v}" for k, v in out.items()) +
              f"  ({time.perf_counter() - begin:.0f} s so far)")
        print("        autotuned: " + ", ".join(f"{k} {v}" for k, v in tuned_configs().items()))
        del cost
        torch.cuda.empty_cache()
    return 0
