"""The supply chain: the image's lock files pin every dependency with a hash, the Dockerfile installs only from them,
and `culturectl sbom` writes a CycloneDX bill of materials that names what is installed."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
import uuid
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from app.cli import app as cli
from app.cli import sbom

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME_LOCK = ROOT / ".ci" / "requirements.lock"
BUILD_LOCK = ROOT / ".ci" / "requirements-build.lock"
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _entries(lock: Path) -> list[tuple[str, str, list[str]]]:
    """(name, version, hashes) per requirement; fails on anything that is not a hash-pinned requirement."""
    logical: list[str] = []
    pending = ""
    for raw in lock.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    assert not pending, f"{lock.name} ends in a continued line"
    out = []
    for entry in logical:
        m = re.fullmatch(r"([a-z0-9][a-z0-9-]*)==([A-Za-z0-9.+!_-]+)((?: --hash=sha256:[0-9a-f]{64})+)", entry)
        assert m, f"{lock.name}: not a hash-pinned requirement: {entry!r}"
        out.append((m.group(1), m.group(2), re.findall(r"[0-9a-f]{64}", m.group(3))))
    return out


@pytest.mark.parametrize(("lock", "section"), [(RUNTIME_LOCK, "dependencies"), (BUILD_LOCK, "requires")])
def test_the_lock_pins_every_declared_dependency_with_a_hash(lock: Path, section: str) -> None:
    declared = PROJECT["project"]["dependencies"] if section == "dependencies" else PROJECT["build-system"]["requires"]
    entries = _entries(lock)
    names = [name for name, _, _ in entries]
    assert names == sorted(set(names)), "one pin per distribution, sorted"
    assert all(name == canonicalize_name(name) for name in names)
    pins = {name: version for name, version, _ in entries}
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency in pyproject.toml but not pinned in {lock.name}"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{lock.name} pins {name}=={pins[name]}, outside pyproject.toml's {req.specifier}"


@pytest.mark.parametrize(("lock", "section"), [(RUNTIME_LOCK, "dependencies"), (BUILD_LOCK, "requires")])
def test_the_lock_was_made_from_the_current_pyproject(lock: Path, section: str) -> None:
    """The lock records a digest of the list it was resolved from: a changed list needs `python3.11 .ci/lock.py`."""
    declared = PROJECT["project"]["dependencies"] if section == "dependencies" else PROJECT["build-system"]["requires"]
    digest = hashlib.sha256("\n".join(sorted(r.strip() for r in declared)).encode()).hexdigest()
    m = re.search(r"^# inputs: sha256:([0-9a-f]{64})", lock.read_text(encoding="utf-8"), re.M)
    assert m and m.group(1) == digest, f"{lock.name} is older than pyproject.toml: run python3.11 .ci/lock.py"


def test_the_lock_holds_the_whole_runtime_closure_when_the_environment_is_the_locked_one() -> None:
    pins = {name: version for name, version, _ in _entries(RUNTIME_LOCK)}
    dists = sbom.installed()
    differ = sorted(n for n, v in pins.items() if n not in dists or dists[n].version != v)
    if differ:
        pytest.skip(f"this environment is not the locked set ({', '.join(differ[:5])} ...)")
    project = sbom.source_project("culturectl")
    graph = sbom.closure("culturectl", dists, project["dependencies"] if project else None)
    assert set(graph) - {"culturectl"} == set(pins)


def test_the_dockerfile_installs_only_from_the_locks() -> None:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and set(bases) == {"python:3.11-slim"}, "the locks are made for CPython 3.11 (.ci/lock.py PYTHON)"
    assert "COPY .ci/requirements.lock " in text and "COPY .ci/requirements-build.lock " in text
    installs = re.findall(r"pip install ([^&\n]*)", text)
    assert installs
    for args in installs:
        if "--require-hashes" in args:
            assert "--no-deps" in args and re.search(r"-r \S*requirements(-build)?\.lock", args), args
        else:  # only the wheel built from this source, and nothing it would fetch
            assert "--no-deps" in args and "/dist/" in args and ".whl" in args, args
    assert "pip check" in text
    assert "pip wheel --no-deps --no-build-isolation" in text
    assert re.search(r"culturectl sbom --image --lock \S+requirements\.lock", text)


def _components(bom: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(c["name"]).lower(): c for c in bom["components"]}  # type: ignore[attr-defined]


def test_the_package_sbom_names_the_installed_runtime_dependencies(tmp_path: Path) -> None:
    out = tmp_path / "sbom.cdx.json"
    result = CliRunner().invoke(cli, ["sbom", "--output", str(out)])
    assert result.exit_code == 0, result.output
    bom = json.loads(out.read_text(encoding="utf-8"))
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5" and bom["version"] == 1
    assert uuid.UUID(bom["serialNumber"].removeprefix("urn:uuid:"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bom["metadata"]["timestamp"])
    assert bom["metadata"]["component"]["name"] == "culturectl"
    assert bom["metadata"]["component"]["purl"] == f"pkg:pypi/culturectl@{PROJECT['project']['version']}"
    components = _components(bom)
    for name in ("fastapi", "asyncpg", "weasyprint", "cryptography", "starlette", "pydantic-core"):
        c = components[name] if name in components else components[name.replace("-", "_")]
        version = metadata.version(name)
        assert c["version"] == version
        assert c["purl"] == f"pkg:pypi/{name}@{version}" and c["bom-ref"] == c["purl"]
        assert c["type"] == "library"
    for tool in ("pytest", "mypy", "ruff", "hypothesis"):  # test tools are not the package's
        assert tool not in components
    assert components["fastapi"]["licenses"]
    refs = {c["bom-ref"] for c in bom["components"]} | {bom["metadata"]["component"]["bom-ref"]}
    deps = {d["ref"]: set(d["dependsOn"]) for d in bom["dependencies"]}
    assert set(deps) == refs and all(d <= refs for d in deps.values())
    assert f"pkg:pypi/fastapi@{metadata.version('fastapi')}" in deps[bom["metadata"]["component"]["bom-ref"]]


def test_the_lock_adds_hashes_and_a_different_environment_is_refused(tmp_path: Path) -> None:
    version = metadata.version("fastapi")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"fastapi=={version} \\\n    --hash=sha256:{'ab' * 32}\n")
    bom = sbom.build_bom(lock=lock)
    assert _components(bom)["fastapi"]["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert "hashes" not in _components(bom)["asyncpg"]
    lock.write_text(f"fastapi==0.0.1 \\\n    --hash=sha256:{'ab' * 32}\n")
    with pytest.raises(sbom.SbomError, match=r"fastapi==0\.0\.1 is locked but"):
        sbom.build_bom(lock=lock)
    result = CliRunner().invoke(cli, ["sbom", "--lock", str(lock), "--output", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and not (tmp_path / "x.json").exists()


def test_the_image_sbom_adds_the_interpreter_and_the_debian_packages(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(
        "Package: libpango-1.0-0\nStatus: install ok installed\nArchitecture: amd64\nSource: pango1.0\n"
        "Version: 1.50.12+ds-1\nDescription: Layout and rendering of internationalized text\n more text\n\n"
        "Package: removed-one\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\n"
        "Package: fonts-dejavu-core\nStatus: install ok installed\nArchitecture: all\nVersion: 2.37-6\n")
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    bom = sbom.build_bom(image=True, dpkg_status=status, os_release=release)
    components = _components(bom)
    assert components["libpango-1.0-0"]["purl"] == \
        "pkg:deb/debian/libpango-1.0-0@1.50.12%2Bds-1?arch=amd64&distro=debian-12"
    assert components["fonts-dejavu-core"]["version"] == "2.37-6"
    assert "removed-one" not in components
    assert components["python"]["cpe"].startswith("cpe:2.3:a:python:python:3.")
    assert components["debian"]["type"] == "operating-system"
    assert "pytest" in components  # the image scope lists every installed distribution
    with pytest.raises(sbom.SbomError, match="no dpkg status file"):
        sbom.build_bom(image=True, dpkg_status=tmp_path / "missing")


@pytest.mark.parametrize(("marker", "extra", "expected"), [
    ('python_version >= "3.8"', "", True),
    ('python_version < "3.10"', "", False),
    ('python_full_version >= "3.11.0" and sys_platform == "linux"', "", True),
    ('sys_platform == "win32" or (os_name == "posix" and platform_machine != "s390x")', "", True),
    ('extra == "asyncio"', "asyncio", True),
    ('extra == "asyncio"', "", False),
    ('extra == "Standard-Extra"', "standard_extra", True),
    ('platform_machine in "x86_64 aarch64"', "", True),
    ('implementation_name not in "pypy"', "", True),
])
def test_markers(marker: str, extra: str, expected: bool) -> None:
    env = sbom.marker_environment(extra) | {"sys_platform": "linux", "os_name": "posix", "platform_machine": "x86_64",
                                            "python_version": "3.11", "python_full_version": "3.11.7",
                                            "implementation_name": "cpython"}
    assert sbom.evaluate_marker(marker, env) is expected
