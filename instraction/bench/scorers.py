"""Scorers: what :func:`instraction.bench.evaluate.evaluate` asks of a model, and adapters for the models we have.

    scorer = InstrActionScorer(model, tokenizer, cfg.data)           # a (trained or untrained) InstrAction model
    scorer = BackboneScorer.from_config(cfg, tokenizer)              # zero-shot bare towers (+ pretrained weights)
    config_yaml, weights = resolve_checkpoint("runs/synthkitchen-tiny-...")  # run / checkpoint dir / .safetensors
    model = load_instraction(load_config(config_yaml), weights, tokenizer.vocab_size)

A :class:`Scorer` maps normalised video [B,T,3,H,W] and strings to embeddings; every score is a cosine similarity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


@runtime_checkable
class Scorer(Protocol):
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """video float [B,T,3,H,W] (normalised) -> [B,E]."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """N strings -> [N,E]."""


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class InstrActionScorer:
    """An :class:`instraction.model.instraction.InstrActionModel` (trained or not) behind the Scorer protocol. Puts
    the model in eval mode; captions are tokenised like training (``data.max_text_len``)."""

    def __init__(self, model: torch.nn.Module, tokenizer, data_cfg):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_len = data_cfg.max_text_len
        self.device = _device_of(model)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.model.encode_video(video.to(self.device)).float().cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenizer(list(texts), self.max_len)
        return self.model.encode_text(ids.to(self.device), mask.to(self.device)).float().cpu()

    @torch.no_grad()
    def frame_embeddings(self, video: torch.Tensor) -> torch.Tensor:
        """[B,T,E]: raw per-frame embeddings (Fig. 7/8 baseline)."""
        return self.model.frame_embeddings(video.to(self.device)).float().cpu()

    @torch.no_grad()
    def action_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """[B,K,E]: the Action Perceiver's latents, in time order."""
        return self.model.action_tokens(video.to(self.device)).float().cpu()


class BackboneScorer:
    """Zero-shot baseline: the bare backbone towers. Video = the video tower's pooled output, text = the text tower's
    pooled state, each through the tower's own projection when it has one (a CLIP/ViCLIP checkpoint does).

    Both must land in one space: a tower pair without projections needs equal widths, else ValueError.
    """

    def __init__(self, video_tower: torch.nn.Module, text_tower: torch.nn.Module, tokenizer, data_cfg):
        self.video, self.text = video_tower.eval(), text_tower.eval()
        self.tokenizer, self.max_len = tokenizer, data_cfg.max_text_len
        self.device = _device_of(video_tower)
        dims = (self._dim(video_tower, "proj"), self._dim(text_tower, "text_projection"))
        if dims[0] != dims[1]:
            raise ValueError(f"zero-shot scoring needs video and text in one space: video tower gives {dims[0]}, "
                             f"text tower {dims[1]} (load a checkpoint with projections, or equal widths)")

    @staticmethod
    def _dim(tower: torch.nn.Module, proj: str) -> int:
        weight = getattr(tower, proj, None)
        return int(weight.shape[1]) if weight is not None else int(tower.width)

    @classmethod
    def from_config(cls, cfg, tokenizer, device: str | torch.device = "cpu") -> "BackboneScorer":
        """Towers of ``cfg.model`` with ``cfg.model.pretrained`` loaded when a path is set (random otherwise)."""
        from instraction.model.backbone import build_text_tower, build_video_tower
        from instraction.model.loaders import load_pretrained

        torch.manual_seed(cfg.run.seed)
        video, text = build_video_tower(cfg.model.video), build_text_tower(cfg.model.text, tokenizer.vocab_size)
        if cfg.model.pretrained.path:
            report = load_pretrained(cfg.model.pretrained, video, text)
            log.info("zero-shot backbone loaded: %s", report)
        return cls(video.to(device), text.to(device), tokenizer, cfg.data)

    def _project(self, tower, x: torch.Tensor) -> torch.Tensor:
        return tower.project(x) if hasattr(tower, "project") else x

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        _, pooled = self.video(video.to(self.device))
        return F.normalize(self._project(self.video, pooled), dim=-1).float().cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenizer(list(texts), self.max_len)
        _, pooled = self.text(ids.to(self.device), mask.to(self.device))
        return F.normalize(self._project(self.text, pooled), dim=-1).float().cpu()

    @torch.no_grad()
    def frame_embeddings(self, video: torch.Tensor) -> torch.Tensor:
        """[B,T,E]: the tower's tokens mean-pooled per frame, projected."""
        tokens, _ = self.video(video.to(self.device))
        return F.normalize(self._project(self.video, tokens.mean(dim=2)), dim=-1).float().cpu()


# --------------------------------------------------------------------------------------------------- checkpoints


def resolve_checkpoint(path: str | Path) -> tuple[Optional[Path], Path]:
    """(config.yaml or None, model.safetensors) of a pretrain run directory, a checkpoint directory or a weights file.

    The config is looked up beside the weights and up to two levels above (a Ray Train checkpoint sits in
    ``<storage>/<run>/checkpoint_<n>``; the run directory holds the resolved ``config.yaml``).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        weights = p / WEIGHTS_FILE
        if not weights.exists():
            found = sorted(p.glob(f"checkpoint_*/{WEIGHTS_FILE}"))
            if not found:
                raise FileNotFoundError(f"no {WEIGHTS_FILE} in {p} (nor in a checkpoint_* directory below it)")
            weights = found[-1]
    elif p.is_file():
        weights = p
    else:
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    for folder in (weights.parent, weights.parent.parent, weights.parent.parent.parent):
        if (folder / CONFIG_FILE).exists():
            return folder / CONFIG_FILE, weights
    return None, weights


def load_instraction(cfg, weights: str | Path, vocab_size: int, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An InstrActionModel of ``cfg`` with the exported weights (strict: a checkpoint of another shape fails loudly).
    ``weights``: a local path or a URI (s3://, through ``cfg.data.s3``: a run directory on object storage)."""
    from safetensors.torch import load, load_file

    from instraction.model.instraction import build_model
    from instraction.storage import is_remote, local_path, open_filesystem

    model = build_model(cfg, vocab_size)
    if is_remote(weights):
        fs, path = open_filesystem(str(weights), cfg.data.s3)
        with fs.open(path, "rb") as f:
            state = load(f.read())
    else:
        state = load_file(local_path(weights), device="cpu")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{weights} does not match the configured model: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}")
    model.load_state_dict(state)
    return model.to(device).eval()
