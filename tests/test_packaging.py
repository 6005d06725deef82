"""Packaging and import names (issue 17).

Run: python -m pytest tests/test_packaging.py -q

A top-level package of ours named like another distribution's import name shadows it for anyone whose sys.path
starts at the checkout (``python -m pytest``, ``python jobs/...``): transformers 5 probes for Hugging Face's
``kernels`` library and imported our ops folder instead. These tests check the package list against the folders,
our top-level names against what our installed dependency tree owns or probes for, and load a HF CLIP checkpoint
in a fresh process started at the repository root with transformers' hub-kernels integration on.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _package_dir(name: str) -> Path:
    """Where setuptools takes package ``name`` from: its package-dir entry, else its parent's folder + its last
    component (the root for top-level packages)."""
    mapping = SETUPTOOLS.get("package-dir", {})
    if name in mapping:
        return ROOT / mapping[name]
    parent, _, last = name.rpartition(".")
    return (_package_dir(parent) if parent else ROOT) / last


def _our_packages() -> list[str]:
    """The packages our distribution installs: the explicit list, or what ``packages.find`` would discover."""
    packages = SETUPTOOLS.get("packages", [])
    if isinstance(packages, dict):
        from setuptools import find_packages

        find = packages["find"]
        return [p for where in find.get("where", ["."]) for p in find_packages(
            str(ROOT / where), include=find.get("include", ["*"]), exclude=find.get("exclude", []))]
    return packages


def _our_top_level_names() -> set[str]:
    return {p.split(".")[0] for p in _our_packages()} | set(SETUPTOOLS.get("py-modules", []))


def test_package_list_matches_the_folders():
    listed = SETUPTOOLS.get("packages")
    assert isinstance(listed, list), "pyproject lists packages explicitly (op folders map under instraction.kernels)"
    assert len(listed) == len(set(listed))
    dirs = {name: _package_dir(name).resolve() for name in listed}
    for name, folder in dirs.items():
        assert (folder / "__init__.py").is_file(), f"{name}: {folder} has no __init__.py"
    on_disk = {init.parent.resolve() for top in ("instraction", "kernels") for init in (ROOT / top).rglob("__init__.py")
               if "__pycache__" not in init.parts}
    assert on_disk == set(dirs.values()), (
        f"packages with __init__.py but not listed: {sorted(map(str, on_disk - set(dirs.values())))}; "
        f"listed without a folder: {sorted(n for n, d in dirs.items() if d not in on_disk)}"
    )
    # The ops folder itself must stay a plain folder: with an __init__.py it is a top-level package `kernels`.
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_installed_metadata_of_this_checkout_names_the_same_top_level_packages():
    """What pip recorded when it installed this checkout (.ci/install: editable) names the same import names."""
    ours = [d for d in md.distributions(name="instraction")
            if json.loads(d.read_text("direct_url.json") or "{}").get("url", "").removeprefix("file://") == str(ROOT)]
    if not ours:
        pytest.skip("this checkout is not the installed instraction")
    for dist in ours:
        top_level = dist.read_text("top_level.txt")
        if top_level is not None:
            assert set(top_level.split()) == _our_top_level_names()


def _owned_top_level_names(dist: md.Distribution) -> set[str]:
    """Import names a distribution installs: top_level.txt, else the first component of each file it recorded."""
    text = dist.read_text("top_level.txt")
    if text:
        return set(text.split())
    names = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first in ("..", "__pycache__") or first.endswith((".dist-info", ".egg-info", ".data", ".pth")):
            continue
        names.add(first[:-3] if first.endswith(".py") and len(f.parts) == 1 else first)
    return names


def _installed_dependency_tree() -> dict[str, md.Distribution]:
    """Installed distributions reachable from our requirements (base + test extra), markers evaluated."""
    todo = [(Requirement(r), "") for r in PROJECT["dependencies"]]
    todo += [(Requirement(r), "test") for r in PROJECT["optional-dependencies"]["test"]]
    seen: dict[str, md.Distribution] = {}
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # optional on this platform (decord, triton), or not installed here
        seen[name] = dist
        for extra_name in ("", *req.extras):
            todo += [(Requirement(r), extra_name) for r in dist.requires or []]
    return seen


def test_no_top_level_name_of_ours_is_owned_by_a_dependency():
    ours = _our_top_level_names()
    assert "kernels" not in ours
    tree = _installed_dependency_tree()
    assert "transformers" in tree and "torch" in tree  # the walk found the tree
    clashes = {name: sorted(ours & _owned_top_level_names(d)) for name, d in tree.items()
               if name != "instraction" and ours & _owned_top_level_names(d)}
    assert not clashes


def test_no_top_level_name_of_ours_is_probed_for_by_transformers():
    """transformers decides which optional libraries exist by find_spec on their import names."""
    source = Path(importlib.util.find_spec("transformers.utils.import_utils").origin).read_text()
    probed = set(re.findall(r"_is_package_available\(\s*[\"']([\w.]+)[\"']", source))
    assert "kernels" in probed  # the pattern still finds transformers' probes
    assert not _our_top_level_names() & {p.split(".")[0] for p in probed}


def test_constraints_pin_every_requirement_within_its_range():
    """constraints.txt (what .ci/install installs) must satisfy pyproject: a bumped requirement needs a refresh."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    assert pins["torch"] == "2.13.0"  # .ci/install installs this CPU build first
    assert "instraction" not in pins and not any(name.startswith("nvidia-") for name in pins)
    for extra, reqs in [("", PROJECT["dependencies"]), ("test", PROJECT["optional-dependencies"]["test"])]:
        for req in map(Requirement, reqs):
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                name = canonicalize_name(req.name)
                assert name in pins, f"{req} has no pin in constraints.txt"
                assert req.specifier.contains(pins[name], prereleases=True), f"{req} excludes the pin {pins[name]}"


def _repo_root_python(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -c code`` with cwd at the repository root, so sys.path starts there as for ``python -m pytest``.
    USE_HUB_KERNELS is dropped so transformers' hub-kernels integration stays at its default (on)."""
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_import_kernels_from_the_repo_root_is_not_ours():
    run = _repo_root_python(
        "import importlib.util, json, os, sys; s = importlib.util.find_spec('kernels'); "
        "print(json.dumps({'path0': os.path.abspath(sys.path[0]), 'origin': s and s.origin, "
        "'locations': s and list(s.submodule_search_locations or [])}))"
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["path0"] == str(ROOT)
    if found["origin"] is None and not found["locations"]:
        return  # no `kernels` anywhere: nothing to shadow, and not ours
    places = [found["origin"], *found["locations"]]
    assert not any(p and Path(p).resolve().is_relative_to(ROOT) for p in places), places
    try:
        hf_files = {str(f.locate().resolve()) for f in md.distribution("kernels").files or []}
    except md.PackageNotFoundError:
        pytest.fail(f"`import kernels` finds {places}, which no installed distribution named kernels owns")
    assert str(Path(found["origin"]).resolve()) in hf_files


_LOAD_HF_CLIP = r"""
import json, os, sys
import torch
from transformers import CLIPConfig, CLIPModel
from transformers.integrations import hub_kernels
from transformers.utils.import_utils import is_kernels_available

from instraction.model.backbone import build_text_tower, build_video_tower
from instraction.model.config import PretrainedConfig, TextTowerConfig, VideoTowerConfig
from instraction.model.loaders import load_pretrained

torch.manual_seed(0)
vocab, eos = 50, 49
config = CLIPConfig(
    text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                     eos_token_id=eos),
    vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       image_size=16, patch_size=4),
    projection_dim=24,
)
hf = CLIPModel(config).eval()
hf.save_pretrained(sys.argv[1])
video = build_video_tower(VideoTowerConfig(kind="vit", width=32, layers=2, heads=4, patch_size=4, image_size=16,
                                           num_frames=3, output_dim=24)).eval()
text = build_text_tower(TextTowerConfig(width=32, layers=2, heads=4, context_length=16, output_dim=24), vocab).eval()
report = load_pretrained(PretrainedConfig(path=sys.argv[1], strict=True), video, text)

ids = torch.tensor([[1, 7, 8, 9, 30, eos, 0, 0], [1, 5, eos, 0, 0, 0, 0, 0]])
image = torch.randn(2, 1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    text_gap = (text(ids, ids != 0)[1] - hf.text_model(input_ids=ids, attention_mask=(ids != 0).long()).pooler_output)
    video_gap = video(image)[1] - hf.vision_model(pixel_values=image[:, 0]).pooler_output
kernels = sys.modules.get("kernels")
print(json.dumps({
    "path0": os.path.abspath(sys.path[0]), "hub_kernels_enabled": hub_kernels._kernels_enabled(),
    "kernels_available": is_kernels_available(), "kernels_file": getattr(kernels, "__file__", None),
    "format": report["format"], "text_gap": text_gap.abs().max().item(), "video_gap": video_gap.abs().max().item(),
}))
"""


def test_hf_clip_loads_from_the_repo_root_with_hub_kernels_on(tmp_path):
    """The loader on a CLIPModel saved by current transformers, in a process like ``python -m pytest``'s: sys.path
    starts at the root, where the ops folder ``kernels/`` lies, and transformers imports its kernel-hub library."""
    run = _repo_root_python(_LOAD_HF_CLIP, str(tmp_path / "clip"))
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["path0"] == str(ROOT) and out["hub_kernels_enabled"]
    if out["kernels_available"]:  # transformers 5 requires the kernel-hub library; imported, it must be theirs
        assert out["kernels_file"] and not Path(out["kernels_file"]).resolve().is_relative_to(ROOT)
    assert out["format"] == "hf_clip"
    assert out["text_gap"] < 1e-5 and out["video_gap"] < 1e-5
