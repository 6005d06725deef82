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
from instraction.losses.distill import gather_for_both

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


def _both(x: dict, shared: bool) -> dict:
    """Contrastive + distillation summed, their features gathered per loss or once for both (``gather_for_both``,
    as the model does): the value, the gradients, and how many collectives of each kind ran."""
    leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in x.items()}
    calls = {"all_gather": 0, "all_reduce": 0}
    originals = {name: getattr(dist, name) for name in calls}

    def counted(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return call

    for name in calls:
        setattr(dist, name, counted(name))
    try:
        gathered = gather_for_both(leaves["video"], leaves["text"], leaves["teacher"], leaves["has_teacher"]) \
            if shared else {}
        loss = ContrastiveLoss()(leaves["video"], leaves["text"], leaves["scale"], leaves["neg"], leaves["neg_mask"],
                                 gathered.get("contrastive"))
        loss = loss + DistillLoss(alpha=0.4)(leaves["video"], leaves["teacher"], leaves["text"], leaves["scale"],
                                             leaves["has_teacher"], gathered.get("distill"))
        loss.backward()
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return {"loss": loss.detach(), "calls": calls,
            **{k: v.grad for k, v in leaves.items() if v.is_floating_point() and v.grad is not None}}


def _worker(rank: int, port: int, path: str) -> None:
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x = _inputs()
        rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        local = {k: (v if k == "scale" else v[rows]) for k, v in x.items()}
        torch.save({**_losses(local), "separate": _both(local, False), "shared": _both(local, True)},
                   f"{path}/rank{rank}.pt")
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


def test_one_gather_shared_by_both_losses_gives_the_same_values_and_gradients(tmp_path):
    """The model gathers the clip, caption and teacher embeddings once for the contrastive and distillation losses
    (``gather_for_both``): the same loss and gradients on every rank as each loss gathering its own, with one
    all-gather and one backward all-reduce instead of six gathers (two of them the same tensors) and five."""
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        separate, shared = got["separate"], got["shared"]
        assert torch.allclose(shared["loss"], separate["loss"], atol=1e-12)
        for key in ("video", "text", "teacher", "neg", "scale"):
            assert torch.allclose(shared[key], separate[key], atol=1e-12), (rank, key)
        assert separate["calls"] == {"all_gather": 6, "all_reduce": 5}
        assert shared["calls"] == {"all_gather": 1, "all_reduce": 1}
