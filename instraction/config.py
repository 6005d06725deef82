"""Typed run configuration: one dataclass per component, assembled here, loaded from YAML + dotted overrides.

Each component's dataclass lives next to the code it configures (``instraction/<pkg>/config.py``); this module
assembles them into :class:`Config`, merges YAML files and ``key=value`` overrides through OmegaConf structured
configs, and turns OmegaConf's errors into messages that name the key and the valid choices.

    cfg = load_config("configs/default.yaml", ["train.max_steps=10", "model.video.kind=vit"])
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from instraction.bench.config import BenchConfig
from instraction.config_checks import ConfigError, check_choice, check_range
from instraction.curation.config import CurationConfig
from instraction.data.config import DataConfig
from instraction.losses.config import LossConfig
from instraction.model.config import ModelConfig
from instraction.train.config import TrackingConfig, TrainConfig

# ConfigError and the checks live in config_checks (a leaf); they are re-exported here for the jobs and tests
__all__ = ["Config", "ConfigError", "ConfigExit", "RunConfig", "check_choice", "check_range", "EMBEDDED_DEFAULT",
           "exit_on_config_error", "flatten", "from_yaml", "load_config", "to_dict", "to_yaml"]

EMBEDDED_DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
"""The embedded default run (SynthKitchen, rules curation, tiny model): what every job loads without --config, so
``jobs/make_synthetic.py``, ``curate.py``, ``build_bench.py`` and ``pretrain.py`` agree on the data they share."""


@dataclass
class RunConfig:
    name: str = "instraction"
    """Run name: the run directory is ``<dir>/<name>-<timestamp>`` and the MLflow run is named after it."""
    dir: str = "runs"
    """Parent of run directories (local path or s3:// URI)."""
    seed: int = 0
    """Global seed: model init, data order and sampling (SynthKitchen has its own data.synthetic.seed)."""
    id: Optional[str] = None
    """Run directory name under ``dir``; default ``<name>-<UTC timestamp>``. Reusing an id resumes that run from its
    latest checkpoint (with train.resume=true)."""
    evaluate: bool = True
    """Score the trained model, the untrained model and the static single-frame baseline on InstrAct Bench."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def synthkitchen(self):
        """``data.synthetic`` with its split filled in from the bench's where unset: what SynthKitchen renders (its
        unseen verb-object pairs go only to videos of the bench split)."""
        synth, bench = self.data.synthetic, self.bench
        return dataclasses.replace(
            synth, holdout_fraction=bench.holdout_fraction if synth.holdout_fraction is None else synth.holdout_fraction,
            holdout_seed=bench.seed if synth.holdout_seed is None else synth.holdout_seed)

    def validate(self) -> "Config":
        """Run every component's ``validate()``; raise :class:`ConfigError` naming the first bad key."""
        for f in dataclasses.fields(self):
            _validate_tree(getattr(self, f.name), f.name)
        synth = self.synthkitchen()
        if synth.unseen_pairs > 0 and (synth.holdout_fraction, synth.holdout_seed) != (
                self.bench.holdout_fraction, self.bench.seed):
            raise ConfigError(
                f"data.synthetic.holdout_fraction/holdout_seed ({synth.holdout_fraction}, {synth.holdout_seed}) differ "
                f"from bench.holdout_fraction/seed ({self.bench.holdout_fraction}, {self.bench.seed}): SynthKitchen's "
                "unseen verb-object pairs would reach training; leave them unset (they follow the bench)")
        return self


def _validate_tree(node: Any, path: str) -> None:
    if not dataclasses.is_dataclass(node):
        return
    for f in dataclasses.fields(node):
        _validate_tree(getattr(node, f.name), f"{path}.{f.name}")
    if hasattr(node, "validate"):
        node.validate(path)


def _valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            break
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _friendly(err: OmegaConfBaseException, schema: DictConfig) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, (ConfigAttributeError, ConfigKeyError)):
        valid = _valid_keys(schema, key) if key else []
        leaf = key.split(".")[-1]
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigError(f"unknown config key {key!r}{hint}; valid keys here: {valid}")
    if isinstance(err, ValidationError):
        return ConfigError(f"bad value for config key {key!r}: {str(err.msg).splitlines()[0]}")
    return ConfigError(f"config error at {key!r}: {err}")


class ConfigExit(SystemExit, ConfigError):
    """A :class:`ConfigError` that ends a job with exit status 2 and no traceback; still a ConfigError for callers
    that run a job's ``main`` in-process and catch that."""

    def __init__(self, err: ConfigError):
        super().__init__(str(err))
        self.code = 2  # SystemExit.code is the status; str() stays the message


def exit_on_config_error(main: Callable) -> Callable:
    """Decorates a job's ``main(argv)``: a :class:`ConfigError` (unknown key, bad value) prints one line to stderr
    and exits 2, as argparse does for a bad argument, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ConfigExit:
            raise  # a job run by another job (ablate -> load_config): reported once
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise ConfigExit(err) from None

    return wrapper


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file(s) <- dotted ``key=value`` overrides, type-checked and validated.

    A YAML file may name others under ``defaults: [other.yaml, ...]`` (paths relative to it), merged first.
    """
    schema = OmegaConf.structured(Config)
    merged = schema
    try:
        if path is not None:
            merged = OmegaConf.merge(merged, *_yaml_chain(Path(path)))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must be key=value, got {bad}")
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _friendly(err, schema) from None
    assert isinstance(cfg, Config)
    return cfg.validate()


def _yaml_chain(path: Path) -> list[DictConfig]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    node = OmegaConf.load(path)
    parents = node.pop("defaults", []) if isinstance(node, DictConfig) else []
    chain: list[DictConfig] = []
    for parent in parents:
        chain += _yaml_chain(path.parent / str(parent))
    return chain + [node]


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> Config:
    """Inverse of :func:`to_yaml` (reads a run directory's resolved ``config.yaml``)."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, Config)
    return cfg.validate()


def flatten(cfg: Config | dict, prefix: str = "") -> dict[str, Any]:
    """``{"train.max_steps": 100, ...}``: the form MLflow params and ablation tables want."""
    tree = to_dict(cfg) if isinstance(cfg, Config) else cfg
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
