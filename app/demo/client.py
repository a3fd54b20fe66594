"""The demo's automation client: posts a run's protocol steps over HTTP inside their windows, as a site would.

It reads the run (its schedule on the service's scaled clock) and the devices' latest readings with the demo
automation key, and posts each step as soon as it is open, as the demo users with their e-signature (every step
of the default recipe is signed): the operator performs, QA releases. Cell counts and incubator values come from
the simulators' readings through the API. Before release QA reviews and closes the run's open deviations (a
dose outside acceptance, a late step), as the release rule requires; a held run is resumed by QA and a late or
missed step is recorded by the supervisor with an override, so the demo always reaches release.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger("culturectl.demo")

VOLUME_ML = 20.0  # culture volume the counts are scaled by (seeded 2e6 cells at 1e5 cells/mL)
SEEDED_CELLS = 2.0e6
POST_AS: dict[str, str] = {"release": "qa"}
# Who signs a step's record for each meaning when the poster did not (a verifier is a second person).
SIGNED_BY: dict[str, str] = {"performed": "operator", "verified": "supervisor", "reviewed": "qa", "approved": "qa"}


@dataclass
class DemoAutomation:
    """Drive one run to release. `users` maps role names (operator, supervisor, qa) to usernames."""

    base_url: str
    api_key: str
    password: str
    run_id: int
    users: dict[str, str] = field(default_factory=lambda: {"operator": "operator", "supervisor": "supervisor",
                                                            "qa": "qa"})
    poll: float = 0.5
    posted: list[str] = field(default_factory=list)
    _meanings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _sessions: dict[str, dict[str, str]] = field(default_factory=dict)

    async def run(self) -> dict[str, Any]:
        """Post steps until the run is completed or aborted; returns the final run view."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            key = {"Authorization": f"Bearer {self.api_key}"}
            while True:
                try:
                    view = await self._get(http, f"/api/v1/runs/{self.run_id}", key)
                    if view["status"] in ("completed", "aborted"):
                        return dict(view)
                    await self._act(http, key, view)
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    log.warning("demo client: %s", exc)
                await asyncio.sleep(self.poll)

    async def _get(self, http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> Any:
        r = await http.get(path, headers=headers)
        r.raise_for_status()
        return r.json()

    async def _login(self, http: httpx.AsyncClient, role: str) -> dict[str, str]:
        """A session per demo user, kept until it expires (a login costs an Argon2 check)."""
        cached = self._sessions.get(role)
        if cached is not None and (await http.get("/api/v1/auth/me", headers=cached)).status_code == 200:
            return cached
        r = await http.post("/api/v1/auth/login", json={"username": self.users[role], "password": self.password})
        r.raise_for_status()
        self._sessions[role] = {"Authorization": f"Bearer {r.json()['access_token']}"}
        return self._sessions[role]

    async def _act(self, http: httpx.AsyncClient, key: dict[str, str], view: dict[str, Any]) -> None:
        if not self._meanings:
            recipe = await self._get(http, f"/api/v1/recipes/{view['recipe']['key']}/{view['recipe']['version']}",
                                     key)
            self._meanings = {s["key"]: tuple(s.get("signatures", ())) for s in recipe["content"]["steps"]}
        if view["status"] == "held":
            await self._signed(http, "qa", f"/api/v1/runs/{self.run_id}/resume",
                               {"reason": "demo: QA reviewed the hold"})
            return
        for step in view["schedule"]:
            if step["blocked_by"] or step["status"] not in ("open", "due", "late", "missed"):
                continue
            await self._post(http, key, view, step)
            return  # one post per poll: the next poll sees the new schedule

    async def _signed(self, http: httpx.AsyncClient, role: str, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = await self._login(http, role)
        body = {**body, "signature": {"meaning": "approved", "password": self.password}}
        r = await http.post(path, json=body, headers=headers)
        if r.status_code >= 400:
            log.warning("demo client: %s -> %s %s", path, r.status_code, r.text[:300])
        return r

    async def _post(self, http: httpx.AsyncClient, key: dict[str, str], view: dict[str, Any],
                    step: dict[str, Any]) -> None:
        name = step["key"]
        if name == "release":
            for d in await self._get(http, f"/api/v1/deviations?run_id={self.run_id}&status=open", key):
                await self._signed(http, "qa", f"/api/v1/deviations/{d['id']}/close",
                                   {"reason": "demo: QA reviewed the deviation and accepts the batch"})
        late = step["status"] in ("late", "missed")
        role = POST_AS.get(name, "supervisor" if late else "operator")
        headers = await self._login(http, role)
        body: dict[str, Any] = {"inputs": await self._inputs(http, key, view, name)}
        meanings = self._meanings.get(name, ())
        if meanings and role != "supervisor":
            body["signature"] = {"meaning": meanings[0], "password": self.password}
        if late:
            body.update(override=True, override_reason="demo: recorded late by the supervisor")
        r = await http.post(f"/api/v1/runs/{self.run_id}/steps/{name}", json=body, headers=headers)
        if r.status_code == 201:
            self.posted.append(name)
            log.info("demo client: run %s step %s recorded", view["code"], name)
            signed = {body["signature"]["meaning"]} if "signature" in body else set()
            await self._countersign(http, int(r.json()["step_record"]["id"]), meanings, signed)
        elif r.status_code == 409 and r.json().get("rule") == "signatures_missing":
            # Steps recorded by a script (which cannot sign) still need their people's signatures.
            record_ids = {s["key"]: s["step_record_id"] for s in view["schedule"]}
            for step_key, missing in r.json()["missing"].items():
                await self._countersign(http, int(record_ids[step_key]), tuple(missing), set())
        else:
            log.warning("demo client: step %s -> %s %s", name, r.status_code, r.text[:300])

    async def _countersign(self, http: httpx.AsyncClient, record_id: int, meanings: tuple[str, ...],
                           signed: set[str]) -> None:
        """The signatures the step still needs, each by the person a site would ask (verifier = a second person)."""
        for meaning in meanings:
            if meaning in signed:
                continue
            role = SIGNED_BY.get(meaning, "operator")
            headers = await self._login(http, role)
            r = await http.post("/api/v1/signatures", headers=headers, json={
                "entity_type": "step_record", "entity_id": str(record_id), "meaning": meaning,
                "password": self.password, "comment": f"demo: {role} {meaning}"})
            if r.status_code >= 400:
                log.warning("demo client: signing step record %s (%s) -> %s %s", record_id, meaning, r.status_code,
                            r.text[:300])

    async def _inputs(self, http: httpx.AsyncClient, key: dict[str, str], view: dict[str, Any],
                      name: str) -> dict[str, Any]:
        latest = {c["key"]: (c.get("latest") or {}).get("value")
                  for c in await self._get(http, "/api/v1/channels", key)}

        def reading(device: str | None, point: str, default: float, lo: float, hi: float) -> float:
            value = latest.get(f"{device}.{point}")
            return default if value is None else round(min(hi, max(lo, float(value))), 3)

        inc, cs = view.get("incubator"), view.get("culture_system")
        vcd = reading(cs, "viable_cell_density", 1.0e5, 1.0, 1.0e8)
        viability = reading(cs, "viability", 90.0, 0, 100)
        cd7 = reading(cs, "cd7_percent", 60.0, 0, 100)
        day = "2027-06-30"
        inputs: dict[str, dict[str, Any]] = {
            "coat_vessels": {"dl4_lot": "DL4-DEMO", "dl4_expiry": day, "medium_lot": "XV-DEMO",
                             "cytokines_lot": "CK-DEMO", "tnfa_lot": "TNF-DEMO", "coat_hours": 16,
                             "coat_temperature": reading(inc, "temperature", 37.0, 0, 60)},
            "incubator_ready": {"temperature": reading(inc, "temperature", 37.0, 0, 60),
                                "co2": reading(inc, "co2", 5.0, 0, 20),
                                "humidity": reading(inc, "humidity", 92, 0, 100),
                                "trend_hours": 4, "calibration_valid": True, "calibration_due": day},
            "receive_cells": {"donor_id": view["donor_id"], "cell_source": view["cell_source"],
                              "viable_cd34_cells": 2.2e6, "viability": 95, "cd34_purity": 92},
            "seed": {"viable_cells_seeded": SEEDED_CELLS, "seeding_density": 3.0e4, "volume": VOLUME_ML,
                     "vessel_ids": ",".join(view.get("vessel_ids") or ["V1"])},
            "harvest": {"total_viable_cells": round(vcd * VOLUME_ML), "viability": viability, "cd7_percent": cd7,
                        "cd34_percent": 5.0, "cd3_percent": 0.2},
            "formulate": {"cd7_cells_formulated": round(vcd * VOLUME_ML * cd7 / 100), "endotoxin": 0.5,
                          "gram_stain": "negative", "mycoplasma": "negative"},
            "release": {"comment": "demo release"},
        }
        feed = {"viable_cells": round(vcd * VOLUME_ML), "viable_density": vcd, "viability": viability,
                "cd7_percent": cd7}
        return inputs.get(name, feed)
