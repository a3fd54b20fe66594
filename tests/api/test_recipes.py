"""Recipe release over the API: signed by QA, immutable, one content per key + version."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from app import cli, db
from app.protocol.recipe import DEFAULT_RECIPE
from tests.api.conftest import Service
from tests.api.test_openapi_walk import RECIPE_YAML


def _yaml(version: int, title: str | None = None) -> str:
    text, n = re.subn(r"(?m)^version: \d+$", f"version: {version}", RECIPE_YAML, count=1)
    assert n == 1
    if title:
        text = text.replace("\ntitle: HTLP expansion", f"\ntitle: {title} HTLP expansion", 1)
    return text


async def test_release_is_signed_listed_and_readable(service: Service) -> None:
    _, _, password, qa = await service.user("qa")
    body = {"yaml": _yaml(7), "signature": {"meaning": "approved", "password": password}}
    r = await service.client.post("/api/v1/recipes", json=body, headers=qa)
    assert r.status_code == 201, r.text
    rec = r.json()
    assert (rec["key"], rec["version"]) == ("htlp-dl4-tnfa", 7) and len(rec["content_hash"]) == 64
    assert rec["steps"][0] == "coat_vessels" and rec["content"]["t0_step"] == "seed"
    sigs = (await service.client.get("/api/v1/signatures", params={"entity_type": "recipe",
                                                                     "entity_id": str(rec["id"])}, headers=qa)).json()
    assert [(s["meaning"], s["valid"]) for s in sigs] == [("approved", True)]
    # the same content again: nothing new
    again = await service.client.post("/api/v1/recipes", json=body, headers=qa)
    assert again.status_code == 200 and again.json()["id"] == rec["id"]
    listed = (await service.client.get("/api/v1/recipes", headers=qa)).json()
    assert any(x["id"] == rec["id"] for x in listed)
    one = await service.client.get("/api/v1/recipes/htlp-dl4-tnfa/7", headers=await service.login("operator"))
    assert one.status_code == 200 and one.json()["content_hash"] == rec["content_hash"]
    assert (await service.client.get("/api/v1/recipes/htlp-dl4-tnfa/99", headers=qa)).status_code == 404


async def test_same_version_other_content_is_409_and_the_row_is_immutable(service: Service) -> None:
    _, _, password, qa = await service.user("qa")
    sig = {"meaning": "approved", "password": password}
    assert (await service.client.post("/api/v1/recipes", json={"yaml": _yaml(8), "signature": sig},
                                      headers=qa)).status_code == 201
    r = await service.client.post("/api/v1/recipes", json={"yaml": _yaml(8, "Changed"), "signature": sig},
                                  headers=qa)
    assert r.status_code == 409 and r.json()["rule"] == "recipe_version_conflict", r.text
    conn = await db.connect(service.dsn)
    try:
        with pytest.raises(asyncpg.PostgresError, match="immutable"):
            await conn.execute("UPDATE recipe SET title = 'x' WHERE version = 8")
        with pytest.raises(asyncpg.PostgresError, match="immutable"):
            await conn.execute("DELETE FROM recipe WHERE version = 8")
    finally:
        await conn.close()


async def test_release_needs_qa_a_valid_recipe_and_the_right_password(service: Service) -> None:
    _, _, password, op = await service.user("operator")
    sig = {"meaning": "approved", "password": password}
    assert (await service.client.post("/api/v1/recipes", json={"yaml": _yaml(9), "signature": sig},
                                      headers=op)).status_code == 403
    _, _, qpw, qa = await service.user("qa")
    wrong = await service.client.post("/api/v1/recipes", json={"yaml": _yaml(9), "signature": {
        "meaning": "approved", "password": qpw + "x"}}, headers=qa)
    assert wrong.status_code == 401
    bad = await service.client.post("/api/v1/recipes", json={"yaml": _yaml(9).replace("t0_step: seed", "t0_step: x"),
                                                              "signature": {"meaning": "approved", "password": qpw}},
                                    headers=qa)
    assert bad.status_code == 422 and "t0_step" in bad.text
    meaning = await service.client.post("/api/v1/recipes", json={"yaml": _yaml(9), "signature": {
        "meaning": "reviewed", "password": qpw}}, headers=qa)
    assert meaning.status_code == 422 and meaning.json()["rule"] == "signature_meaning"
    assert DEFAULT_RECIPE.endswith(".yaml")


async def test_cli_release_signs_as_the_qa_user(service: Service, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, username, password = await service.create_user("qa")
    path = tmp_path / "recipe.yaml"
    path.write_text(_yaml(11))
    monkeypatch.setenv("CULTURECTL_DATABASE_URL", service.dsn)

    def invoke(pw: str) -> Result:
        return CliRunner().invoke(cli.app, ["recipe", "release", str(path), "--user", username, "--password-stdin"],
                                  input=pw + "\n")

    wrong = await asyncio.to_thread(invoke, password + "x")
    assert wrong.exit_code == 1 and "password" in wrong.output
    ok = await asyncio.to_thread(invoke, password)
    assert ok.exit_code == 0, ok.output
    assert "released: htlp-dl4-tnfa v11" in ok.output
    r = await service.client.get("/api/v1/recipes/htlp-dl4-tnfa/11", headers=await service.login("qa"))
    assert r.json()["released_by"] == f"user:{username}"
