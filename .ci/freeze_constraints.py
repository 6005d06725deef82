"""Write constraints.txt: the exact installed version of every distribution our requirements reach.

    python .ci/freeze_constraints.py [OUT]      # run with the python whose packages were tested

Walks pyproject's dependencies (all extras but gpu, whose vLLM pins its own CUDA torch) through the installed
distributions' metadata, markers evaluated, so what pip freeze would add by hand (pip itself, tools installed
beside) stays out. CUDA-only wheels (nvidia-*) are left out: CI installs the CPU build of torch.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_EXTRAS = {"gpu"}


def closure() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        if extra not in SKIPPED_EXTRAS:
            todo += [(Requirement(r), extra) for r in reqs]
    pins: dict[str, str] = {}
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name.startswith("nvidia-"):
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"{req.name} (required as {req}) is not installed: install the project first (.ci/install)")
        if name in pins:
            continue
        pins[name] = dist.version.split("+")[0]  # torch's +cpu: the local label is the wheel's build, not a pin
        for extra_name in ("", *req.extras):
            todo += [(Requirement(r), extra_name) for r in dist.requires or []]
    pins.pop("instraction", None)
    return pins


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "constraints.txt"
    pins = closure()
    header = ("# Exact versions CI tested (.ci/install installs with -c constraints.txt). Do not edit by hand:\n"
              "# bash .ci/refresh-constraints writes it from a fresh resolve, then run bash .ci/run and commit.\n")
    out.write_text(header + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
    print(f"{out}: {len(pins)} pins")


if __name__ == "__main__":
    main()
