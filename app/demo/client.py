"""The demo's automation client: posts a run's protocol steps over HTTP inside their windows, as a site would.

It reads the run (its schedule on the service's scaled clock) and the devices' latest readings with the demo
automation key, and posts each step as soon as it is open, as the demo users with their e-signature (every step
of the default recipe is signed): the operator performs, QA releases. With a `door` hook it opens the incubator's
door before each step that plans an opening (seeding, feeds, the mycoplasma sample, harvest). Cell counts and
incubator values come from the simulators' readings through the API. QA reports the QC results of the samples
taken (all negative); before release QA reviews and closes the run's open deviations, as the release rule
requires; a held run is resumed by QA and a late or missed step is recorded by the supervisor with an override,
so the demo always reaches release and the infusion (formulated at the dose level, the bedside check matched).
Before the incubator check the supervisor records a calibration of each point it reads that has none in force (the
step reads its calibration inputs from those records).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

log = logging.getLogger("culturectl.demo")

VOLUME_ML = 200.0  # culture volume the counts are scaled by (seeded 2e7 cells at 1e5 cells/mL)
SEEDED_CELLS = 2.0e7
PRODUCT_ML = 50.0  # formulated product volume
QC_ML = 2.0  # taken from it for Gram stain, endotoxin and sterility
INFUSION_MIN = 30.0  # the infusion takes this long, from the bedside check
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
    _materials: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Opens the incubator's door for a step that plans an opening (seeding, feeds, the mycoplasma sample, harvest)
    # before the step is posted, as an operator does; None: the door stays shut.
    door: Callable[[str], Awaitable[None]] | None = None
    _doors: dict[str, bool] = field(default_factory=dict)
    _opened: set[str] = field(default_factory=set)
    _infusion: str = ""
    _reads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # step -> channels whose calibrations it reads
    _calibrated: set[str] = field(default_factory=set)
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
            self._materials = {s["key"]: tuple(s.get("materials", ())) for s in recipe["content"]["steps"]}
            self._doors = {s["key"]: bool(s.get("door_opening")) for s in recipe["content"]["steps"]}
            self._infusion = next((s["key"] for s in recipe["content"]["steps"] if s["operation"] == "infusion"), "")
            self._reads = {s["key"]: tuple(s.get("channels", ())) for s in recipe["content"]["steps"]
                           if any(i["name"] in ("calibration_valid", "calibration_due") for i in s["inputs"])}
        if view["status"] == "held":
            await self._signed(http, "qa", f"/api/v1/runs/{self.run_id}/resume",
                               {"reason": "demo: QA reviewed the hold"})
            return
        await self._report_results(http, view)
        for step in view["schedule"]:
            if step["blocked_by"] or step["status"] not in ("open", "due", "late", "missed"):
                continue
            if await self._post(http, key, view, step):
                return  # one post per poll: the next poll sees the new schedule

    async def _report_results(self, http: httpx.AsyncClient, view: dict[str, Any]) -> None:
        """The lab's results of the QC samples taken (QA reports them): all negative, endotoxin low."""
        for qc in (view.get("product") or {}).get("qc") or []:
            if qc["status"] != "pending" or (qc["test"] == "sterility" and view["status"] != "completed"):
                continue
            body: dict[str, Any] = {"eu_per_ml": 0.05} if qc["test"] == "endotoxin" else {"result": "negative"}
            headers = await self._login(http, "qa")
            r = await http.post(f"/api/v1/runs/{self.run_id}/qc-results/{qc['test']}", json=body, headers=headers)
            if r.status_code >= 400:
                log.warning("demo client: QC result %s -> %s %s", qc["test"], r.status_code, r.text[:300])

    async def _signed(self, http: httpx.AsyncClient, role: str, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = await self._login(http, role)
        body = {**body, "signature": {"meaning": "approved", "password": self.password}}
        r = await http.post(path, json=body, headers=headers)
        if r.status_code >= 400:
            log.warning("demo client: %s -> %s %s", path, r.status_code, r.text[:300])
        return r

    async def _review(self, http: httpx.AsyncClient) -> None:
        """QA reviews every exception of the batch record that is not reviewed (the release waits for it)."""
        headers = await self._login(http, "qa")
        r = await http.get(f"/api/v1/runs/{self.run_id}/record", headers=headers)
        if r.status_code != 200:
            log.warning("demo client: batch record -> %s %s", r.status_code, r.text[:300])
            return
        keys = [e["key"] for e in r.json()["exceptions"] if e["review"] is None]
        if keys:  # one request: one password check for all of them
            rr = await http.post(f"/api/v1/runs/{self.run_id}/record/reviews", headers=headers, json={
                "keys": keys, "comment": "demo: every exception reviewed, acceptable",
                "signature": {"meaning": "reviewed", "password": self.password}})
            if rr.status_code >= 400:
                log.warning("demo client: reviews -> %s %s", rr.status_code, rr.text[:300])

    async def _post(self, http: httpx.AsyncClient, key: dict[str, str], view: dict[str, Any],
                    step: dict[str, Any]) -> bool:
        """Post one step (or open the door before it); False when the step waits for its target time."""
        name = step["key"]
        if name == "release":
            for d in await self._get(http, f"/api/v1/deviations?run_id={self.run_id}&status=open", key):
                await self._signed(http, "qa", f"/api/v1/deviations/{d['id']}/close",
                                   {"reason": "demo: QA reviewed the deviation and accepts the batch",
                                    "classification": "minor", "impact": "demo: no impact on the product",
                                    "actions": "demo: none"})
            await self._review(http)
        if self.door is not None and self._doors.get(name) and name not in self._opened:
            if step["status"] == "open":
                return False  # opened at its target time, so two door steps (day-5 feed, sample) never share one
            self._opened.add(name)
            await self.door(name)  # the door opens and the chamber recovers inside the step's window
            return True  # the next poll posts the step
        if name == self._infusion and not self._infused(view):
            return False  # an infusion is recorded once it has ended (it takes INFUSION_MIN after the release)
        if name in self._reads and name not in self._calibrated:
            await self._calibrate(http, key, view, self._reads[name])
            self._calibrated.add(name)
        late = step["status"] in ("late", "missed")
        role = POST_AS.get(name, "supervisor" if late else "operator")
        headers = await self._login(http, role)
        body: dict[str, Any] = {"inputs": await self._inputs(http, key, view, name)}
        materials = self._materials.get(name, ())
        if materials:
            body["lots"] = {m: {"lot": f"{m.upper()}-DEMO", "expiry": "2099-12-31"} for m in materials}
        meanings = self._meanings.get(name, ())
        if meanings and (role != "supervisor" or name == self._infusion):  # the bedside check is signed there
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
        return True

    async def _calibrate(self, http: httpx.AsyncClient, key: dict[str, str], view: dict[str, Any],
                         channels: tuple[str, ...]) -> None:
        """The supervisor records a calibration (yesterday, valid for a year) of each point playing one of the
        channels on the run's devices that has none in force or an overdue one."""
        devices = {"incubator": view.get("incubator"), "culture-system": view.get("culture_system")}
        calibrated_on = datetime.fromisoformat(view["now"]).date() - timedelta(days=1)  # not after today anywhere
        for channel in channels:
            kind, _, role = channel.partition(".")
            device = devices.get(kind)
            if not device:
                continue
            points = {p["role"]: p["name"] for p in (await self._get(http, f"/api/v1/devices/{device}", key))["points"]
                      if p.get("role")}
            in_force = {c["point"]: c["status"] for c in
                        await self._get(http, f"/api/v1/calibrations?device={device}", key)}
            point = points.get(role)
            if point is None or in_force.get(point, "overdue") != "overdue":
                continue
            headers = await self._login(http, "supervisor")
            r = await http.post(f"/api/v1/devices/{device}/points/{point}/calibrations", headers=headers, json={
                "calibrated_on": calibrated_on.isoformat(),
                "due_on": (calibrated_on + timedelta(days=365)).isoformat(),
                "certificate": f"DEMO-CAL-{device}-{point}", "performed_by": "demo metrology service",
                "reason": "demo: calibrated before the run"})
            if r.status_code >= 400:
                log.warning("demo client: calibration of %s.%s -> %s %s", device, point, r.status_code, r.text[:300])

    @staticmethod
    def _infused(view: dict[str, Any]) -> bool:
        released = next((s["done_at"] for s in view["schedule"] if s["key"] == "release"), None)
        return released is not None and (datetime.fromisoformat(view["now"]) - datetime.fromisoformat(released)
                                         >= timedelta(minutes=INFUSION_MIN + 1))

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
        harvest_cells = round(vcd * VOLUME_ML)
        # Formulate the dose level for the patient (QA's lower level when it decided one), 100 % of it net of
        # the QC samples, or what the harvest holds when it holds less.
        dose_view = view.get("dose") or {}
        decision = ((view.get("product") or {}).get("decision") or {})
        level = decision.get("dose_per_kg") or view.get("target_dose_per_kg") or 0
        needed = float(level) * float(view.get("patient_weight_kg") or 0) * PRODUCT_ML / (PRODUCT_ML - QC_ML)
        harvested = ((dose_view.get("harvest") or {}).get("cd7_cells")) or harvest_cells * cd7 / 100
        now = view["now"]
        inputs: dict[str, dict[str, Any]] = {
            "coat_vessels": {"coat_hours": 16, "coat_temperature": reading(inc, "temperature", 37.0, 0, 60)},
            "incubator_ready": {"temperature": reading(inc, "temperature", 37.0, 0, 60),
                                "co2": reading(inc, "co2", 5.0, 0, 20),
                                "humidity": reading(inc, "humidity", 92, 0, 100),
                                "trend_hours": 4},
            "receive_cells": {"donor_id": view["donor_id"], "graft_din": view.get("graft_din") or "",
                              "cell_source": view["cell_source"], "viable_cd34_cells": 2.2e7, "viability": 95,
                              "cd34_purity": 92},
            "seed": {"viable_cells_seeded": SEEDED_CELLS, "volume": VOLUME_ML},
            "mycoplasma_sample": {"sample_id": f"MYC-{view['code']}", "volume": 1.0},
            "harvest": {"total_viable_cells": harvest_cells, "viability": viability, "cd7_percent": cd7,
                        "cd34_percent": 5.0, "cd3_percent": 0.2},
            "formulate": {"cd7_cells_formulated": round(min(needed, float(harvested))),
                          "product_volume": PRODUCT_ML, "qc_sample_volume": QC_ML},
            "release": {"comment": "demo release"},
            "infuse": {"patient_id_scanned": view["patient_id"], "product_id_scanned": view["product_id"],
                       "infusion_start": _plus_minutes(now, -INFUSION_MIN), "infusion_end": now,
                       "infused_volume": PRODUCT_ML - QC_ML},
        }
        feed = {"viable_cells": round(vcd * VOLUME_ML), "viable_density": vcd, "viability": viability,
                "cd7_percent": cd7}
        return inputs.get(name, feed)


def _plus_minutes(iso: str, minutes: float) -> str:
    return (datetime.fromisoformat(iso) + timedelta(minutes=minutes)).isoformat()
