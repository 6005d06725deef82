"""Bad input at the command line, as a new user types it: config errors end a job with one line and exit 2, and a
mistyped data.shards is an error naming it, never a fresh SynthKitchen rendered there.

    python -m pytest tests/test_job_errors.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from instraction.config import ConfigError, load_config
from instraction.workflow import wants_synthkitchen

ROOT = Path(__file__).resolve().parents[1]
JOBS = ["pretrain", "curate", "ablate", "build_bench", "make_synthetic", "make_shards", "extract_frames"]


def job(name: str):
    """jobs/<name>.py imported by path (the jobs are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_of(main, argv) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize("name", JOBS)
@pytest.mark.parametrize("override, message", [
    ("train.max_step=5", "error: unknown config key 'train.max_step' (did you mean 'max_steps'?)"),
    ("train.max_steps=many", "error: bad value for config key 'train.max_steps'"),
])
def test_a_config_error_is_one_line_and_exit_2(name, override, message, capsys):
    assert exit_of(job(name).main, [override]) == 2
    out = capsys.readouterr()
    assert out.err.startswith(message) and out.err.count("\n") == 1, out.err
    assert "Traceback" not in out.err + out.out


def test_evaluate_and_benchmark_exit_2_on_a_config_error(tmp_path, capsys):
    assert exit_of(job("evaluate").main, ["--config", str(tmp_path / "missing.yaml"), "--untrained"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert exit_of(job("benchmark").main, ["train", "--steps", "1", "train.max_step=5"]) == 2
    assert "unknown config key 'train.max_step'" in capsys.readouterr().err


def test_the_exit_is_still_a_config_error_for_callers_in_process():
    with pytest.raises(ConfigError, match="unknown config key"):
        job("build_bench").main(["train.max_step=5"])


def test_curate_refuses_to_render_synthkitchen_into_a_mistyped_location(tmp_path, capsys):
    typo = tmp_path / "shrads"
    argv = [f"data.shards={typo}", f"data.annotations={tmp_path / 'ann'}"]
    assert exit_of(job("curate").main, argv) == 2
    err = capsys.readouterr().err
    assert f"no shards at data.shards='{typo}'" in err and "data.make_synthetic=true" in err
    assert not typo.exists() and not (tmp_path / "ann").exists()  # nothing rendered, nothing curated


def test_synthkitchen_is_rendered_at_the_default_location_or_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default's data.shards is relative: it resolves under tmp_path
    default = load_config(None, [])  # the dataclass default, not default.yaml: make_synthetic unset
    assert default.data.make_synthetic is None and wants_synthkitchen(load_config(ROOT / "configs/default.yaml"))
    elsewhere = str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="no shards at data.shards=.*elsewhere"):
        wants_synthkitchen(load_config(None, [f"data.shards={elsewhere}"]))
    assert wants_synthkitchen(load_config(None, [f"data.shards={elsewhere}", "data.make_synthetic=true"]))
    assert not wants_synthkitchen(load_config(None, [f"data.shards={elsewhere}", "data.make_synthetic=false"]))
    Path(elsewhere).mkdir()
    (Path(elsewhere) / "00000.tar").write_bytes(b"")  # somebody's shards: used as they are, never re-rendered
    assert not wants_synthkitchen(load_config(None, [f"data.shards={elsewhere}"]))
    assert not wants_synthkitchen(load_config(None, [f"data.shards={elsewhere}", "data.make_synthetic=true"]))
