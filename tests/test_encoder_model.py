"""The trained encoder as an MLflow pyfunc: logged with a signature and an input example, registered under the run's
name, loaded back with mlflow.pyfunc.load_model, it encodes a clip and a caption to the checkpoint's vectors.

    pytest tests/test_encoder_model.py      # CPU, the tiny model, an MLflow SQLite store in tmp_path
"""

import os

import mlflow
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

import datagen
import train_helpers as th
from instraction import tracking
from instraction.bench.scorers import InstrActionScorer, load_instraction
from instraction.data.examples import normalise_video
from instraction.data.tokenizer import build_tokenizer
from instraction.data.video import decode_frames
from instraction.encoder_model import log_encoder, tracking_store
from instraction.model.instraction import build_model


def test_pyfunc_encoder_gives_the_checkpoints_embeddings(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = th.tiny_config(tmp_path)
    tokenizer = build_tokenizer(cfg.data.tokenizer)
    torch.manual_seed(0)
    weights = str(tmp_path / "model.safetensors")
    state = build_model(cfg, tokenizer.vocab_size).state_dict()
    save_file({k: v.clone() for k, v in state.items()}, weights)  # clones: tied weights, as export_weights does
    clip, caption = datagen.ramp_mp4(seconds=1.0, size=32), "whisk the egg"
    run_dir = str(tmp_path / "run-a")
    (tmp_path / "run-a").mkdir()
    run_id = tracking.open_run(cfg, run_dir)

    info = log_encoder(cfg, run_id, weights, name="run-a")
    # the process's tracking URI is not left pointing at this run's store (later runs and subprocesses inherit it)
    assert "MLFLOW_TRACKING_URI" not in os.environ

    with tracking_store(tracking.tracking_uri(cfg)):
        model = mlflow.pyfunc.load_model(info.model_uri)
    assert model.metadata.signature is not None
    assert {c.name for c in model.metadata.signature.inputs} == {"clip", "frames", "text"}
    assert model.metadata.saved_input_example_info is not None
    registered = mlflow.MlflowClient(tracking.tracking_uri(cfg)).get_registered_model("run-a")
    assert registered.latest_versions[0].run_id == run_id
    out = model.predict(pd.DataFrame({"clip": [clip, None], "text": [caption, None]}))

    scorer = InstrActionScorer(load_instraction(cfg, weights, tokenizer.vocab_size), tokenizer, cfg.data)
    frames = decode_frames(clip, cfg.data.num_frames, cfg.data.size)[None]
    want_video = scorer.encode_video(normalise_video(frames, cfg.data))[0].numpy()
    want_text = scorer.encode_text([caption])[0].numpy()
    np.testing.assert_allclose(np.asarray(out["video_embedding"][0]), want_video, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["text_embedding"][0]), want_text, rtol=1e-5, atol=1e-6)
    assert out["video_embedding"][1] is None and out["text_embedding"][1] is None
    # decoded frames instead of the clip, no caption column: the same vector
    by_frames = model.predict(pd.DataFrame({"frames": [frames[0].tolist()]}))
    np.testing.assert_allclose(np.asarray(by_frames["video_embedding"][0]), want_video, rtol=1e-5, atol=1e-6)
