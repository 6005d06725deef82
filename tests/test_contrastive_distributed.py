"""Local contrastive + distill losses across 2 gloo ranks equal the single-process loss on the global batch.

    python -m pytest tests/test_contrastive_distributed.py -q      (spawns 2 CPU processes, ~10 s)

Each rank holds half the batch, all-gathers features with gradient and computes its local rows only. Value: the
mean of the per-rank losses is the global loss. Gradient: the all-gather backward sums every rank's gradient into
the owner's features, so rank r's feature gradient is d(sum_r' L_r')/dx_r = W * dL_global/dx_r; DDP / DeepSpeed
then average parameter gradients over W ranks, which gives exactly dL_global/dtheta. The logit scale is
replicated, so its per-rank gradients are averaged the same way.
"""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from instraction.losses import ContrastiveLoss, DistillLoss

WORLD, B, NN, E = 2, 6, 2, 8


def _inputs():
    gen = torch.Generator().manual_seed(0)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=gen, dtype=torch.float64), dim=-1)  # noqa: E731
    return {
        "video": unit(B, E), "text": unit(B, E), "neg": unit(B, NN, E), "teacher": unit(B, E),
        "neg_mask": torch.tensor([[True, False], [False, False], [True, True], [False, True], [True, True],
                                  [False, False]]),
        "has_teacher": torch.tensor([True, False, True, True, False, True]),
        "scale": torch.tensor(7.0, dtype=torch.float64),
    }


def _losses(x: dict) -> dict:
    """Run both losses on the (local or global) inputs; values and gradients per loss."""
    out = {}
    for name in ("contrastive", "distill"):
        leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in x.items()}
        if name == "contrastive":
            loss = ContrastiveLoss(gather_with_grad=True)(leaves["video"], leaves["text"], leaves["scale"],
                                                          leaves["neg"], leaves["neg_mask"])
        else:
            loss = DistillLoss(alpha=0.4)(leaves["video"], leaves["teacher"], leaves["text"], leaves["scale"],
                                          leaves["has_teacher"])
        loss.backward()
        out[name] = {"loss": loss.detach()}
        out[name].update({k: v.grad for k, v in leaves.items() if v.is_floating_point() and v.grad is not None})
    return out


def _worker(rank: int, port: int, path: str) -> None:
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x = _inputs()
        rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        local = {k: (v if k == "scale" else v[rows]) for k, v in x.items()}
        torch.save(_losses(local), f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_loss_across_ranks_equals_global_loss_value_and_gradient(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    reference = _losses(_inputs())  # one process: dist is not initialised here, plain global loss
    for name, ref in reference.items():
        mean_loss = sum(r[name]["loss"] for r in ranks) / WORLD
        assert torch.allclose(mean_loss, ref["loss"], atol=1e-10), name
        for key, grad in ref.items():
            if key == "loss":
                continue
            if key == "scale":  # replicated parameter: DDP's average of the per-rank gradients
                got = sum(r[name][key] for r in ranks) / WORLD
            else:  # sharded features: each rank's gradient is W x the global one (see module docstring)
                got = torch.cat([r[name][key] for r in ranks]) / WORLD
            assert torch.allclose(got, grad, atol=1e-10), (name, key)
    assert {"video", "text", "neg", "scale"} <= set(reference["contrastive"])
    assert {"video", "text", "teacher", "scale"} <= set(reference["distill"])
