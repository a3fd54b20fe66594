"""`culturectl sbom`: a CycloneDX 1.5 software bill of materials (JSON) of the package or of the image.

The package's BOM lists culturectl's runtime dependency closure as installed (importlib.metadata: each distribution's
name, version, purl `pkg:pypi/...`, licences, what it depends on); test tools and anything else in the environment
are left out. The image's BOM (`--image`, run by the Dockerfile) lists every Python distribution installed, the
Python interpreter, and the Debian packages of dpkg's status file with their purls `pkg:deb/debian/...`. `--lock`
adds each pinned wheel's sha256 from the lock file and fails when the environment differs from the lock.

Built from the standard library only, so that the image needs nothing beyond its lock file to describe itself.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tomllib
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

SPEC_VERSION = "1.5"
ROOT_PACKAGE = "culturectl"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


class SbomError(Exception):
    """The environment does not match what the BOM is asked to describe (a lock pin missing or different)."""


def canonical(name: str) -> str:
    """PEP 503 normalised name (also the purl's pypi name: lower case, runs of -_. as one dash)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_purl(name: str, version: str) -> str:
    return f"pkg:pypi/{canonical(name)}@{quote(version, safe='')}"


# --- environment markers (PEP 508), enough of them to follow Requires-Dist without a third-party parser ---

_MARKER_TOKEN = re.compile(
    r"\s*(\(|\)|===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b|and\b|or\b|'[^']*'|\"[^\"]*\"|[A-Za-z_.]+)")


def marker_environment(extra: str = "") -> dict[str, str]:
    impl = sys.implementation
    impl_version = f"{impl.version.major}.{impl.version.minor}.{impl.version.micro}"
    return {
        "os_name": os.name, "sys_platform": sys.platform, "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(), "platform_system": platform.system(),
        "platform_version": platform.version(), "python_version": ".".join(platform.python_version_tuple()[:2]),
        "python_full_version": platform.python_version(), "implementation_name": impl.name,
        "implementation_version": impl_version, "extra": canonical(extra) if extra else "",
    }


def _version_key(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _compare(left: str, op: str, right: str) -> bool:
    op = " ".join(op.split())
    if op == "in":
        return left in right
    if op == "not in":
        return left not in right
    lk, rk = _version_key(left), _version_key(right)
    if lk is not None and rk is not None:
        width = max(len(lk), len(rk))
        a: tuple[Any, ...] = lk + (0,) * (width - len(lk))
        b: tuple[Any, ...] = rk + (0,) * (width - len(rk))
        if op == "~=":
            return a >= b and lk[: len(rk) - 1] == rk[: len(rk) - 1]
    else:
        a, b = (left,), (right,)
    return {"==": a == b, "===": left == right, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
            ">=": a >= b, "~=": a >= b}[op]


def evaluate_marker(marker: str, env: dict[str, str]) -> bool:
    """A PEP 508 marker (`python_version < "3.12" and extra == "asyncio"`) evaluated in `env`."""
    tokens: list[str] = []
    pos = 0
    while pos < len(marker.rstrip()):
        m = _MARKER_TOKEN.match(marker, pos)
        if not m:
            raise ValueError(f"cannot read the marker {marker!r}")
        tokens.append(m.group(1))
        pos = m.end()
    at = 0

    def value(tok: str) -> str:
        if tok[0] in "'\"":
            return tok[1:-1]
        if tok not in env:
            raise ValueError(f"unknown marker variable {tok!r} in {marker!r}")
        return canonical(env[tok]) if tok == "extra" else env[tok]

    def atom() -> bool:
        nonlocal at
        if tokens[at] == "(":
            at += 1
            result = disjunction()
            at += 1  # ")"
            return result
        left, op, right = tokens[at], tokens[at + 1], tokens[at + 2]
        at += 3
        lv, rv = value(left), value(right)
        if right == "extra":
            lv = canonical(lv)
        if left == "extra":
            rv = canonical(rv)
        return _compare(lv, op, rv)

    def conjunction() -> bool:
        nonlocal at
        result = atom()
        while at < len(tokens) and tokens[at] == "and":
            at += 1
            result = atom() and result
        return result

    def disjunction() -> bool:
        nonlocal at
        result = conjunction()
        while at < len(tokens) and tokens[at] == "or":
            at += 1
            result = conjunction() or result
        return result

    return disjunction()


def requirements_of(lines: Iterable[str], extras: Iterable[str] = ()) -> list[tuple[str, set[str]]]:
    """What Requires-Dist `lines` need here, with the given extras: (canonical name, extras wanted of it)."""
    out: list[tuple[str, set[str]]] = []
    for line in lines:
        spec, _, marker = line.partition(";")
        m = REQUIREMENT.match(spec)
        if not m:
            continue
        wanted = {canonical(e) for e in (m.group(2) or "").split(",") if e.strip()}
        marker = marker.strip()
        if not marker or any(evaluate_marker(marker, marker_environment(x)) for x in ["", *extras]):
            out.append((canonical(m.group(1)), wanted))
    return out


# --- components ---

def _licenses(meta: Any) -> list[dict[str, Any]]:
    expression = meta.get("License-Expression")
    if expression:
        return [{"expression": expression.strip()}]
    names = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    names = [n for n in names if n not in ("OSI Approved", "Other/Proprietary License")] or names
    text = (meta.get("License") or "").strip()
    if not names and text and "\n" not in text and len(text) <= 100 and text.upper() != "UNKNOWN":
        names = [text]
    return [{"license": {"name": n}} for n in dict.fromkeys(names)]


def _pypi_component(dist: metadata.Distribution, hashes: dict[str, str],
                    version: str | None = None) -> dict[str, Any]:
    meta: Any = dist.metadata
    name, version = meta["Name"], version or dist.version
    purl = pypi_purl(name, version)
    component: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}
    if meta.get("Summary"):
        component["description"] = meta["Summary"].strip()
    licenses = _licenses(meta)
    if licenses:
        component["licenses"] = licenses
    digest = hashes.get(canonical(name))
    if digest:
        component["hashes"] = [{"alg": "SHA-256", "content": digest}]
    return component


def installed() -> dict[str, metadata.Distribution]:
    """Every distribution importlib.metadata finds, by canonical name (the first on sys.path wins, as for imports)."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist)
    return found


def source_project(root: str) -> dict[str, Any] | None:
    """[project] of the pyproject.toml the running code comes from, when it is `root`'s (a checkout, an editable
    install, whose installed metadata keeps the dependencies of the day it was installed); None in an image."""
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not path.is_file():
        return None
    project: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
    return project if canonical(str(project.get("name", ""))) == canonical(root) else None


def closure(root: str, dists: dict[str, metadata.Distribution],
            root_requires: list[str] | None = None) -> dict[str, set[str]]:
    """The runtime dependency graph from `root`: each reached distribution and the ones it depends on."""
    graph: dict[str, set[str]] = {}
    wanted_extras: dict[str, set[str]] = {canonical(root): set()}
    todo = [canonical(root)]
    while todo:
        name = todo.pop()
        dist = dists.get(name)
        if dist is None:
            raise SbomError(f"{name} is required but not installed")
        lines = root_requires if name == canonical(root) and root_requires is not None else dist.requires or []
        needs = requirements_of(lines, wanted_extras[name])
        graph[name] = {n for n, _ in needs}
        for dep, extras in needs:
            seen = wanted_extras.setdefault(dep, set())
            if dep not in graph or not extras <= seen:
                seen |= extras
                graph.pop(dep, None)
                todo.append(dep)
    return graph


def read_lock(path: Path) -> dict[str, tuple[str, str]]:
    """A hash-pinned requirements file: canonical name -> (version, sha256 of the first hash)."""
    pins: dict[str, tuple[str, str]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = PIN.match(line)
        if m:
            current = canonical(m.group(1))
            pins[current] = (m.group(2), "")
        h = HASH.search(line)
        if h and current is not None and not pins[current][1]:
            pins[current] = (pins[current][0], h.group(1))
    return pins


def _check_lock(pins: dict[str, tuple[str, str]], dists: dict[str, metadata.Distribution]) -> dict[str, str]:
    problems = []
    for name, (version, _) in sorted(pins.items()):
        dist = dists.get(name)
        if dist is None:
            problems.append(f"{name}=={version} is locked but not installed")
        elif dist.version != version:
            problems.append(f"{name}=={version} is locked but {dist.version} is installed")
    if problems:
        raise SbomError("; ".join(problems))
    return {name: digest for name, (_, digest) in pins.items() if digest}


def _os_release(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, val = line.partition("=")
        if sep:
            out[key.strip()] = val.strip().strip("\"'")
    return out


def dpkg_packages(status: Path) -> Iterator[dict[str, str]]:
    """The installed packages of a dpkg status file (paragraphs whose Status is `install ok installed`)."""
    for paragraph in re.split(r"\n\s*\n", status.read_text(encoding="utf-8", errors="replace")):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += "\n" + line.strip()
                continue
            key, _, val = line.partition(":")
            fields[key] = val.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            yield fields


def _deb_components(status: Path, os_release: dict[str, str]) -> list[dict[str, Any]]:
    distro = os_release.get("ID", "debian")
    qualifier = f"{distro}-{os_release['VERSION_ID']}" if os_release.get("VERSION_ID") else distro
    out = []
    for pkg in dpkg_packages(status):
        name, version, arch = pkg["Package"], pkg.get("Version", ""), pkg.get("Architecture", "")
        purl = f"pkg:deb/{distro}/{quote(name, safe='')}@{quote(version, safe='')}?arch={arch}&distro={qualifier}"
        component: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": name, "version": version,
                                     "purl": purl}
        if pkg.get("Description"):
            component["description"] = pkg["Description"].split("\n", 1)[0]
        if pkg.get("Source"):
            component["properties"] = [{"name": "deb:source", "value": pkg["Source"].split(" ", 1)[0]}]
        out.append(component)
    return sorted(out, key=lambda c: str(c["name"]))


def build_bom(*, image: bool = False, lock: Path | None = None, dpkg_status: Path = Path("/var/lib/dpkg/status"),
              os_release: Path = Path("/etc/os-release"), root: str = ROOT_PACKAGE) -> dict[str, Any]:
    """The BOM as a dict, ready for json.dumps. Raises SbomError when the environment does not fit."""
    dists = installed()
    hashes = _check_lock(read_lock(lock), dists) if lock is not None else {}
    project = source_project(root)
    graph = closure(root, dists, list(project.get("dependencies", [])) if project else None)
    names = sorted(set(dists) if image else set(graph))
    root_name = canonical(root)
    root_dist = dists[root_name]
    main_component = _pypi_component(root_dist, {}, str(project["version"]) if project else None)
    main_component["type"] = "application"
    components = [_pypi_component(dists[n], hashes) for n in names if n != root_name]
    refs = {n: pypi_purl(dists[n].metadata["Name"], dists[n].version) for n in names}
    refs[root_name] = main_component["bom-ref"]
    dependencies = [{"ref": refs[n], "dependsOn": sorted(refs[d] for d in graph.get(n, ()) if d in refs)}
                    for n in names]
    properties = []
    if image:
        py = platform.python_version()
        python_ref = f"pkg:generic/python@{py}"
        components.append({"type": "application", "bom-ref": python_ref, "name": "python", "version": py,
                           "purl": python_ref, "cpe": f"cpe:2.3:a:python:python:{py}:*:*:*:*:*:*:*",
                           "description": f"the {platform.python_implementation()} interpreter of the image"})
        if not dpkg_status.exists():
            raise SbomError(f"no dpkg status file at {dpkg_status}: the image's Debian packages cannot be listed")
        release = _os_release(os_release)
        components += _deb_components(dpkg_status, release)
        if release:
            os_ref = f"os:{release.get('ID', 'linux')}-{release.get('VERSION_ID', '')}"
            components.append({"type": "operating-system", "bom-ref": os_ref, "name": release.get("ID", "linux"),
                               "version": release.get("VERSION_ID", ""),
                               "description": release.get("PRETTY_NAME", "")})
        properties.append({"name": "culturectl:sbom:scope", "value": "image"})
    else:
        properties.append({"name": "culturectl:sbom:scope", "value": "package"})
    if lock is not None:
        properties.append({"name": "culturectl:sbom:lock", "value": lock.name})
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": uuid.uuid4().urn,
        "version": 1,
        "metadata": {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "culturectl sbom",
                                      "version": root_dist.version}]},
            "component": main_component,
            "properties": properties,
        },
        "components": components,
        "dependencies": dependencies,
    }


def sbom_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the BOM; - for stdout")]
    = Path("sbom.cdx.json"),
    image: Annotated[bool, typer.Option(
        help="describe the whole image: every installed Python distribution, the interpreter, the Debian packages")]
    = False,
    lock: Annotated[Path | None, typer.Option(
        help="hash-pinned lock file: adds each wheel's sha256; fails when the environment differs from it")] = None,
    dpkg_status: Annotated[Path, typer.Option(help="with --image: dpkg's status file")]
    = Path("/var/lib/dpkg/status"),
) -> None:
    """Write a CycloneDX 1.5 JSON bill of materials of the package (its runtime dependencies) or of the image."""
    try:
        bom = build_bom(image=image, lock=lock, dpkg_status=dpkg_status)
    except SbomError as exc:
        typer.echo(f"sbom: {exc}", err=True)
        raise typer.Exit(1) from None
    text = json.dumps(bom, indent=2, ensure_ascii=False) + "\n"
    if str(output) == "-":
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}: {len(bom['components'])} components (CycloneDX {SPEC_VERSION})", err=True)
