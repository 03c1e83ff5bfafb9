"""Write environment.yml from requirements.lock, so conda users get exactly the pinned versions.

Usage: ``python tools/sync_environment.py`` rewrites environment.yml; ``--check`` exits 1 if it is out of date.
The lock is the single source of truth (regenerate it with ``pip freeze --exclude-editable`` in a working venv,
writing torch as ``torch==2.13.0``); conda provides only Python and pip, and pip installs the same pins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
ENV = ROOT / "environment.yml"


def read_lock(path: Path = LOCK) -> list[str]:
    """Return the ``name==version`` lines of a lock file, skipping comments and blank lines."""
    pins = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            if "==" not in line:
                raise ValueError(f"{path.name}: {line!r} is not an exact pin (name==version)")
            pins.append(line)
    return pins


def render_environment(pins: list[str]) -> str:
    """Return the text of environment.yml for the given pins."""
    lines = [
        "# Generated from requirements.lock by tools/sync_environment.py; do not edit by hand.",
        "# conda env create -f environment.yml && conda activate lnsr-viz && pip install --no-deps -e .",
        "name: lnsr-viz",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - pip:",
    ]
    lines += [f"      - {pin}" for pin in pins]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if environment.yml differs from the lock")
    args = parser.parse_args(argv)
    text = render_environment(read_lock())
    if args.check:
        if not ENV.exists() or ENV.read_text(encoding="utf-8") != text:
            print("environment.yml is out of date: run python tools/sync_environment.py", file=sys.stderr)
            return 1
        return 0
    ENV.write_text(text, encoding="utf-8")
    print(f"wrote {ENV.relative_to(ROOT)} ({len(read_lock())} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
