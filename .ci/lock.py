"""Regenerate the image's hash-pinned dependency sets from pyproject.toml.

    python3.11 .ci/lock.py             # keep the current pins that still fit pyproject.toml's ranges
    python3.11 .ci/lock.py --upgrade   # take the newest releases within the ranges

Writes two files the Dockerfile installs with `pip install --require-hashes --no-deps -r ...`:

- `.ci/requirements.lock`: every runtime dependency of [project].dependencies and theirs, `name==version` with the
  sha256 of the wheel pip picks for the image (CPython 3.11, manylinux x86_64 up to glibc 2.36: python:3.11-slim).
- `.ci/requirements-build.lock`: the build backend ([build-system].requires) the image builds the wheel with.

pip's own resolver does the work (`pip install --dry-run --report` for the image's platform, wheels only), from
whatever index pip is configured with (PIP_INDEX_URL, pip.conf): no other tool is needed. pip evaluates environment
markers on the interpreter that runs it, so this runs on CPython 3.11 on Linux x86_64 (the image's), and refuses
elsewhere. Every line of both files is a pin with a hash; tests/unit/test_supply_chain.py checks them against
pyproject.toml (the `# inputs` line is a digest of the dependency lists: a change to them asks for a new lock).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / ".ci" / "requirements.lock"
BUILD_LOCK = ROOT / ".ci" / "requirements-build.lock"
PYTHON = "3.11"  # the Dockerfile's base image, python:3.11-slim
GLIBC_MAX = 36  # Debian 12 (bookworm), the base image's distribution
PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MAX, 16, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def canonical(name: str) -> str:
    """PEP 503 normalised name: the form both lock files use."""
    return re.sub(r"[-_.]+", "-", name).lower()


def inputs_digest(requirements: list[str]) -> str:
    """The digest the lock records of what it was made from (a test compares it with pyproject.toml)."""
    return hashlib.sha256("\n".join(sorted(r.strip() for r in requirements)).encode()).hexdigest()


def current_pins(lock: Path) -> dict[str, str]:
    if not lock.exists():
        return {}
    return {canonical(m.group(1)): m.group(2) for line in lock.read_text().splitlines() if (m := PIN.match(line))}


def resolve(requirements: list[str], keep: dict[str, str], pip_args: list[str]) -> list[dict[str, Any]]:
    """pip's resolution for the image's platform: one entry per distribution, from pip's installation report."""
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp, "requirements.txt")
        reqs.write_text("\n".join(requirements) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--target", str(Path(tmp, "target")), "--report", str(Path(tmp, "report.json")),
               "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON,
               "--abi", "cp" + PYTHON.replace(".", ""), *(f"--platform={p}" for p in PLATFORMS),
               "-r", str(reqs), *pip_args]
        if keep:
            constraints = Path(tmp, "keep.txt")
            constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(keep.items())))
            cmd += ["-c", str(constraints)]
        result = subprocess.run(cmd, text=True, capture_output=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            hint = " (the kept pins may no longer fit pyproject.toml: try --upgrade)" if keep else ""
            raise SystemExit(f"pip could not resolve the dependencies{hint}")
        report = json.loads(Path(tmp, "report.json").read_text())
    return list(report["install"])


def render(title: str, source: str, requirements: list[str], entries: list[dict[str, Any]]) -> str:
    roots = {canonical(re.split(r"[\s\[<>=!~;(@]", r.strip(), maxsplit=1)[0]) for r in requirements}
    lines = [
        f"# {title}",
        f"# Pinned for the image: CPython {PYTHON}, manylinux x86_64 (glibc <= 2.{GLIBC_MAX}), wheels only; the sha256",
        "# of the file pip picks there. Install: pip install --require-hashes --no-deps -r <this file>",
        "# Regenerate: python3.11 .ci/lock.py [--upgrade]   (never edit by hand)",
        f"# inputs: sha256:{inputs_digest(requirements)}  ({source})",
    ]
    for entry in sorted(entries, key=lambda e: canonical(e["metadata"]["name"])):
        meta, info = entry["metadata"], entry["download_info"]
        digest = (info.get("archive_info", {}).get("hashes") or {}).get("sha256")
        name = canonical(meta["name"])
        if not digest:
            raise SystemExit(f"{name}: the index gave no sha256 for {info.get('url')}")
        wheel = str(info["url"]).rsplit("/", 1)[-1].split("#", 1)[0]
        lines += [f"{name}=={meta['version']} \\", f"    --hash=sha256:{digest}",
                  f"    # {'direct' if name in roots else 'indirect'}: {wheel}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="newest releases within pyproject's ranges")
    parser.add_argument("pip_args", nargs="*", help="more pip options after --, e.g. -- --index-url URL")
    args = parser.parse_args()
    if (sys.implementation.name, f"{sys.version_info.major}.{sys.version_info.minor}", sys.platform,
            platform.machine()) != ("cpython", PYTHON, "linux", "x86_64"):
        raise SystemExit(f"run this with CPython {PYTHON} on Linux x86_64 (the image's platform): pip evaluates "
                         "environment markers on the interpreter that runs it")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for title, source, requirements, lock in (
        ("culturectl's runtime dependencies, the set the image installs", "[project].dependencies",
         list(project["project"]["dependencies"]), RUNTIME_LOCK),
        ("The build backend the image builds culturectl's wheel with", "[build-system].requires",
         list(project["build-system"]["requires"]), BUILD_LOCK),
    ):
        keep = {} if args.upgrade else current_pins(lock)
        lock.write_text(render(title, source, requirements, resolve(requirements, keep, args.pip_args)))
        print(f"wrote {lock.relative_to(ROOT)} ({len(current_pins(lock))} pins)")


if __name__ == "__main__":
    main()
