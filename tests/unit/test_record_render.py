"""The batch record's rendering (app/records/record_render.py): the charts (pure SVG), the HTML's sections and marks,
and the archival PDF read back with pypdf (page n of N, the DRAFT mark, the embedded JSON, PDF/A-3B)."""

from __future__ import annotations

import io
import json
import math
import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from typing import Any

import pypdf
import pytest

from app.records import record_render as rr
from app.records import record_rules
from app.records.record_model import BatchRecord, ChartView
from tests.unit.record_fixture import T0, chart, sample_record

SVG = "{http://www.w3.org/2000/svg}"


def _svg(text: str) -> ET.Element:
    return ET.fromstring(text)  # well-formed XML, or this raises


def _polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    out = []
    for el in root.iter(f"{SVG}polyline"):
        assert el.get("class") == "mean"
        out.append([(float(x), float(y)) for x, y in (p.split(",") for p in (el.get("points") or "").split())])
    return out


def _limits(root: ET.Element) -> dict[str, ET.Element]:
    return {el.get("data-limit") or "": el for el in root.iter(f"{SVG}line") if el.get("class") == "limit"}


# ---- chart_svg (pure) -------------------------------------------------------------------------------------------

def test_a_chart_draws_every_mean_as_one_polyline_when_it_fits_the_width() -> None:
    c = chart("co2", 500)
    root = _svg(rr.chart_svg(c, 720, 250))
    lines = _polylines(root)
    assert len(lines) == 1 and len(lines[0]) == 500
    xs = [x for x, _y in lines[0]]
    assert xs == sorted(xs)  # time runs left to right
    assert root.get("data-points") == "500" and root.get("data-drawn") == "500"
    assert root.get("viewBox") == "0 0 720 250"
    assert root.find(f"{SVG}title") is not None


def test_missing_readings_break_the_line_and_the_band() -> None:
    c = chart("temperature", 300, gap=(100, 109))
    root = _svg(rr.chart_svg(c))
    lines = _polylines(root)
    assert [len(seg) for seg in lines] == [100, 190]
    ranges = [el for el in root.iter(f"{SVG}polygon") if el.get("class") == "range"]
    assert [len((el.get("points") or "").split()) for el in ranges] == [200, 380]  # max forward, min back


def test_a_time_gap_without_buckets_breaks_the_line_too() -> None:
    c = chart("co2", 200)
    points = c.points[:80] + [(t + timedelta(hours=6), m, lo, hi) for t, m, lo, hi in c.points[80:]]
    root = _svg(rr.chart_svg(c.model_copy(update={"points": points})))
    assert [len(seg) for seg in _polylines(root)] == [80, 120]


def test_a_long_chart_is_decimated_to_its_width_keeping_every_extreme() -> None:
    c = chart("temperature", 2000, gap=(600, 611))
    drawn = rr.decimate(c.points, 720)
    assert len(drawn) == math.ceil(2000 / math.ceil(2000 / 720)) == 667
    root = _svg(rr.chart_svg(c, 720, 250))
    assert root.get("data-points") == "2000" and root.get("data-drawn") == str(len(drawn))
    assert sum(len(seg) for seg in _polylines(root)) == sum(1 for p in drawn if p[1] is not None)
    lows = [p[2] for p in c.points if p[2] is not None]
    highs = [p[3] for p in c.points if p[3] is not None]
    assert min(p[2] for p in drawn if p[2] is not None) == min(lows)
    assert max(p[3] for p in drawn if p[3] is not None) == max(highs)
    # max_points changes the decimation; fewer points than the limit are drawn as they are
    assert sum(len(s) for s in _polylines(_svg(rr.chart_svg(c, max_points=5000)))) == 2000 - 12
    assert rr.decimate(c.points[:10], 720) == c.points[:10]


def test_the_limit_band_is_two_dashed_lines_at_its_values() -> None:
    c = chart("temperature", 300)
    root = _svg(rr.chart_svg(c, 720, 250))
    limits = _limits(root)
    assert set(limits) == {"low", "high"}
    assert float(limits["low"].get("data-value") or "nan") == 36.0
    assert float(limits["high"].get("data-value") or "nan") == 38.0
    assert all(el.get("stroke-dasharray") for el in limits.values())
    # higher values are drawn higher up: the high line's y is above (smaller than) the low line's
    assert float(limits["high"].get("y1") or 0) < float(limits["low"].get("y1") or 0)
    ys = [y for seg in _polylines(root) for _x, y in seg]
    assert float(limits["high"].get("y1") or 0) < min(ys) and max(ys) < float(limits["low"].get("y1") or 0)
    one_sided = _limits(_svg(rr.chart_svg(chart("humidity", 100))))
    assert set(one_sided) == {"low"}
    assert _limits(_svg(rr.chart_svg(chart("viable_cell_density", 100)))) == {}


def test_axes_have_ticks_days_from_the_first_point_and_the_unit() -> None:
    c = chart("viability", 2016)  # 7 days of 5-minute buckets
    root = _svg(rr.chart_svg(c))
    axis_x = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "axis-x")
    labels = [t.text for t in axis_x.iter(f"{SVG}text") if t.get("class") != "axis-title"]
    assert labels == [str(d) for d in range(8)]
    title = next(t.text for t in axis_x.iter(f"{SVG}text") if t.get("class") == "axis-title")
    assert title == f"days from {rr.fmt_time(c.points[0][0])}"
    axis_y = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "axis-y")
    ticks = [t.text for t in axis_y.iter(f"{SVG}text") if t.get("class") != "axis-title"]
    assert len(ticks) >= 3 and all(t and re.fullmatch(r"-?\d+(\.\d+)?", t) for t in ticks)
    assert next(t.text for t in axis_y.iter(f"{SVG}text") if t.get("class") == "axis-title") == "%"
    vcd = _svg(rr.chart_svg(chart("viable_cell_density", 300)))
    vcd_y = next(g for g in vcd.iter(f"{SVG}g") if g.get("class") == "axis-y")
    assert any("e5" in (t.text or "") or "e6" in (t.text or "") for t in vcd_y.iter(f"{SVG}text"))


def test_an_empty_chart_says_so_and_has_no_line() -> None:
    root = _svg(rr.chart_svg(ChartView(role="co2", channel="incubator-1.co2", unit="%", band=(4.0, 6.0))))
    assert _polylines(root) == []
    assert any(t.text == "No data" for t in root.iter(f"{SVG}text"))
    assert set(_limits(root)) == {"low", "high"}


def test_chart_text_is_escaped() -> None:
    c = ChartView(role="x<y", channel="a&b", unit="<b>", points=[(T0, 1.0, 0.5, 1.5), (T0 + timedelta(hours=1),
                                                                                     2.0, 1.5, 2.5)])
    text = rr.chart_svg(c)
    assert "<b>" not in text and "&lt;b&gt;" in text
    _svg(text)


def test_nice_ticks_and_labels() -> None:
    assert rr.nice_ticks(0, 7, 8) == [float(d) for d in range(8)]
    assert rr.nice_ticks(35.1, 38.9, 5) == [35.0, 36.0, 37.0, 38.0, 39.0]
    ticks = rr.nice_ticks(3.62, 6.38, 5)
    assert ticks[0] <= 3.62 and ticks[-1] >= 6.38 and ticks == sorted(ticks)
    assert rr.tick_label(0.5, 0.5) == "0.5" and rr.tick_label(36.0, 1.0) == "36" and rr.tick_label(2.25, 0.25) \
        == "2.25"
    assert rr.tick_label(1.5e6, 5e5) == "1.5e6"


def test_recorded_values_print_exactly() -> None:
    assert rr.fmt_number(74.5) == "74.5"
    assert rr.fmt_number(1.2e10) == "1.2e10"
    assert rr.fmt_number(3.0e6) == "3e6"
    assert rr.fmt_number(1234567) == "1.234567e6"
    assert rr.fmt_number(960000.0) == "960000"
    assert rr.fmt_number(0.1 + 0.2) == "0.30000000000000004"  # never rounded
    assert rr.fmt_number(1e-7) == "1e-7"
    assert rr.fmt_value(True) == "yes" and rr.fmt_value(None) == "\u2014" and rr.fmt_value(37.1, "degC") == "37.1 degC"
    assert rr.fmt_time("2026-11-21T08:00:00Z") == "2026-11-21 08:00:00 UTC"
    assert rr.band_text((85.0, None), "%RH") == "\u2265 85 %RH" and rr.band_text(None) == "\u2014"


def test_file_names() -> None:
    draft, issued = sample_record(), sample_record(draft=False)
    assert rr.attachment_name(draft) == "batch-record-HTLP-2026-0042-vdraft.json"
    assert rr.attachment_name(issued) == "batch-record-HTLP-2026-0042-v2.json"
    assert rr.pdf_name(issued) == "batch-record-HTLP-2026-0042-v2.pdf"
    odd = draft.model_copy(update={"identity": draft.identity.model_copy(update={"run_code": 'A/B "1"'})})
    assert rr.pdf_name(odd) == "batch-record-A-B-1-vdraft.pdf"


# ---- the HTML ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def draft() -> BatchRecord:
    return sample_record()


@pytest.fixture(scope="module")
def issued() -> BatchRecord:
    return sample_record(draft=False)


def test_the_sections_are_in_reading_order_with_the_exceptions_first(draft: BatchRecord) -> None:
    text = rr.render_html(draft, for_pdf=True)
    found = re.findall(r'<section id="sec-([a-z-]+)" class="record-section" data-section="\1"', text)
    assert found == [key for key, _title in rr.SECTIONS]
    assert found[0] == "exceptions" and found[-1] == "chain"
    # the model's order after the exceptions (excursions and door openings share one section)
    model = [k for k in BatchRecord.model_fields if k not in ("schema_version", "generated_at", "version",
                                                              "exceptions", "door_openings")]
    names = {"audit_chain": "chain"}
    assert [names.get(k, k) for k in model] == found[1:]


def test_the_exceptions_table_shows_each_review_or_not_reviewed(draft: BatchRecord) -> None:
    text = rr.render_html(draft)
    table = text[text.index('<section id="sec-exceptions"'):text.index('<section id="sec-identity"')]
    rows = re.findall(r'<tr data-testid="exception" data-key="([^"]+)" data-kind="([^"]+)">(.*?)</tr>', table, re.S)
    assert [(k, kind) for k, kind, _ in rows] == [(e.key, e.kind) for e in draft.exceptions]
    unreviewed = [e for e in draft.exceptions if e.review is None]
    assert table.count("not reviewed</span>") == len(unreviewed) == 5
    reviewed = next(body for key, _kind, body in rows if key == "correction:feed_day3")
    assert "reviewed by quinn at 2026-11-28 13:00:00 UTC: counter printout checked" in reviewed
    assert "late step" in table  # kinds in words


def test_inputs_show_unit_limit_result_and_the_original_of_a_changed_value(draft: BatchRecord) -> None:
    text = rr.render_html(draft)
    row = re.search(r'<tr data-testid="input" data-input="viability" data-changed="true">(.*?)</tr>', text, re.S)
    assert row, "the corrected viability is marked"
    assert "74.5 %" in row.group(1) and "changed after entry; originally 71 %" in row.group(1)
    assert "&gt;= 70 %" in row.group(1) and "pass" in row.group(1)
    assert "✖ FAIL" in text  # harvest %CD7+ 48 % below >= 50 %
    assert "Correction at 2026-11-24 11:00:00 UTC by sam: transcription error" in text
    assert text.count('data-testid="audit-entry" data-changed="true"') == sum(
        1 for a in draft.audit if a.changed_after_entry)


def test_signatures_are_manifested_with_name_role_meaning_and_utc_time(issued: BatchRecord) -> None:
    text = rr.render_html(issued)
    release = text[text.index('<section id="sec-release"'):text.index('<section id="sec-audit"')]
    sig = issued.release.signatures[0]
    assert (f"<td>{sig.printed_name} ({sig.signer})</td><td>{sig.role}</td><td>{sig.meaning}</td>"
            f"<td>{rr.fmt_time(sig.signed_at)}</td>") in release
    assert "Released" in release


def test_the_end_shows_the_chain_head_and_the_content_hash(issued: BatchRecord, draft: BatchRecord) -> None:
    text = rr.render_html(issued)
    chain = text[text.index('<section id="sec-chain"'):]
    assert f"seq {issued.audit_chain.seq}" in chain and issued.audit_chain.hash in chain
    assert issued.version.content_hash and issued.version.content_hash in chain
    draft_chain = rr.render_html(draft).split('<section id="sec-chain"')[1]
    assert record_rules.content_hash(draft) in draft_chain and "a release now would sign it" in draft_chain


def test_calibration_due_dates_materials_and_excursions_are_listed(draft: BatchRecord) -> None:
    text = rr.render_html(draft)
    assert "2027-06-02" in text and "CAL-C-1180" in text
    assert "<td>due soon</td><td>overdue</td><td>overdue</td>" in text  # at T0, on the last day, now
    assert "DL4-2611-07" in text and "TNF-3301" in text
    assert "12.5" in text and "3.2 C \u00d7 min" in text
    assert text.count('data-testid="door-opening"') == 3 and "slow recovery" in text


def test_the_charts_are_inline_svg_one_per_chart(draft: BatchRecord) -> None:
    text = rr.render_html(draft, for_pdf=True)
    svgs = re.findall(r"<svg .*?</svg>", text, re.S)
    assert len(svgs) == len(draft.charts) == 6
    for c, svg in zip(draft.charts, svgs, strict=True):
        root = _svg(svg)
        assert root.get("data-role") == c.role
        drawn = rr.decimate(c.points, rr.CHART_WIDTH)
        assert sum(len(s) for s in _polylines(root)) == sum(1 for p in drawn if p[1] is not None)
        assert len(_limits(root)) == sum(1 for b in (c.band or ()) if b is not None)


def test_the_pdf_source_is_standalone_and_marks_a_draft(draft: BatchRecord, issued: BatchRecord) -> None:
    for record in (draft, issued):
        text = rr.render_html(record, for_pdf=True)
        assert "<script" not in text and "<link" not in text
        assert not re.search(r'(src|href)="(https?:|//|/)', text), "nothing to fetch, no link out of the document"
        assert 'content: "Page " counter(page) " of " counter(pages)' in text
        assert "@media print" in text
    assert '<div class="draft-mark" aria-hidden="true">DRAFT</div>' in rr.render_html(draft, for_pdf=True)
    issued_text = rr.render_html(issued, for_pdf=True)
    body = issued_text.split("</style>")[1]
    assert "DRAFT" not in body and "draft-mark" not in body
    assert "Version 2, issued 2026-11-28 14:00:00 UTC" in issued_text


def test_the_screen_version_links_the_pdf(draft: BatchRecord) -> None:
    text = rr.render_html(draft)
    assert 'href="/api/v1/runs/42/record.pdf"' in text and "Draft: the record as it stands now" in text
    assert "attached to this PDF" not in text


# ---- the PDF ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def draft_pdf(draft: BatchRecord) -> tuple[bytes, bytes]:
    body = draft.model_dump_json().encode()
    return rr.render_pdf(draft, body), body


@pytest.fixture(scope="module")
def issued_pdf(issued: BatchRecord) -> tuple[bytes, bytes]:
    body = issued.model_dump_json().encode()
    return rr.render_pdf(issued, body), body


def _pages(pdf: bytes) -> list[str]:
    return [p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages]


def test_every_page_of_a_draft_is_numbered_headed_and_marked_draft(draft_pdf: tuple[bytes, bytes]) -> None:
    pages = _pages(draft_pdf[0])
    assert len(pages) > 1
    for n, text in enumerate(pages, 1):
        assert f"Page {n} of {len(pages)}" in text, n
        assert "DRAFT" in text, n
        assert "Batch record HTLP-2026-0042" in text and "Draft, not an issued version" in text, n


def test_an_issued_version_has_no_draft_mark(issued_pdf: tuple[bytes, bytes]) -> None:
    pages = _pages(issued_pdf[0])
    assert len(pages) > 1
    for n, text in enumerate(pages, 1):
        assert f"Page {n} of {len(pages)}" in text
        assert "DRAFT" not in text
        assert "Version 2, issued 2026-11-28 14:00:00 UTC" in text


def test_the_record_json_is_embedded_as_an_associated_file(draft_pdf: tuple[bytes, bytes], issued: BatchRecord,
                                                           issued_pdf: tuple[bytes, bytes], draft: BatchRecord) -> None:
    for (pdf, body), record in ((draft_pdf, draft), (issued_pdf, issued)):
        reader = pypdf.PdfReader(io.BytesIO(pdf))
        name = rr.attachment_name(record)
        assert list(reader.attachments) == [name]
        (embedded,) = reader.attachments[name]
        assert embedded == body
        assert json.loads(embedded) == record.model_dump(mode="json")
        assert BatchRecord.model_validate_json(embedded) == record
        root: Any = reader.trailer["/Root"]
        spec = root["/AF"][0].get_object()  # PDF/A-3: the catalog's associated files
        assert spec["/AFRelationship"] == "/Source" and spec["/F"] == name
        assert spec["/EF"]["/F"].get_object()["/Subtype"] == "/application/json"  # pypdf decodes the name


def test_the_pdf_is_pdf_a_3b_with_the_records_metadata(draft_pdf: tuple[bytes, bytes]) -> None:
    reader = pypdf.PdfReader(io.BytesIO(draft_pdf[0]))
    xmp = reader.xmp_metadata
    assert xmp is not None and xmp.pdfaid_part == "3" and xmp.pdfaid_conformance == "B"
    root: Any = reader.trailer["/Root"]
    raw = root["/Metadata"].get_object().get_data().decode()
    assert 'pdfaid:part="3"' in raw and 'pdfaid:conformance="B"' in raw
    assert root["/OutputIntents"][0].get_object()["/S"] == "/GTS_PDFA1"
    info = reader.metadata
    assert info is not None and info.title == "Batch record HTLP-2026-0042 (draft)"
    assert str(info["/CreationDate"]) == "D:20261128140000Z"  # the record's generation time, not the rendering's
