"""Exit 0 when slidearchive and every dependency pyproject.toml names (and those of the extras
given as arguments) are installed in versions it accepts; 1 when `pip install` is needed.

start.sh and test.sh use it so that starting again does not reinstall. Without `packaging`
(pip's own dependency, normally present) it answers 1: installing is then the safe choice.
"""
from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path


def missing(extras: list[str]) -> list[str]:
    from packaging.requirements import Requirement

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    wanted = [project["name"], *project["dependencies"]]
    for extra in extras:
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    out = []
    for text in wanted:
        requirement = Requirement(text)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            out.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            out.append(f"{text} (have {version})")
    return out


if __name__ == "__main__":
    try:
        gaps = missing(sys.argv[1:])
    except ImportError:
        sys.exit(1)
    for gap in gaps:
        print(f"needs install: {gap}", file=sys.stderr)
    sys.exit(1 if gaps else 0)
