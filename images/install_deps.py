"""Install the dependencies listed in pyproject.toml (plus extras), leaving some out.

Used by Dockerfile.gpu: the official Paddle GPU image already has paddlepaddle-gpu, which pip does
not count as `paddlepaddle`. Usage: python images/install_deps.py --skip paddlepaddle
"""
import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], skip: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    skip_names = {s.lower() for s in skip}
    return [r for r in reqs if re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() not in skip_names]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pyproject", default="pyproject.toml")
    p.add_argument("--extra", action="append", default=[])
    p.add_argument("--skip", action="append", default=[])
    a = p.parse_args()
    reqs = requirements(Path(a.pyproject), a.extra, a.skip)
    return subprocess.call([sys.executable, "-m", "pip", "install", *reqs])


if __name__ == "__main__":
    sys.exit(main())
