"""Batch record rendering benchmark: the HTML page and the archival PDF of a 7-day run, and the JSON's size.

Run `python -m bench.record` (`--runs` the repeats). The record is synthetic (tests/unit/record_fixture.py): 6 charts
of 2,016 five-minute points (7 days), 10 steps, 50 alarm events, 200 audit entries; `--json FILE` renders a real
run's record instead (the JSON of `GET /api/v1/runs/{id}/record`). Prints the median time and size of the HTML
(`render_html`, the PDF's source) and of the PDF (`render_pdf`: layout, fonts, PDF/A) over the runs, and the
JSON's size. It prints, it does not assert.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.records import record_render
from app.records.record_model import BatchRecord
from tests.unit.record_fixture import sample_record

T = TypeVar("T")


def _timed(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """The median wall time of `runs` calls and the last call's result."""
    times = []
    out: T | None = None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return statistics.median(times), out


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.2f} MiB"


def bench(record: BatchRecord, runs: int) -> None:
    body = record.model_dump_json().encode()
    points = sum(len(c.points) for c in record.charts)
    print(f"record {record.identity.run_code} ({record_render.version_label(record)}): {len(record.charts)} charts, "
          f"{points:,} points, {len(record.steps)} steps, {len(record.alarms)} alarm events, "
          f"{len(record.audit)} audit entries")
    html_s, html = _timed(lambda: record_render.render_html(record), runs)
    pdf_html_s, _ = _timed(lambda: record_render.render_html(record, for_pdf=True), runs)
    pdf_s, pdf = _timed(lambda: record_render.render_pdf(record, body), runs)
    print(f"  JSON                      {_size(len(body)):>10}")
    print(f"  HTML page   {html_s * 1000:8.0f} ms   {_size(len(html.encode())):>10}")
    print(f"  HTML (PDF)  {pdf_html_s * 1000:8.0f} ms")
    print(f"  PDF/A-3b    {pdf_s * 1000:8.0f} ms   {_size(len(pdf)):>10}   (JSON attached, {_page_count(pdf)} pages)")


def _page_count(pdf: bytes) -> str:
    try:
        import io

        import pypdf
    except ImportError:  # pypdf is in the test extras
        return "?"
    return str(len(pypdf.PdfReader(io.BytesIO(pdf)).pages))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    ap.add_argument("--runs", type=int, default=3, help="repeats; medians are printed (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="a record's JSON (GET /api/v1/runs/{id}/record)")
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, medians of {args.runs} runs")
    if args.json is not None:
        record = BatchRecord.model_validate_json(args.json.read_bytes())
    else:
        record = sample_record(points=2016, steps=10, alarms=50, audit=200)
    bench(record, max(1, args.runs))


if __name__ == "__main__":
    main()
