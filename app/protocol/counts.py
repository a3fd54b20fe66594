"""Cell counts imported from a counter's result export (the table count_import is written here only).

The file is parsed by app.protocol.counter (formats as data; errors name the line and column). The import
records the file name, the SHA-256 of its bytes, the instrument (from the file, or given when the file does not
name it), the sample and the values a count step takes (viable density, viability, and viable cells = density x the
culture volume: the request's `volume_ml` when the feeds or a split changed it, else the volume recorded at
seeding). A step post then names the import (`count_import`), and its record marks
those inputs as coming from the counter; a value typed by hand is marked `typed`.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from app.auth.principal import Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.protocol import counter
from app.protocol.common import json_ready, not_found
from app.protocol.runs import effective_records, open_run, step_records
from app.protocol.schemas import CountImportIn
from app.records import audit


def _file_problem(detail: str, errors: list[dict[str, Any]], rule: str = "counter_file") -> Problem:
    return Problem(422, "counter-file", "Counter file not accepted", detail, rule=rule, errors=errors)


async def import_counts(conn: DBConnection, run_id: int, body: CountImportIn, *, principal: Principal,
                        now: datetime, client: str | None) -> dict[str, Any]:
    """Parse and record a counter export for a count step of the run; the import's view (its id for the post)."""
    async with conn.transaction():
        _, recipe = await open_run(conn, run_id, "a count import")
        try:
            step = recipe.step(body.step_key)
        except KeyError as exc:
            raise not_found("step", str(exc.args[0])) from None
        if step.key not in recipe.count_steps:
            raise Problem(422, "counter-file", "Not a count step",
                          f"{step.key} records no cell count; count steps: {', '.join(recipe.count_steps)}",
                          rule="not_a_count_step")
        try:
            data = base64.b64decode(body.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise _file_problem(f"{body.filename}: content_base64 is not base64",
                                [{"line": None, "column": None, "rule": "not_base64",
                                  "detail": "not base64"}]) from None
        try:
            export = counter.parse_export(data, body.filename)
            sample = counter.sample(export, body.sample_id)
        except counter.CounterFileError as exc:
            raise _file_problem(str(exc), json_ready(exc.errors)) from None
        instrument = export.instrument_id or body.instrument_id
        if instrument is None:
            raise Problem(422, "counter-file", "Instrument id required",
                          f"{body.filename} does not name its instrument: give instrument_id",
                          rule="instrument_required",
                          errors=[{"loc": ["body", "instrument_id"], "msg": "required", "type": "instrument_required"}])
        if export.instrument_id and body.instrument_id and export.instrument_id != body.instrument_id:
            raise Problem(422, "counter-file", "Instrument ids differ",
                          f"the file names instrument {export.instrument_id}, the request {body.instrument_id}",
                          rule="instrument_mismatch")
        volume = body.volume_ml
        if volume is None:  # the culture volume recorded at seeding (corrections applied)
            seed = (await effective_records(conn, run_id, await step_records(conn, run_id))).get(recipe.t0_step)
            seeded = seed.values.get("volume") if seed is not None else None
            volume = float(seeded) if isinstance(seeded, int | float) and not isinstance(seeded, bool) else None
        try:
            values = counter.count_inputs(sample, volume)
        except counter.CounterFileError as exc:
            raise _file_problem(str(exc), json_ready(exc.errors)) from None
        import_id = await conn.fetchval(
            "INSERT INTO count_import (run_id, step_key, filename, sha256, format, instrument_id, sample_id, "
            "\"values\", imported_at, imported_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10) "
            "RETURNING id", run_id, step.key, body.filename, export.sha256, export.format, instrument,
            sample.sample_id, json.dumps(values), now, principal.label)
        view = {"id": import_id, "run_id": run_id, "step_key": step.key, "filename": body.filename,
                "sha256": export.sha256, "format": export.format, "instrument_id": instrument,
                "sample_id": sample.sample_id, "measured_at": sample.measured_at, "values": values,
                "volume_ml": volume, "imported_at": now, "imported_by": principal.label}
        await audit.record(conn, actor=principal, action="count.import", entity_type="culture_run", entity_id=run_id,
                           old=None, new=view, reason=f"{body.filename} (SHA-256 {export.sha256}) imported for "
                                                      f"{step.key}", client=client)
    return dict(json_ready(view))
