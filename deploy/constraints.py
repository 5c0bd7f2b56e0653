"""Print deploy/constraints.txt: the exact versions of Rampart's runtime dependencies (and theirs) as
installed in the running interpreter's environment, so the image installs what was tested.

    .venv/bin/python deploy/constraints.py > deploy/constraints.txt

The roots are pyproject.toml's [project] dependencies (not the installed metadata, which lags until
the next `pip install -e`); their own requirements come from what is installed. Extras are never
followed, so dev tools (pytest, mypy, ...) stay out of the image.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def runtime_closure(requirements: list[str]) -> dict[str, str]:
    """Name -> installed version of every distribution ``requirements`` need at run time."""
    found: dict[str, str] = {}
    pending = [Requirement(line).name for line in requirements]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        dist = distribution(name)
        found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            # extra="" keeps unconditional requirements and those whose markers hold here, drops extras.
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def main() -> int:
    print("# Exact runtime dependency versions for the container image (Dockerfile installs with them).")
    print("# Generated from the tested virtualenv: .venv/bin/python deploy/constraints.py > deploy/constraints.txt")
    roots = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    for name, version in sorted(runtime_closure(roots).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
