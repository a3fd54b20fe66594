"""The batch record as people read it: one HTML document (the dashboard page and the print), the archival PDF.

`render_html` renders `app/web/templates/record.html` (its sections in `record_body.html`, the stylesheet in
`app/web/static/record.css`) standalone: the PDF's source, with no script and nothing fetched. The dashboard's page
(`GET /runs/{id}/record`) renders the same template inside its own layout with `record_context()`.

`render_pdf` makes the PDF with WeasyPrint: PDF/A-3b, the record's JSON embedded as an associated file, page n of N,
the run code and version on every page and a diagonal DRAFT mark on every page of a draft. WeasyPrint is imported
when a PDF is asked for, so the service runs (without PDFs) on a machine without Pango.

Charts are vector SVG drawn here (`chart_svg`, pure): the means as a polyline, the min/max band shaded, the limit
band as dashed lines, axes with ticks and the unit, time in days from the first point. A chart of more points than
its width has units is decimated to one point per unit (mean of the means, min of the minima, max of the maxima):
the band still holds every extreme; the JSON keeps every point.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
from markupsafe import Markup

from app.core.problems import Problem
from app.records import record_rules
from app.records.record_model import BatchRecord, ChartView

_WEB = Path(__file__).resolve().parents[1] / "web"
TEMPLATES_DIR = _WEB / "templates"
CSS_PATH = _WEB / "static" / "record.css"
TEMPLATE = "record.html"
STANDALONE_LAYOUT = "record_doc.html"  # the document without the dashboard (the PDF, a saved page)
PDF_VARIANT = "pdf/a-3b"

# The document's sections in reading order: the exceptions QA reviews first, then the model's order, the chain last.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("exceptions", "Exceptions for review"),
    ("identity", "Identity"),
    ("equipment", "Equipment and calibration"),
    ("materials", "Materials"),
    ("steps", "Steps"),
    ("deviations", "Deviations"),
    ("alarms", "Alarms"),
    ("excursions", "Excursions and door openings"),
    ("setpoints", "Setpoint changes"),
    ("charts", "Charts"),
    ("product", "Product"),
    ("release", "Release and signatures"),
    ("audit", "Audit extract"),
    ("chain", "Audit chain and content hash"),
)
CHART_LABELS = {
    "temperature": "Incubator temperature",
    "co2": "Incubator CO2",
    "humidity": "Incubator RH",
    "viable_cell_density": "Viable cell density",
    "viability": "Viability",
    "cd7_percent": "%CD7+",
}
CHART_WIDTH = 720
CHART_HEIGHT = 250
DASH = "\u2014"


# ---- names ------------------------------------------------------------------------------------------------------

def version_label(record: BatchRecord) -> str:
    """'v3' for an issued version, 'draft' for the current draft (as file names and headers have it)."""
    v = record.version
    return "draft" if v.draft or v.number is None else f"v{v.number}"


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def file_stem(record: BatchRecord) -> str:
    """batch-record-<run code>-v<n> or batch-record-<run code>-vdraft."""
    v = record.version
    number = "draft" if v.draft or v.number is None else v.number
    return f"batch-record-{_file_safe(record.identity.run_code)}-v{number}"


def attachment_name(record: BatchRecord) -> str:
    """The file name of the JSON embedded in the PDF."""
    return f"{file_stem(record)}.json"


def pdf_name(record: BatchRecord) -> str:
    """The PDF's file name (Content-Disposition)."""
    return f"{file_stem(record)}.pdf"


# ---- values as the record prints them (exact: a recorded value is never rounded) -------------------------------

def fmt_time(value: datetime | date | str | None) -> str:
    """UTC time to the second: 2026-11-21 14:05:09 UTC; a date as is; None as a dash."""
    if value is None:
        return DASH
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return fmt_time(parsed)
    if isinstance(value, datetime):
        t = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return t.strftime("%Y-%m-%d %H:%M:%S UTC")
    return value.isoformat()


def fmt_number(value: float | int) -> str:
    """A number exactly as recorded, shortest form; large whole numbers as 1.2e10 (digits kept, none added)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return _sci_int(value) if abs(value) >= 10**6 else str(value)
    if not math.isfinite(value):
        return str(value)
    text = repr(value)
    if "e" in text:
        mantissa, exp = text.split("e")
        return f"{mantissa.removesuffix('.0')}e{int(exp)}"
    if value.is_integer():
        return _sci_int(int(value)) if abs(value) >= 1e6 else text.removesuffix(".0")
    return text


def _sci_int(value: int) -> str:
    digits = str(abs(value))
    kept = digits.rstrip("0") or "0"
    mantissa = kept[0] + (f".{kept[1:]}" if len(kept) > 1 else "")
    return f"{'-' if value < 0 else ''}{mantissa}e{len(digits) - 1}"


def fmt_value(value: Any, unit: str | None = None) -> str:
    """A recorded value with its unit: numbers exact, booleans yes/no, None a dash, structures as compact JSON."""
    if value is None:
        return DASH
    if isinstance(value, bool | int | float):
        text = fmt_number(value)
    elif isinstance(value, datetime | date):
        text = fmt_time(value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, default=str, separators=(", ", ": "))
    return f"{text} {unit}" if unit and not isinstance(value, bool) else text


def fmt_words(text: str | None) -> str:
    """An identifier in words: late_step -> late step."""
    return DASH if not text else text.replace("_", " ")


def window_text(window: Mapping[str, Any] | None) -> str:
    """A step window: earliest - latest (target), hard limit if any."""
    if not window:
        return DASH
    text = f"{fmt_time(window.get('earliest'))} \u2013 {fmt_time(window.get('latest'))}"
    if window.get("target"):
        text += f" (target {fmt_time(window.get('target'))})"
    if window.get("hard_latest"):
        text += f", hard limit {fmt_time(window.get('hard_latest'))}"
    return text


def band_text(band: Sequence[float | None] | None, unit: str | None = None) -> str:
    """A limit band: 36 - 38 C, >= 85 %RH, <= 1 %; no band a dash."""
    low, high = (band[0], band[1]) if band else (None, None)
    if low is not None and high is not None:
        text = f"{fmt_number(low)} \u2013 {fmt_number(high)}"
    elif low is not None:
        text = f"\u2265 {fmt_number(low)}"
    elif high is not None:
        text = f"\u2264 {fmt_number(high)}"
    else:
        return DASH
    return f"{text} {unit}" if unit else text


def flat_items(data: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """A nested mapping as (dotted key, value text) rows, in order."""
    out: list[tuple[str, str]] = []
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += flat_items(value, f"{name}.")
        else:
            out.append((fmt_words(name), fmt_value(value)))
    return out


def columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The keys of a list of mappings, in first-seen order (a table's columns)."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


# ---- charts -----------------------------------------------------------------------------------------------------

Point = tuple[datetime, float | None, float | None, float | None]


def decimate(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most `max_points` points: consecutive groups of ceil(n / max_points) as (first time, mean of the means,
    min of the minima, max of the maxima); a group without values keeps None. Fewer points are returned as they are."""
    n = len(points)
    if max_points < 1 or n <= max_points:
        return list(points)
    size = math.ceil(n / max_points)
    out: list[Point] = []
    for i in range(0, n, size):
        group = points[i:i + size]
        means = [p[1] for p in group if p[1] is not None]
        lows = [p[2] for p in group if p[2] is not None]
        highs = [p[3] for p in group if p[3] is not None]
        out.append((group[0][0], sum(means) / len(means) if means else None, min(lows) if lows else None,
                    max(highs) if highs else None))
    return out


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering lo..hi, about `target` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    step = _nice_step((hi - lo) / max(1, target))
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [_clean(k * step) for k in range(first, last + 1)]


def _nice_step(raw: float) -> float:
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power * (1 + 1e-9):
            return m * power
    return 10 * power


def _clean(v: float) -> float:
    v = round(v, 12)
    return 0.0 if v == 0 else v


def tick_label(value: float, step: float) -> str:
    """A tick's text with as many decimals as the step needs; large values as 1.5e6."""
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        mantissa, exp = f"{value:.3g}".split("e") if "e" in f"{value:.3g}" else (f"{value:.3g}", "0")
        return f"{mantissa}e{int(exp)}"
    decimals = 0
    while decimals < 6 and abs(round(step * 10**decimals) - step * 10**decimals) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


@dataclass(frozen=True, slots=True)
class _Frame:
    x0: float
    x1: float
    y0: float
    y1: float
    xlo: float
    xhi: float
    ylo: float
    yhi: float

    def x(self, days: float) -> float:
        return self.x0 + (days - self.xlo) / (self.xhi - self.xlo) * (self.x1 - self.x0)

    def y(self, value: float) -> float:
        return self.y1 - (value - self.ylo) / (self.yhi - self.ylo) * (self.y1 - self.y0)


def _runs(points: Sequence[Point], index: Sequence[int], t0: datetime,
          gap_days: float) -> list[list[tuple[float, list[float]]]]:
    """Unbroken runs of (days, values at `index`): a missing value or a time gap ends a run."""
    out: list[list[tuple[float, list[float]]]] = []
    current: list[tuple[float, list[float]]] = []
    last: float | None = None
    for p in points:
        days = (p[0] - t0).total_seconds() / 86400
        measured = p[1:]
        values = [measured[i - 1] for i in index]
        present = all(v is not None and math.isfinite(v) for v in values)
        if current and (not present or (last is not None and days - last > gap_days)):
            out.append(current)
            current = []
        if present:
            current.append((days, [float(v) for v in values if v is not None]))
        last = days
    if current:
        out.append(current)
    return out


def _gap_days(points: Sequence[Point]) -> float:
    """A break in the line: more than 3 times the usual spacing of the points."""
    deltas = sorted(d for d in ((b[0] - a[0]).total_seconds() / 86400 for a, b in itertools.pairwise(points)) if d > 0)
    return math.inf if not deltas else 3 * deltas[len(deltas) // 2]


def _f(v: float) -> str:
    text = f"{v:.1f}"
    return text[:-2] if text.endswith(".0") else text


def chart_svg(chart: ChartView, width: int = CHART_WIDTH, height: int = CHART_HEIGHT, *,
              max_points: int | None = None, title: str | None = None) -> str:
    """One chart as a standalone SVG element (no script, no style sheet: presentation attributes only).

    The means are `polyline.mean` elements (one per unbroken run), the min/max band `polygon.range`, the limit band
    `line.limit` (data-limit low/high), axes `g.axis-x` (days from the first point) and `g.axis-y` (the unit).
    `max_points` (default: the width) decimates longer series with `decimate`."""
    label = title or CHART_LABELS.get(chart.role, fmt_words(chart.role))
    points = decimate(chart.points, width if max_points is None else max_points)
    ml, mr, mt, mb = 62.0, 14.0, 12.0, 40.0
    t0 = points[0][0] if points else None
    span = 0.0 if t0 is None else (points[-1][0] - t0).total_seconds() / 86400
    xticks = nice_ticks(0.0, span if span > 0 else 1.0, 8)
    values = [v for p in points for v in p[1:] if v is not None and math.isfinite(v)]
    limits = [b for b in (chart.band or (None, None)) if b is not None]
    lo, hi = (min(values + limits), max(values + limits)) if values or limits else (0.0, 1.0)
    pad = (hi - lo) * 0.06 if hi > lo else max(abs(lo) * 0.05, 1.0)
    yticks = nice_ticks(lo - pad, hi + pad, 5)
    frame = _Frame(ml, width - mr, mt, height - mb, xticks[0], xticks[-1] if len(xticks) > 1 else xticks[0] + 1,
                   yticks[0], yticks[-1] if len(yticks) > 1 else yticks[0] + 1)
    text = 'font-family="DejaVu Sans, Arial, sans-serif"'
    unit = html.escape(chart.unit)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="record-chart" data-role="{html.escape(chart.role)}" '
           f'data-points="{len(chart.points)}" data-drawn="{len(points)}" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{html.escape(label)} ({unit})">',
           f"<title>{html.escape(label)} ({unit}), {html.escape(chart.channel)}</title>",
           f'<rect x="{_f(frame.x0)}" y="{_f(frame.y0)}" width="{_f(frame.x1 - frame.x0)}" '
           f'height="{_f(frame.y1 - frame.y0)}" fill="none" stroke="#555555" stroke-width="0.8"/>']
    step_y = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
    step_x = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
    grid = ['<g class="grid" stroke="#e2e2e2" stroke-width="0.6">']
    grid += [f'<line x1="{_f(frame.x0)}" y1="{_f(frame.y(v))}" x2="{_f(frame.x1)}" y2="{_f(frame.y(v))}"/>'
             for v in yticks[1:-1]]
    grid += [f'<line x1="{_f(frame.x(d))}" y1="{_f(frame.y0)}" x2="{_f(frame.x(d))}" y2="{_f(frame.y1)}"/>'
             for d in xticks[1:-1]]
    out += [*grid, "</g>"]
    gap = _gap_days(points)
    if t0 is not None:
        out.append('<g class="ranges">')
        for run in _runs(points, (2, 3), t0, gap):
            upper = [f"{_f(frame.x(d))},{_f(frame.y(v[1]))}" for d, v in run]
            lower = [f"{_f(frame.x(d))},{_f(frame.y(v[0]))}" for d, v in reversed(run)]
            out.append(f'<polygon class="range" fill="#c9dcf2" stroke="#c9dcf2" stroke-width="0.5" '
                       f'points="{" ".join(upper + lower)}"/>')
        out.append("</g>")
    out.append('<g class="limits">')
    for name, value in zip(("low", "high"), chart.band or (None, None), strict=True):
        if value is None:
            continue
        y = _f(frame.y(value))
        out.append(f'<line class="limit" data-limit="{name}" data-value="{value}" x1="{_f(frame.x0)}" y1="{y}" '
                   f'x2="{_f(frame.x1)}" y2="{y}" stroke="#b3261e" stroke-width="1" stroke-dasharray="6 3"/>')
        dy = -3 if name == "high" else 10
        out.append(f'<text x="{_f(frame.x1 - 4)}" y="{_f(frame.y(value) + dy)}" text-anchor="end" font-size="9" '
                   f'fill="#b3261e" {text}>{name} {html.escape(fmt_number(value))} {unit}</text>')
    out.append("</g>")
    if t0 is not None:
        for run in _runs(points, (1,), t0, gap):
            coords = " ".join(f"{_f(frame.x(d))},{_f(frame.y(v[0]))}" for d, v in run)
            out.append(f'<polyline class="mean" fill="none" stroke="#1f4e8c" stroke-width="1.2" '
                       f'stroke-linejoin="round" points="{coords}"/>')
    else:
        out.append(f'<text x="{_f((frame.x0 + frame.x1) / 2)}" y="{_f((frame.y0 + frame.y1) / 2)}" '
                   f'text-anchor="middle" font-size="12" fill="#555555" {text}>No data</text>')
    # axes: ticks outside the plot, labels, the unit and the time origin
    axis_x = [f'<g class="axis-x" font-size="9" fill="#222222" {text}>']
    for d in xticks:
        x = _f(frame.x(d))
        axis_x.append(f'<line x1="{x}" y1="{_f(frame.y1)}" x2="{x}" y2="{_f(frame.y1 + 4)}" stroke="#555555" '
                      f'stroke-width="0.8"/><text x="{x}" y="{_f(frame.y1 + 14)}" text-anchor="middle">'
                      f"{tick_label(d, step_x)}</text>")
    origin = f" from {fmt_time(t0)}" if t0 is not None else ""
    axis_x.append(f'<text class="axis-title" x="{_f((frame.x0 + frame.x1) / 2)}" y="{_f(height - 6)}" '
                  f'text-anchor="middle">days{html.escape(origin)}</text></g>')
    axis_y = [f'<g class="axis-y" font-size="9" fill="#222222" {text}>']
    for v in yticks:
        y = _f(frame.y(v))
        axis_y.append(f'<line x1="{_f(frame.x0 - 4)}" y1="{y}" x2="{_f(frame.x0)}" y2="{y}" stroke="#555555" '
                      f'stroke-width="0.8"/><text x="{_f(frame.x0 - 6)}" y="{_f(frame.y(v) + 3)}" '
                      f'text-anchor="end">{tick_label(v, step_y)}</text>')
    cy = _f((frame.y0 + frame.y1) / 2)
    axis_y.append(f'<text class="axis-title" x="12" y="{cy}" text-anchor="middle" '
                  f'transform="rotate(-90 12 {cy})">{unit}</text></g>')
    out += [*axis_x, *axis_y, "</svg>"]
    return "".join(out)


# ---- the document -----------------------------------------------------------------------------------------------

# The formatting functions the template calls (`f.time(...)`), the same in every Jinja environment.
FORMATS = SimpleNamespace(time=fmt_time, value=fmt_value, number=fmt_number, words=fmt_words, window=window_text,
                          band=band_text, items=flat_items, columns=columns)


def css_string(text: str) -> str:
    """A CSS string literal that is safe inside a <style> element."""
    escaped = "".join(c if c.isalnum() or c in " .,:;-_()/+#%" else f"\\{ord(c):x} " for c in text)
    return f'"{escaped}"'


def record_context(record: BatchRecord, *, for_pdf: bool) -> dict[str, Any]:
    """What record.html needs (the dashboard page adds its own layout's context)."""
    charts = [{"chart": c, "label": CHART_LABELS.get(c.role, fmt_words(c.role)), "svg": Markup(chart_svg(c))}
              for c in record.charts]
    v = record.version
    if v.draft or v.number is None:
        version_text = "Draft, not an issued version"
    else:
        version_text = f"Version {v.number}" + (f", issued {fmt_time(v.issued_at)}" if v.issued_at else "")
    header = f"Batch record {record.identity.run_code}"
    # an issued version's hash as issued; a draft's computed now (what a release now would sign)
    content_hash = v.content_hash or record_rules.content_hash(record)
    return {
        "record": record, "for_pdf": for_pdf, "sections": SECTIONS, "content_hash": content_hash, "charts": charts,
        "f": FORMATS,
        "draft": v.draft, "version_text": version_text, "version_label": version_label(record),
        "record_css": Markup(CSS_PATH.read_text(encoding="utf-8")), "attachment_name": attachment_name(record),
        "pdf_name": pdf_name(record), "doc_title": f"{header} ({version_label(record)})",
        "page_header_left": Markup(css_string(header)), "page_header_right": Markup(css_string(version_text)),
        "page_footer_left": Markup(css_string(f"Generated {fmt_time(record.generated_at)}")),
        "pdf_href": f"/api/v1/runs/{record.identity.run_id}/record.pdf",
    }


_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(record: BatchRecord, *, for_pdf: bool = False) -> str:
    """The whole record as one standalone HTML document (no script, nothing to fetch); `for_pdf` leaves out the
    screen's links and banner and marks every page of a draft."""
    return _ENV.get_template(TEMPLATE).render(layout=STANDALONE_LAYOUT, **record_context(record, for_pdf=for_pdf))


class PdfUnavailable(RuntimeError):
    """WeasyPrint or the system libraries it needs (Pango) are missing."""


def render_pdf(record: BatchRecord, json_bytes: bytes) -> bytes:
    """The archival PDF (PDF/A-3b) of the record, with `json_bytes` (the record's JSON) embedded as
    batch-record-<run code>-v<n or draft>.json. CPU-bound for seconds: call it off the event loop."""
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: cannot load Pango
        raise PdfUnavailable(f"PDF rendering needs WeasyPrint and Pango ({exc})") from exc
    stamp = record.generated_at.astimezone(UTC).replace(tzinfo=None)  # WeasyPrint writes it with a Z
    fetcher = weasyprint.URLFetcher(allowed_protocols=())  # the document is self-contained: fetch nothing
    attachment = weasyprint.Attachment(
        string=json_bytes, name=attachment_name(record), relationship="Source", created=stamp, modified=stamp,
        description=f"Batch record {record.identity.run_code} ({version_label(record)}), schema "
                    f"{record.schema_version}: the data this document shows", url_fetcher=fetcher)
    document = weasyprint.HTML(string=render_html(record, for_pdf=True), url_fetcher=fetcher, base_url=None)
    pdf: bytes = document.write_pdf(pdf_variant=PDF_VARIANT, attachments=[attachment])
    return pdf


_PDF_SLOTS = threading.BoundedSemaphore(2)  # PDFs rendered at once: each is seconds of CPU and some 100 MB


def _render_pdf_bounded(record: BatchRecord, json_bytes: bytes) -> bytes:
    with _PDF_SLOTS:
        return render_pdf(record, json_bytes)


async def render_pdf_async(record: BatchRecord, json_bytes: bytes) -> bytes:
    """`render_pdf` in a worker thread (two at a time), so the service's loop keeps serving; a 503 problem when
    WeasyPrint cannot run on this machine."""
    try:
        return await asyncio.to_thread(_render_pdf_bounded, record, json_bytes)
    except PdfUnavailable as exc:
        raise Problem(503, "pdf-unavailable", "PDF rendering unavailable", str(exc)) from exc
