"""Typed configs: YAML + dotted overrides, clear errors naming the key and the valid choices."""

from pathlib import Path

import pytest

from instraction.config import Config, ConfigError, flatten, from_yaml, load_config, to_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["train.max_steps=7", "model.video.kind=vit", "data.mean=[0.5,0.5,0.5]"])
    assert isinstance(cfg, Config)
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.model.video.kind == "vit"
    assert cfg.data.mean == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("name", ["default.yaml", "howto100m_viclip_b.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.train.num_workers >= 1


def test_paper_scale_config_matches_the_paper():
    cfg = load_config(ROOT / "configs" / "howto100m_viclip_b.yaml")
    assert (cfg.model.video.kind, cfg.model.video.patch_size, cfg.model.video.width) == ("vit", 16, 768)
    assert (cfg.data.num_frames, cfg.data.size) == (8, 224)
    assert cfg.train.precision == "bf16-mixed" and cfg.train.zero_stage == 0  # measured fastest on an H200


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.max_step=3"])
    msg = str(err.value)
    assert "train.max_step" in msg and "max_steps" in msg and "valid keys" in msg


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, ["trian.max_steps=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(None, ["train.max_steps=many"])


def test_invalid_choice_lists_choices():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["curation.backend=gpt"])
    assert "curation.backend" in str(err.value) and "vllm" in str(err.value)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")


def test_yaml_defaults_chain_and_precedence(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  max_steps: 11\n  lr: 0.5\n")
    (tmp_path / "child.yaml").write_text("defaults: [base.yaml]\ntrain:\n  lr: 0.25\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.lr=0.125"])
    assert cfg.train.max_steps == 11 and cfg.train.lr == 0.125
    assert load_config(tmp_path / "child.yaml").train.lr == 0.25


def test_resolved_yaml_round_trips_and_flattens():
    cfg = load_config(None, ["run.name=x", "loss.dtw_margin=0.3"])
    again = from_yaml(to_yaml(cfg))
    assert again == cfg
    flat = flatten(cfg)
    assert flat["run.name"] == "x" and flat["loss.dtw_margin"] == 0.3
    assert all("." in k for k in flat)


@pytest.mark.parametrize("job", ["make_synthetic", "curate", "build_bench", "make_shards", "pretrain"])
def test_every_job_defaults_to_the_embedded_config(job):
    """Without --config every job loads configs/default.yaml: make_synthetic with the dataclass defaults rendered 8
    shards where pretrain's default wants 32, deleting the rest of the shared dataset."""
    import subprocess
    import sys

    from instraction.config import EMBEDDED_DEFAULT

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], capture_output=True, text=True, cwd=root,
                         check=True).stdout
    assert EMBEDDED_DEFAULT.name in out and EMBEDDED_DEFAULT.is_file()
    assert load_config(EMBEDDED_DEFAULT).data.synthetic.num_shards == 32


def test_synthkitchen_keeps_its_unseen_pairs_to_the_bench_split():
    cfg = load_config(None, ["bench.holdout_fraction=0.35", "bench.seed=4"])
    synth = cfg.synthkitchen()
    assert (synth.holdout_fraction, synth.holdout_seed) == (0.35, 4) and cfg.data.synthetic.holdout_fraction is None
    assert from_yaml(to_yaml(cfg)).synthkitchen() == synth
    with pytest.raises(ConfigError, match="data.synthetic.holdout_fraction.*bench.holdout_fraction"):
        load_config(None, ["bench.holdout_fraction=0.35", "data.synthetic.holdout_fraction=0.2"])
    from instraction.bench.config import BenchConfig
    from instraction.data.split import DEFAULT_HOLDOUT_FRACTION

    assert BenchConfig().holdout_fraction == DEFAULT_HOLDOUT_FRACTION  # a SynthConfig alone follows the default
    # without unseen pairs there is nothing to keep apart
    load_config(None, ["data.synthetic.unseen_pairs=0", "data.synthetic.holdout_fraction=0.5"])
