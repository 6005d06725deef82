"""The InstrAction model: backbone towers, Action Perceiver (Sec. 4.1), MAM decoder (Sec. 4.3), and the
model that joins them with the losses.

    backbone.py     build_video_tower, build_text_tower
    loaders.py      load_pretrained (HF CLIP / ViCLIP checkpoints into the towers)
    perceiver.py    ActionPerceiver (student latents, banded; teacher verb-phrase queries, all frames)
    decoder.py      MultimodalDecoder (causal self-attn -> cross-attn to the action tokens, tied LM head)
    instraction.py  InstrActionModel, build_model
    testing.py      make_dummy_batch (a random batch per the batch contract, for tests)

Names are resolved lazily: ``instraction.config`` imports ``instraction.model.config``, and loading a config
must not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "config",
    "build_video_tower": "backbone",
    "build_text_tower": "backbone",
    "load_pretrained": "loaders",
    "ActionPerceiver": "perceiver",
    "MultimodalDecoder": "decoder",
    "InstrActionModel": "instraction",
    "build_model": "instraction",
    "make_dummy_batch": "testing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
