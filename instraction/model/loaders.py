"""Checkpoint loaders for the backbone towers: HF CLIP directories and ViCLIP .pth state dicts.

Nothing here unpickles code: safetensors files are read with the safetensors library and ``.pth``/``.bin`` files
with ``torch.load(weights_only=True)``. Each loader renames the checkpoint's keys onto the towers' names
(:mod:`instraction.model.backbone` follows OpenAI CLIP / ViCLIP, so ViCLIP maps by prefix and HF CLIP by a small
table plus q/k/v concatenation), resizes positional embeddings whose length differs (with a warning), keeps the
tower's rows for token ids our tokenizer added (a note), refuses any other shape mismatch with an error naming
the key, and returns a report:

    {"format", "path", "video": {"loaded", "missing", "unexpected"}, "text": {...}, "missing", "unexpected"
     (tower-prefixed), "skipped" (checkpoint keys deliberately unused), "warnings", "notes", "logit_scale",
     "frozen"}
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from instraction.model.backbone import Conv3dVideoTower, ResidualAttentionBlock, VisionTransformer, set_activation
from instraction.model.config import PretrainedConfig

log = logging.getLogger(__name__)

# ours_key -> (checkpoint key it came from, tensor)
Mapped = dict[str, tuple[str, torch.Tensor]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the towers as configured (shape mismatch, unknown format, ...)."""


# ---------------------------------------------------------------------------------------------------------------
# Reading files.


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one weights file (safetensors, or a torch pickle read with weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _read_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and the weights of a ``save_pretrained`` directory (single file or sharded with an index)."""
    config = json.loads((path / "config.json").read_text())
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return config, _read_tensors(path / name)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).exists():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(_read_tensors(path / shard))
            return config, tensors
    raise CheckpointError(f"{path}: no model.safetensors, pytorch_model.bin or shard index beside config.json")


# ---------------------------------------------------------------------------------------------------------------
# Key mapping.

_HF_BLOCK = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
_HF_BLOCK_PARTS = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_TOP = {
    "text_model.embeddings.token_embedding.weight": ("text", "token_embedding.weight", None),
    "text_model.embeddings.position_embedding.weight": ("text", "positional_embedding", None),
    "text_model.final_layer_norm.weight": ("text", "ln_final.weight", None),
    "text_model.final_layer_norm.bias": ("text", "ln_final.bias", None),
    "text_projection.weight": ("text", "text_projection", torch.t),  # Linear [E,C] -> CLIP's x @ proj [C,E]
    "vision_model.embeddings.class_embedding": ("video", "class_embedding", None),
    "vision_model.embeddings.patch_embedding.weight": ("video", "conv1.weight", lambda w: w.unsqueeze(2)),  # (1,p,p)
    "vision_model.embeddings.position_embedding.weight": ("video", "positional_embedding", None),
    "vision_model.pre_layrnorm.weight": ("video", "ln_pre.weight", None),  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": ("video", "ln_pre.bias", None),
    "vision_model.post_layernorm.weight": ("video", "ln_post.weight", None),
    "vision_model.post_layernorm.bias": ("video", "ln_post.bias", None),
    "visual_projection.weight": ("video", "proj", torch.t),
}
_HF_IGNORED = re.compile(r"(^|\.)position_ids$|^logit_scale$")


def map_hf_clip(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Mapped], list[str], list[str]]:
    """HF CLIPModel keys -> ({"video": Mapped, "text": Mapped}, unknown keys, ignored keys).

    HF splits attention into q/k/v Linear layers; nn.MultiheadAttention (and so CLIP, ViCLIP and our towers)
    stores them stacked as in_proj [3C, C] in q, k, v order.
    """
    out: dict[str, Mapped] = {"video": {}, "text": {}}
    unknown, ignored = [], []
    qkv: dict[tuple[str, str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in tensors.items():
        if _HF_IGNORED.search(key):
            ignored.append(key)
        elif key in _HF_TOP:
            tower, ours, fn = _HF_TOP[key]
            out[tower][ours] = (key, fn(value) if fn else value)
        elif m := _HF_BLOCK.match(key):
            side, layer, rest = m.groups()
            tower = "text" if side == "text" else "video"
            prefix = f"transformer.resblocks.{layer}."
            if rest in _HF_BLOCK_PARTS:
                out[tower][prefix + _HF_BLOCK_PARTS[rest]] = (key, value)
            elif q := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                qkv.setdefault((tower, prefix, q.group(2)), {})[q.group(1)] = (key, value)
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for (tower, prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            some = next(iter(parts.values()))[0]
            raise CheckpointError(f"{some}: attention has only {sorted(parts)} of q/k/v projections")
        stacked = torch.cat([parts[n][1] for n in "qkv"], dim=0)
        out[tower][f"{prefix}attn.in_proj_{kind}"] = (parts["q"][0].replace("q_proj", "{q,k,v}_proj"), stacked)
    return out, unknown, ignored


def map_viclip(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Mapped], list[str], list[str]]:
    """ViCLIP keys (``vision_encoder.*``, ``text_encoder.*``, ``temp``) -> per-tower Mapped; names are identical
    below the prefix because the towers copy ViCLIP's (= OpenAI CLIP's) module names."""
    out: dict[str, Mapped] = {"video": {}, "text": {}}
    unknown, ignored = [], []
    for key, value in tensors.items():
        bare = key[len("module."):] if key.startswith("module.") else key  # DDP-wrapped saves
        if bare.startswith("vision_encoder."):
            out["video"][bare[len("vision_encoder."):]] = (key, value)
        elif bare.startswith("text_encoder."):
            out["text"][bare[len("text_encoder."):]] = (key, value)
        elif bare == "temp":
            ignored.append(key)
        else:
            unknown.append(key)
    return out, unknown, ignored


# ---------------------------------------------------------------------------------------------------------------
# Resizing positional embeddings whose length differs from the tower's.


def _resize_grid(table: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """[1+g0^2, C] -> [1+g^2, C]: class row kept, the g0 x g0 grid resampled bicubically (ViT practice)."""
    g0, g = math.isqrt(table.shape[0] - 1), math.isqrt(target[0] - 1)
    if g0 * g0 != table.shape[0] - 1 or g * g != target[0] - 1:
        raise CheckpointError(f"positional embedding rows {table.shape[0]} / {target[0]} are not 1 + a square grid")
    grid = table[1:].float().reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
    return torch.cat([table[:1].float(), grid.permute(0, 2, 3, 1).reshape(g * g, -1)]).to(table.dtype)


def _resize_time(table: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """[1,T0,C] -> [1,T,C]: linear resampling over time (ViCLIP's interpolate path)."""
    if table.shape[1] == 1:
        return table.expand(target).clone()
    flat = F.interpolate(table.float().transpose(1, 2), size=target[1], mode="linear", align_corners=True)
    return flat.transpose(1, 2).to(table.dtype)


def _resize_text(table: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """[L0,C] -> [L,C]: truncate, or keep every trained row and zero-pad the new ones (ViCLIP's choice)."""
    if target[0] <= table.shape[0]:
        return table[: target[0]]
    return torch.cat([table, table.new_zeros(target[0] - table.shape[0], table.shape[1])])


_RESIZERS: dict[tuple[str, str], Callable[[torch.Tensor, torch.Size], torch.Tensor]] = {
    ("video", "positional_embedding"): _resize_grid,
    ("video", "temporal_positional_embedding"): _resize_time,
    ("text", "positional_embedding"): _resize_text,
}


# Token ids instraction's tokenizer may append to the checkpoint's vocabulary: HFTokenizer adds "<mask>" to a
# tokenizer without one (CLIP's, so ViCLIP's and HF CLIP's 49408 rows meet a 49409-row tower). Any other
# difference means another tokenizer and stays an error.
_ADDED_TOKENS = 1


def _grow_vocab(value: torch.Tensor, current: torch.Tensor, ckpt_key: str, report: dict) -> torch.Tensor:
    """Checkpoint token rows first, the tower's own (initialised) rows for the ids the tokenizer added after."""
    extra = current.shape[0] - value.shape[0]
    if value.ndim != 2 or value.shape[1] != current.shape[1] or not 0 < extra <= _ADDED_TOKENS:
        return value
    report["notes"].append(f"text.token_embedding.weight: rows {value.shape[0]}..{current.shape[0] - 1} are "
                           f"tokens the tokenizer added (not in {ckpt_key}): kept at their initialisation")
    return torch.cat([value.to(current.dtype), current[value.shape[0]:]])


# ---------------------------------------------------------------------------------------------------------------
# Assigning mapped tensors to a tower.


def _assign(tower: nn.Module, name: str, mapped: Mapped, fmt: str, report: dict) -> None:
    """Copy ``mapped`` into ``tower`` (in place, keeping its dtype/device); record loaded/missing/unexpected."""
    own = tower.state_dict()
    new, unexpected = {}, []
    for ours, (ckpt_key, value) in mapped.items():
        if ours not in own:
            unexpected.append(ckpt_key)
            continue
        target = own[ours].shape
        if name == "text" and ours == "token_embedding.weight" and value.shape != target:
            value = _grow_vocab(value, own[ours], ckpt_key, report)
        resizable = (name, ours) in _RESIZERS and value.ndim == len(target) and value.shape[-1] == target[-1]
        if value.shape != target and resizable:
            old = tuple(value.shape)
            value = _RESIZERS[(name, ours)](value, own[ours].shape)
            report["warnings"].append(f"{name}.{ours}: resized {old} -> {tuple(own[ours].shape)} from {ckpt_key}")
        if value.shape != own[ours].shape:
            hint = " (the text vocabulary must be the checkpoint tokenizer's)" if "token_embedding" in ours else ""
            raise CheckpointError(
                f"{fmt} checkpoint key {ckpt_key!r} -> {name}.{ours}: checkpoint shape {tuple(value.shape)} "
                f"!= tower shape {tuple(own[ours].shape)}{hint}"
            )
        new[ours] = value
    tower.load_state_dict(new, strict=False)  # copies into the existing parameters, casting dtype
    missing = sorted(k for k in own if k not in new)
    report[name] = {"loaded": len(new), "missing": missing, "unexpected": sorted(unexpected)}
    report["missing"] += [f"{name}.{k}" for k in missing]
    report["unexpected"] += sorted(unexpected)


def _heads(tower: nn.Module) -> Optional[int]:
    for module in tower.modules():
        if isinstance(module, ResidualAttentionBlock):
            return module.attn.heads
    return None


def _match_architecture(tower: nn.Module, name: str, act: str, eps: float, heads: Optional[int], report: dict) -> None:
    """Make parameter-free settings follow the checkpoint (activation, LN eps); refuse a different head count,
    which has the same shapes but different maths."""
    if heads is not None and _heads(tower) not in (None, heads):
        raise CheckpointError(f"{name} tower has {_heads(tower)} attention heads, the checkpoint {heads}")
    if getattr(tower, "activation", act) != act:
        report["notes"].append(f"{name}: activation {tower.activation} -> {act} (checkpoint's)")
        set_activation(tower, act)
    norms = [m for m in tower.modules() if isinstance(m, nn.LayerNorm) and m.eps != eps]
    if norms:
        report["notes"].append(f"{name}: LayerNorm eps {norms[0].eps} -> {eps} (checkpoint's)")
    for module in norms:
        module.eps = eps


def _load(fmt: str, path: Path, maps: dict[str, Mapped], unknown: list[str], ignored: list[str],
          video_tower: Optional[nn.Module], text_tower: Optional[nn.Module], report: dict) -> dict:
    report.update({"format": fmt, "path": str(path), "missing": [], "unexpected": list(unknown),
                   "skipped": list(ignored)})
    for name, tower in (("video", video_tower), ("text", text_tower)):
        mapped = maps[name]
        if tower is None or isinstance(tower, Conv3dVideoTower):
            if mapped:
                why = "no tower given" if tower is None else "the conv3d video tower has no ViT weights"
                report["warnings"].append(f"{name}: {len(mapped)} checkpoint tensors not loaded ({why})")
                report["skipped"] += [k for k, _ in mapped.values()]
            report[name] = {"loaded": 0, "missing": [], "unexpected": []}
            continue
        for ours, proj in (("proj", "proj"), ("text_projection", "text_projection")):
            if ours in mapped and getattr(tower, proj, "absent") is None:
                report["notes"].append(f"{name}: checkpoint {ours} unused (tower output_dim=0)")
                report["skipped"].append(mapped.pop(ours)[0])
        _assign(tower, name, mapped, fmt, report)
    return report


def _log_report(report: dict) -> dict:
    fmt = report["format"]
    for kind in ("missing", "unexpected"):
        for key in report[kind]:
            log.warning("pretrained %s: %s key %s", fmt, kind, key)
    for w in report["warnings"]:
        log.warning("pretrained %s: %s", fmt, w)
    for n in report["notes"]:
        log.info("pretrained %s: %s", fmt, n)
    return report


def _new_report() -> dict:
    return {"warnings": [], "notes": [], "logit_scale": None, "frozen": []}


def load_hf_clip(path: str | Path, video_tower: Optional[nn.Module], text_tower: Optional[nn.Module]) -> dict:
    """Load a transformers ``CLIPModel.save_pretrained`` directory (config.json + weights) into the towers.

    vision_model.* -> the vit video tower (2D patch conv inflated to Conv3d (1,p,p); the temporal embedding, which
    an image model lacks, is zeroed as ViCLIP initialises it); text_model.* -> the text tower. HF's separate
    q/k/v projections are stacked into in_proj; the activation and LN eps follow config.json, and a different
    head count is refused. ``logit_scale`` is returned in the report (exp of the stored log value) for the model's
    temperature.
    """
    path = Path(path)
    config, tensors = _read_hf_dir(path)
    report = _new_report()
    maps, unknown, ignored = map_hf_clip(tensors)
    sub = {"video": config.get("vision_config") or (config if config.get("model_type") == "clip_vision_model" else {}),
           "text": config.get("text_config") or (config if config.get("model_type") == "clip_text_model" else {})}
    for name, tower in (("video", video_tower), ("text", text_tower)):
        if tower is not None and not isinstance(tower, Conv3dVideoTower) and maps[name]:
            _match_architecture(tower, name, sub[name].get("hidden_act", "quick_gelu"),
                                sub[name].get("layer_norm_eps", 1e-5), sub[name].get("num_attention_heads"), report)
    if "logit_scale" in tensors:
        report["logit_scale"] = float(tensors["logit_scale"].float().exp())
    _load("hf_clip", path, maps, unknown, ignored, video_tower, text_tower, report)
    video_missing = report["video"]["missing"]
    temporal = "temporal_positional_embedding"
    if isinstance(video_tower, VisionTransformer) and maps["video"] and temporal in video_missing:
        with torch.no_grad():
            video_tower.temporal_positional_embedding.zero_()
        video_missing.remove("temporal_positional_embedding")
        report["missing"].remove("video.temporal_positional_embedding")
        report["notes"].append("video: temporal_positional_embedding zero-initialised (CLIP is image-only)")
    return _log_report(report)


def load_viclip(path: str | Path, video_tower: Optional[nn.Module], text_tower: Optional[nn.Module]) -> dict:
    """Load an InternVideo ViCLIP ``.pth`` (weights under ``"model"``; ``vision_encoder.*``, ``text_encoder.*``,
    ``temp``) into the towers. ViCLIP uses QuickGELU and LN eps 1e-5; a .pth carries no head count, so the towers'
    must be right (ViCLIP-B: 12 video heads, 8 text heads: ``VideoTowerConfig.viclip_b16()``)."""
    path = Path(path)
    obj = _read_tensors(path)
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    report = _new_report()
    maps, unknown, ignored = map_viclip(tensors)
    for name, tower in (("video", video_tower), ("text", text_tower)):
        if tower is not None and not isinstance(tower, Conv3dVideoTower) and maps[name]:
            _match_architecture(tower, name, "quick_gelu", 1e-5, None, report)
    temp = tensors.get("temp", tensors.get("module.temp"))  # ViCLIP's temperature; logit scale = 1 / temp
    if temp is not None:
        report["logit_scale"] = float(1.0 / temp.float())
    return _log_report(_load("viclip", path, maps, unknown, ignored, video_tower, text_tower, report))


def detect_format(path: str | Path) -> str:
    """``hf_clip`` for a directory holding config.json, ``viclip`` for a .pth/.pt/.bin/.safetensors file."""
    p = Path(path)
    if p.is_dir() and (p / "config.json").exists():
        return "hf_clip"
    if p.is_file() and p.suffix in (".pth", ".pt", ".bin", ".safetensors"):
        return "viclip"  # a lone weights file: HF CLIP comes as a directory
    raise CheckpointError(f"cannot tell the format of {path}: want a HF CLIP directory (config.json) or a ViCLIP "
                          f".pth / .safetensors file")


def load_pretrained(cfg: PretrainedConfig, video_tower: Optional[nn.Module], text_tower: Optional[nn.Module]) -> dict:
    """Load ``cfg.path`` into the towers (format ``cfg.format`` or auto-detected), then apply the freeze flags.

    Returns the report (``{"format": None}`` when ``cfg.path`` is None). Shape mismatches other than positional
    embedding lengths raise :class:`CheckpointError`; with ``cfg.strict`` so do missing and unexpected keys.
    """
    report: dict = {"format": None, "path": None, "frozen": []}
    if cfg.path:
        if not Path(cfg.path).exists():
            raise CheckpointError(f"pretrained path {cfg.path} does not exist")
        fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
        loader = {"hf_clip": load_hf_clip, "viclip": load_viclip}.get(fmt)
        if loader is None:
            raise CheckpointError(f"unknown pretrained format {fmt!r} (auto | hf_clip | viclip)")
        report = loader(cfg.path, video_tower, text_tower)
        if cfg.strict and (report["missing"] or report["unexpected"]):
            raise CheckpointError(
                f"strict load of {cfg.path}: missing {report['missing'][:8]}, unexpected {report['unexpected'][:8]}"
            )
    for name, tower, flag in (("video", video_tower, cfg.freeze_video), ("text", text_tower, cfg.freeze_text)):
        if flag and tower is not None:
            tower.requires_grad_(False)
            report["frozen"].append(name)
    return report
