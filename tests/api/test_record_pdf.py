"""The batch record's PDF route and dashboard page on a real database (app/records/record_render.py): the PDF of a
planned run's draft (PDF/A-3b, DRAFT and page n of N on every page, the record's JSON embedded, the same record as
GET /api/v1/runs/{id}/record), the printable page with its sections in order, and the run page's links to both."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pypdf

from app.records import record_render
from tests.api.conftest import Service
from tests.api.protocol_support import make_run


def _without_time(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "generated_at"}


async def test_the_pdf_is_the_records_draft_with_its_json_attached(service: Service) -> None:
    run_id = await make_run(service, service.app.state.runtime.clock.now())
    headers = await service.login("qa")
    r = await service.client.get(f"/api/v1/runs/{run_id}/record.pdf", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    code = (await service.client.get(f"/api/v1/runs/{run_id}", headers=headers)).json()["code"]
    name = f"batch-record-{code}-vdraft"
    assert r.headers["content-disposition"] == f'attachment; filename="{name}.pdf"'
    reader = pypdf.PdfReader(io.BytesIO(r.content))
    pages = [p.extract_text() for p in reader.pages]
    for n, text in enumerate(pages, 1):
        assert f"Page {n} of {len(pages)}" in text and "DRAFT" in text and f"Batch record {code}" in text
    xmp = reader.xmp_metadata
    assert xmp is not None and (xmp.pdfaid_part, xmp.pdfaid_conformance) == ("3", "B")
    (embedded,) = reader.attachments[f"{name}.json"]
    record = json.loads(embedded)
    assert record["identity"]["run_id"] == run_id and record["version"]["draft"] is True
    current = (await service.client.get(f"/api/v1/runs/{run_id}/record", headers=headers)).json()
    assert _without_time(record) == _without_time(current)


async def test_an_unknown_runs_pdf_and_page_are_404(service: Service) -> None:
    headers = await service.login("supervisor")
    r = await service.client.get("/api/v1/runs/987654321/record.pdf", headers=headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    page = await service.client.get("/runs/987654321/record", headers=headers)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")


async def test_the_page_shows_the_sections_in_order_and_prints(service: Service) -> None:
    run_id = await make_run(service, service.app.state.runtime.clock.now())
    headers = await service.login("operator")
    r = await service.client.get(f"/runs/{run_id}/record", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    text = r.text
    found = re.findall(r'<section id="sec-([a-z-]+)" class="record-section"', text)
    assert found == [key for key, _title in record_render.SECTIONS] and found[0] == "exceptions"
    assert '<header class="top">' in text and 'data-page="record"' in text  # in the dashboard's layout
    assert "@media print" in text and "header.top" in text  # the print hides the dashboard
    assert 'content: "Page " counter(page) " of " counter(pages)' in text
    assert f'href="/api/v1/runs/{run_id}/record.pdf"' in text
    assert "Draft: the record as it stands now" in text
    run_page = await service.client.get(f"/runs/{run_id}", headers=headers)
    assert f'href="/runs/{run_id}/record" data-testid="record-link"' in run_page.text
    assert f'href="/api/v1/runs/{run_id}/record.pdf" data-testid="record-pdf-link"' in run_page.text
