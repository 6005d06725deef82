"""The trained encoder as an MLflow pyfunc model: clips (video bytes) or frame arrays and captions -> joint-space
embeddings.

    info = log_encoder(cfg, run_id, "model.safetensors", name="instraction-run")   # logged and registered
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(pd.DataFrame({"clip": [mp4_bytes], "text": ["crack the egg"]}))
    out["video_embedding"][0], out["text_embedding"][0]       # lists of floats, L2-normalised

A clip is decoded as the bench decodes it (``data.num_frames`` frames at ``data.size``, whole video); ``frames``
instead gives them decoded: uint8 RGB ``[data.num_frames, data.size, data.size, 3]`` as nested lists. Every column
is optional; a row without video or caption gets a None embedding there. The model's artifacts are the weights and the resolved config.
"""

from __future__ import annotations

import contextlib

import os
import tempfile
from typing import Any

import mlflow.pyfunc

from instraction.config import Config, to_yaml


class EncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`instraction.bench.scorers.InstrActionScorer` on CPU."""

    def load_context(self, context) -> None:
        from pathlib import Path

        from instraction.bench.scorers import InstrActionScorer, load_instraction
        from instraction.config import from_yaml
        from instraction.data.tokenizer import build_tokenizer

        self.cfg = from_yaml(Path(context.artifacts["config"]).read_text())
        tokenizer = build_tokenizer(self.cfg.data.tokenizer)
        model = load_instraction(self.cfg, context.artifacts["weights"], tokenizer.vocab_size)
        self.scorer = InstrActionScorer(model, tokenizer, self.cfg.data)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
        return pd.DataFrame(encode_rows(self.scorer, self.cfg, rows))


def encode_rows(scorer, cfg: Config, rows: list[dict[str, Any]]) -> dict[str, list]:
    """``[{"clip": bytes | None, "frames": nested lists | None, "text": str | None}, ...]`` ->
    ``{"video_embedding": [...], "text_embedding": [...]}``."""
    import numpy as np

    from instraction.data.examples import normalise_video
    from instraction.data.video import decode_frames

    d = cfg.data
    out: dict[str, list] = {"video_embedding": [None] * len(rows), "text_embedding": [None] * len(rows)}
    videos, frames = [], []
    for i, r in enumerate(rows):
        if _present(r.get("frames")):
            f = np.asarray(r["frames"], dtype=np.uint8)
            if f.shape != (d.num_frames, d.size, d.size, 3):
                raise ValueError(f"row {i}: frames of shape {f.shape}, the model takes "
                                 f"{(d.num_frames, d.size, d.size, 3)} (or pass the clip's bytes as 'clip')")
        elif _present(r.get("clip")):
            f = decode_frames(bytes(r["clip"]), d.num_frames, d.size)
        else:
            continue
        videos.append(i)
        frames.append(f)
    if videos:
        for i, e in zip(videos, scorer.encode_video(normalise_video(np.stack(frames), d))):
            out["video_embedding"][i] = e.tolist()
    texts = [i for i, r in enumerate(rows) if _present(r.get("text"))]
    if texts:
        for i, e in zip(texts, scorer.encode_text([str(rows[i]["text"]) for i in texts])):
            out["text_embedding"][i] = e.tolist()
    return out


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)  # pandas gives NaN for None


def _optional(schema):
    """Every column of an inferred schema made optional (a row carries a clip, frames, a caption or some of them)."""
    from mlflow.types.schema import ColSpec, Schema

    return Schema([ColSpec(c.type, c.name, required=False) for c in schema.inputs])


def log_encoder(cfg: Config, run_id: str, weights: str, name: str, example_clip: bytes | None = None):
    """Log ``weights`` (a local model.safetensors) as the pyfunc model ``encoder`` of MLflow run ``run_id``, with a
    signature and an input example (``example_clip`` and a caption), and register it as ``name``. Returns MLflow's
    ModelInfo."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    from instraction import tracking

    import numpy as np

    if example_clip is None:  # a grey ramp: enough to show the input's form
        from instraction.data.render import encode_h264

        ramp = np.linspace(0, 255, 8, dtype=np.uint8)[:, None, None, None]
        example_clip = encode_h264(np.broadcast_to(ramp, (8, 32, 32, 3)).copy(), fps=8)
    d = cfg.data
    grey = np.full((d.num_frames, d.size, d.size, 3), 128, np.uint8).tolist()
    example = pd.DataFrame({"clip": [example_clip], "frames": [grey], "text": ["crack the egg into the bowl"]})
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "config.yaml")
        with open(config, "w") as f:
            f.write(to_yaml(cfg))
        artifacts = {"weights": weights, "config": config}
        loaded = EncoderModel()  # for the signature's output; the logged instance stays empty (small pickle)
        loaded.load_context(type("Context", (), {"artifacts": artifacts})())
        inferred = infer_signature(example, loaded.predict(None, example))
        signature = type(inferred)(_optional(inferred.inputs), inferred.outputs)
        with tracking_store(tracking.tracking_uri(cfg)), mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name="encoder", python_model=EncoderModel(), artifacts=artifacts, signature=signature,
                input_example=example, registered_model_name=name,
                # explicit: inferring them would load the model once more in a subprocess
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            )


@contextlib.contextmanager
def tracking_store(uri: str):
    """MLflow's fluent API on ``uri`` inside the block only: mlflow.set_tracking_uri also exports
    MLFLOW_TRACKING_URI, which every later run and subprocess of this process would inherit (a Ray cluster started
    afterwards sent another run's metrics to this store)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    old_uri, old_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_uri)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
