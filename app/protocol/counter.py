"""Cell counter result exports, pure: the bytes an operator uploads in, the samples and their counts out.

An automated cell counter writes its results as a CSV export. `parse_export` reads one (bytes, the file name
only for messages), recognises which counter wrote it from its headers (`FORMATS`, data: a new counter is a
new `CounterFormat`), and returns every sample with its viable density in cells/mL, total density, viability
in % and measurement time, plus the instrument's serial number and software version when the file carries
them and the SHA-256 of the raw bytes (what the record keeps as evidence of the file imported).

What is read:
- UTF-8 (with or without a byte-order mark), Latin-1 (as Windows-1252 where the two differ), or UTF-16 with a
  byte-order mark; CRLF, LF or CR line ends;
- comma, semicolon or tab separated, quoted or not; metadata lines above the header (instrument serial,
  software version, timestamps) in `key,value` or `key: value` form;
- two layouts: `rows` (a header line, one sample per line below it) and `fields` (one sample per file, one
  `key;value` line per result);
- numbers as the instruments write them: `0.75`, `2.45E6`, `1.07E+06`, `274 000` (thousands grouped with
  spaces), a trailing `%` on a viability, and a decimal comma (`0,75`) in semicolon- or tab-separated files.
  The unit comes from the header (`Viable (x10^6) cells/mL` is scaled by 10^6), per alias in `FORMATS`.

What is refused, each problem with its line, column and field (`CounterFileError.errors`, for a 422): an empty
file, one over `MAX_BYTES`, a workbook or other binary file, an unknown format (naming the headers seen and the
known formats), a missing column, a malformed line, a value that is empty, not a number (NaN and infinity
included), negative, a viability outside 0..100, a viable density above the total density, a number with a
comma in a comma-separated file or a file mixing decimal points and decimal commas (either could be read
1000x wrong), duplicate sample ids, and a file naming two different instruments.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

MAX_BYTES = 1_048_576  # 1 MiB: a counter's export is a few kB; anything near this is not one
MAX_ERRORS = 50  # a file wrong on every line answers with the first problems, not thousands
_SEPARATORS = (",", ";", "\t")
_SCAN_LINES = 100  # the header is looked for in the first lines only

Layout = Literal["rows", "fields"]


@dataclass(frozen=True, slots=True)
class CounterFormat:
    """One counter's export, as data.

    A file is this format when one line (`rows`) or the file's keys (`fields`) hold every `detect` header;
    with `detect` empty (the generic format) when the sample id, viable density and viability columns are all
    there. The first format in `FORMATS` that matches wins, so specific counters come before the generic one.
    Header names are compared case-insensitively with spacing, a trailing ':' and the micro sign normalised.
    Each density alias carries the factor from its unit to cells/mL. `measured_at`, `instrument_id`,
    `software` and `status` are looked up among the columns first, then in the metadata above the header.
    """

    name: str
    instrument: str
    layout: Layout
    detect: tuple[str, ...]
    sample_id: tuple[str, ...]
    viable_density: tuple[tuple[str, float], ...]
    viability: tuple[str, ...]
    total_density: tuple[tuple[str, float], ...] = ()
    measured_at: tuple[str, ...] = ()
    date_formats: tuple[str, ...] = ()
    tz_offset: tuple[str, ...] = ()  # a metadata key holding the hours from UTC of `measured_at`
    times_utc: bool = False  # `measured_at` is UTC by the format's definition
    instrument_id: tuple[str, ...] = ()
    software: tuple[str, ...] = ()
    status: tuple[str, ...] = ()


_US_DATES = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M %p", "%m/%d/%Y %I:%M:%S %p")
_E6 = 1e6

FORMATS: tuple[CounterFormat, ...] = (
    CounterFormat(
        name="vi-cell-blu", instrument="Beckman Coulter Vi-CELL BLU (sample results CSV)", layout="rows",
        detect=("Sample ID", "Analysis date/time", "Decluster degree"),
        sample_id=("Sample ID",),
        viable_density=(("Viable (x10^6) cells/mL", _E6),),
        total_density=(("Total (x10^6) cells/mL", _E6),),
        viability=("Viability (%)",),
        measured_at=("Analysis date/time",), date_formats=_US_DATES,
    ),
    CounterFormat(
        name="nc-202-table", instrument="ChemoMetec NucleoCounter NC-202 (results table CSV)", layout="rows",
        detect=("SAMPLE ID", "INSTRUMENT", "DEBRIS INDEX"),
        sample_id=("SAMPLE ID",),
        viable_density=(("LIVE (cells/ml)", 1.0),),
        total_density=(("TOTAL (cells/ml)", 1.0),),
        viability=("VIABILITY (%)",),
        instrument_id=("INSTRUMENT",), status=("STATUS",),
    ),
    CounterFormat(
        name="nc-202-single", instrument="ChemoMetec NucleoCounter NC-202 (single result, tab separated)",
        layout="fields",
        detect=("Source ID", "Sample Media", "Debris Index"),
        sample_id=("Sample ID",),
        viable_density=(("Live (cells/ml)", 1.0),),
        total_density=(("Total (cells/ml)", 1.0),),
        viability=("Viability (%)",),
        measured_at=("Time (UTC)",), date_formats=("%Y-%m-%d %H:%M:%S",), times_utc=True,
        instrument_id=("Instrument",), software=("Software version",), status=("Status",),
    ),
    CounterFormat(
        name="nc-200", instrument="ChemoMetec NucleoCounter NC-200 (NucleoView result, semicolon separated)",
        layout="fields",
        detect=("Image", "Multiplication factor"),
        sample_id=("Image",),
        viable_density=(("Live (cells/ml)", 1.0),),
        total_density=(("Total (cells/ml)", 1.0),),
        viability=("Viability (%)",),
        measured_at=("Date time",), date_formats=("%Y%m%d %H%M%S",), tz_offset=("Time zone offset",),
        instrument_id=("Instrument s/n",), software=("Application SW version",),
    ),
    CounterFormat(
        name="cellaca-mx", instrument="Revvity (Nexcelom) Cellaca MX (results CSV)", layout="rows",
        detect=("Well Name", "Live Count", "Dead Count", "Total Count"),
        sample_id=("Well Name",),
        viable_density=(("Live Concentration (E6)", _E6), ("Live Cells/mL", 1.0)),
        total_density=(("Total Concentration (E6)", _E6), ("Total Cells/mL", 1.0)),
        viability=("Viability (%)", "Viability"),
        measured_at=("Results Timestamp",), date_formats=_US_DATES,
        instrument_id=("Instrument SN",), status=("Errors",),
    ),
    CounterFormat(
        name="generic", instrument="any counter, in the site's template (see docs/identity.md)", layout="rows",
        detect=(),
        sample_id=("Sample ID", "Sample", "Sample name"),
        viable_density=(("Viable cells/mL", 1.0), ("Live cells/mL", 1.0), ("Viable density (cells/mL)", 1.0),
                        ("Viable (x10^6 cells/mL)", _E6), ("Viable cells (x10^6/mL)", _E6),
                        ("Live cells (x10^6/mL)", _E6)),
        total_density=(("Total cells/mL", 1.0), ("Total density (cells/mL)", 1.0),
                       ("Total (x10^6 cells/mL)", _E6), ("Total cells (x10^6/mL)", _E6)),
        viability=("Viability (%)", "Viability"),
        measured_at=("Measured at", "Date/time", "Timestamp"),
        date_formats=("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S"),
        instrument_id=("Instrument serial", "Serial number", "Instrument S/N"),
        software=("Software version", "Software"),
        status=("Status",),
    ),
)


@dataclass(frozen=True, slots=True)
class CounterSample:
    """One sample's result. Densities in cells/mL, viability in %; `row` is the file line it came from."""

    sample_id: str
    viable_density: float
    total_density: float | None
    viability: float
    measured_at: str | None  # ISO 8601 when the format's date layout parsed it, else as in the file
    row: int
    status: str | None = None  # the counter's own result status or warnings, as in the file


@dataclass(frozen=True, slots=True)
class CounterExport:
    format: str
    instrument_id: str | None  # the serial number in the file; None when the file has none
    software: str | None
    samples: tuple[CounterSample, ...]
    sha256: str  # hex, of the raw bytes


class CounterFileError(ValueError):
    """Every problem found, each a dict with line, column (1-based, None for the whole file), field, rule,
    detail."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(e["detail"] for e in errors))


def _problem(rule: str, detail: str, line: int | None = None, column: int | None = None,
             field: str | None = None) -> dict[str, Any]:
    return {"line": line, "column": column, "field": field, "rule": rule, "detail": detail}


def _fail(rule: str, detail: str, line: int | None = None, column: int | None = None,
          field: str | None = None) -> CounterFileError:
    return CounterFileError([_problem(rule, detail, line, column, field)])


# ---- text -------------------------------------------------------------------------------------------------


def _named(filename: str) -> str:
    return f"{filename}: " if filename else ""


def _decode(data: bytes, filename: str) -> str:
    if data.startswith(b"PK\x03\x04"):
        raise _fail("encoding", f"{_named(filename)}this is a workbook (.xlsx) or other zip file, not a CSV export; "
                                "export the results as CSV")
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise _fail("encoding", f"{_named(filename)}this is an Excel 97-2003 workbook (.xls), not a CSV export; "
                                "export the results as CSV")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise _fail("encoding", f"{_named(filename)}starts with a UTF-16 byte-order mark but is not UTF-16 "
                                    f"text (byte {exc.start})") from None
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:  # Latin-1 as Windows writes it: its 0x80-0x9F are dashes and quotes, not control codes
                text = data.decode("cp1252")
            except UnicodeDecodeError:
                text = data.decode("latin-1")
    text = text.removeprefix("\ufeff")
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        bad = next((c for c in line if (ord(c) < 32 and c != "\t") or 0x7F <= ord(c) < 0xA0), None)
        if bad is not None:
            raise _fail("encoding", f"{_named(filename)}line {number} holds the control byte 0x{ord(bad):02X}: "
                                    "not a text file in UTF-8, Latin-1 or UTF-16 with a byte-order mark",
                        line=number, column=line.index(bad) + 1)
    return text


def _norm(header: str) -> str:
    s = unicodedata.normalize("NFKC", header).replace("\u03bc", "u").replace("\u00d7", "x")
    s = " ".join(s.strip().strip('"').split()).casefold()
    return s[:-1].rstrip() if s.endswith(":") else s


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    cells: tuple[str, ...]

    @property
    def blank(self) -> bool:
        return not any(c.strip() for c in self.cells)


def _read(text: str, sep: str, strict: bool, filename: str = "") -> list[_Line]:
    """The file's lines split into cells, each with the line it starts on. Not strict (format detection): what
    could be read; strict: a malformed line (a stray quote, a cell over the csv module's size limit) refused."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=strict)
    lines: list[_Line] = []
    start = 1
    try:
        for cells in reader:
            lines.append(_Line(start, tuple(cells)))
            start = reader.line_num + 1
    except csv.Error as exc:
        if strict:
            raise _fail("malformed_line", f"{_named(filename)}line {start} is not a well-formed CSV line: {exc}",
                        line=start) from None
    return lines


# ---- format detection -------------------------------------------------------------------------------------


def _fields(fmt: CounterFormat) -> dict[str, tuple[str, ...]]:
    """The format's columns by sample field, aliases only."""
    return {"sample_id": fmt.sample_id, "viable_density": tuple(a for a, _ in fmt.viable_density),
            "viability": fmt.viability, "total_density": tuple(a for a, _ in fmt.total_density),
            "measured_at": fmt.measured_at, "instrument_id": fmt.instrument_id, "software": fmt.software,
            "status": fmt.status}


_REQUIRED = ("sample_id", "viable_density", "viability")


def _matches(fmt: CounterFormat, names: set[str]) -> bool:
    if fmt.detect:
        return all(_norm(h) in names for h in fmt.detect)
    fields = _fields(fmt)
    return all(any(_norm(a) in names for a in fields[f]) for f in _REQUIRED)


def _keys(lines: Sequence[_Line]) -> set[str]:
    return {_norm(line.cells[0]) for line in lines if line.cells and line.cells[0].strip()}


def _detect(text: str) -> tuple[str, CounterFormat, int | None] | None:
    """(separator, format, index of the header line for `rows`) of the first format that matches."""
    for sep in _SEPARATORS:
        lines = _read(text, sep, strict=False)
        for fmt in FORMATS:
            if fmt.layout == "fields":
                if _matches(fmt, _keys(lines)):
                    return sep, fmt, None
                continue
            for i, line in enumerate(lines[:_SCAN_LINES]):
                if _matches(fmt, {_norm(c) for c in line.cells if c.strip()}):
                    return sep, fmt, i
    return None


def _unknown(text: str, filename: str) -> CounterFileError:
    best: _Line | None = None
    for sep in _SEPARATORS:
        for line in _read(text, sep, strict=False)[:20]:
            filled = [c for c in line.cells if c.strip()]
            if best is None or len(filled) > len([c for c in best.cells if c.strip()]):
                best = _Line(line.number, tuple(filled))
    seen = ", ".join(repr(c.strip()) for c in (best.cells if best else ())[:30]) or "none"
    known = "; ".join(f"{f.name} ({f.instrument})" for f in FORMATS)
    where = f"line {best.number}" if best else "the file"
    return _fail("unknown_format", f"{_named(filename)}not a known cell counter export: {where} has the headers "
                                   f"{seen}; known formats: {known}", line=best.number if best else None)


# ---- values -----------------------------------------------------------------------------------------------

_GROUPED = re.compile(r"^[+-]?\d{1,3}(?:[ \u00a0\u202f\u2009]\d{3})+(?:[.,]\d+)?(?:[eE][+-]?\d+)?$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?$")


@dataclass(slots=True)
class _Cell:
    """A value with where it came from, for messages."""

    text: str
    line: int
    column: int | None
    header: str


class _Problems:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, rule: str, detail: str, cell: _Cell | None = None, field: str | None = None,
            line: int | None = None) -> None:
        self.items.append(_problem(rule, detail, cell.line if cell else line, cell.column if cell else None,
                                   field))

    def raise_if_any(self) -> None:
        if self.items:
            items = self.items[:MAX_ERRORS]
            if len(self.items) > MAX_ERRORS:
                items.append(_problem("too_many_errors", f"{len(self.items) - MAX_ERRORS} more problems not listed"))
            raise CounterFileError(items)


def _where(cell: _Cell) -> str:
    col = f", column {cell.column}" if cell.column is not None else ""
    return f"line {cell.line}{col} ({cell.header!r})"


def _number(cell: _Cell, field: str, sep: str, percent: bool, problems: _Problems,
            marks: dict[str, list[_Cell]]) -> Decimal | None:
    raw = cell.text.strip()
    if not raw:
        problems.add("missing_value", f"{_where(cell)}: no value", cell, field)
        return None
    s = raw[:-1].rstrip() if percent and raw.endswith("%") else raw
    if _GROUPED.match(s):
        s = re.sub(r"[ \u00a0\u202f\u2009]", "", s)
    if not _NUMBER.match(s):
        problems.add("not_a_number", f"{_where(cell)}: {raw!r} is not a number", cell, field)
        return None
    if "," in s:
        if sep == ",":
            problems.add("ambiguous_number", f"{_where(cell)}: {raw!r} has a comma in a comma-separated file; "
                                             "decimal comma or thousands separator?", cell, field)
            return None
        marks[","].append(cell)
        s = s.replace(",", ".")
    elif "." in s.split("e")[0].split("E")[0]:
        marks["."].append(cell)
    try:
        value = Decimal(s)
    except InvalidOperation:  # pragma: no cover - the pattern above admits only what Decimal reads
        problems.add("not_a_number", f"{_where(cell)}: {raw!r} is not a number", cell, field)
        return None
    if value < 0:
        if percent:
            problems.add("viability_range", f"{_where(cell)}: viability {raw!r} is outside 0..100 %", cell, field)
        else:
            problems.add("negative", f"{_where(cell)}: {raw!r} is negative", cell, field)
        return None
    if value == 0:
        value = Decimal(0)  # "-0" is zero
    if not math.isfinite(float(value)):
        problems.add("not_a_number", f"{_where(cell)}: {raw!r} is out of range", cell, field)
        return None
    return value


def _timestamp(raw: str, fmt: CounterFormat, offset: str | None) -> str | None:
    s = raw.strip()
    if not s:
        return None
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(s)
    except ValueError:
        for layout in fmt.date_formats:
            try:
                parsed = datetime.strptime(s, layout)
                break
            except ValueError:
                continue
    if parsed is None:
        return s  # kept as in the file: informative, the step's own time is recorded by the server
    if parsed.tzinfo is None and fmt.times_utc:
        parsed = parsed.replace(tzinfo=UTC)
    elif parsed.tzinfo is None and offset is not None:
        try:
            hours = float(offset.strip().replace(",", "."))
            if not -14 <= hours <= 14:
                raise ValueError(offset)
            parsed = parsed.replace(tzinfo=timezone(timedelta(hours=hours)))
        except ValueError:
            pass  # an unreadable offset leaves the time as the counter's local time
    return parsed.isoformat()


_SERIAL_LABEL = re.compile(r"^(?:s/?n|serial(?: number| no\.?)?)\s*[:#]?\s*", re.IGNORECASE)


def _serial(raw: str) -> str | None:
    s = _SERIAL_LABEL.sub("", raw.strip()).strip()
    return s or None


# ---- parsing ----------------------------------------------------------------------------------------------


def _metadata(lines: Sequence[_Line]) -> dict[str, _Cell]:
    """`key,value` or `key: value` lines, by normalised key; the first of a repeated key."""
    meta: dict[str, _Cell] = {}
    for line in lines:
        filled = [(i, c) for i, c in enumerate(line.cells) if c.strip()]
        if not filled:
            continue
        key_at, key = filled[0]
        if len(filled) >= 2:
            value_at, value = filled[1]
        elif ":" in key:
            key, _, value = key.partition(":")
            value_at = key_at
        else:
            continue
        meta.setdefault(_norm(key), _Cell(value.strip(), line.number, value_at + 1, key.strip()))
    return meta


def _columns(fmt: CounterFormat, header: _Line, problems: _Problems) -> dict[str, tuple[int, str, float]]:
    """Sample field -> (cell index, header as in the file, factor to cells/mL), for the columns present."""
    by_name: dict[str, list[int]] = {}
    for i, cell in enumerate(header.cells):
        if cell.strip():
            by_name.setdefault(_norm(cell), []).append(i)
    factors = {_norm(a): f for a, f in (*fmt.viable_density, *fmt.total_density)}
    found: dict[str, tuple[int, str, float]] = {}
    twice: set[str] = set()
    for field, aliases in _fields(fmt).items():
        hits = [(i, a) for a in aliases for i in by_name.get(_norm(a), [])]
        if len(hits) > 1:
            cols = ", ".join(f"{header.cells[i].strip()!r} (column {i + 1})" for i, _ in hits)
            problems.add("duplicate_column", f"line {header.number}: {field} is in more than one column: {cols}",
                         field=field, line=header.number)
            twice.add(field)
        elif hits:
            i, alias = hits[0]
            found[field] = (i, header.cells[i].strip(), factors.get(_norm(alias), 1.0))
    for field in _REQUIRED:
        if field not in found and field not in twice:
            expected = " or ".join(repr(a) for a in _fields(fmt)[field])
            problems.add("missing_column", f"line {header.number}: the {fmt.name} export has no {field} column "
                                           f"({expected})", field=field, line=header.number)
    return found


def _from_meta(fmt: CounterFormat, meta: dict[str, _Cell], field: str) -> _Cell | None:
    return next((meta[_norm(a)] for a in _fields(fmt)[field] if _norm(a) in meta), None)


def _sample(fmt: CounterFormat, sep: str, cells: dict[str, _Cell], meta: dict[str, _Cell], row: int,
            problems: _Problems, marks: dict[str, list[_Cell]], factors: dict[str, float]) -> CounterSample | None:
    before = len(problems.items)
    sid = cells["sample_id"].text.strip()
    if not sid:
        problems.add("missing_value", f"{_where(cells['sample_id'])}: no sample id", cells["sample_id"], "sample_id")
    viable = _number(cells["viable_density"], "viable_density", sep, False, problems, marks)
    viability = _number(cells["viability"], "viability", sep, True, problems, marks)
    total: Decimal | None = None
    total_cell = cells.get("total_density")
    if total_cell is not None and total_cell.text.strip():
        total = _number(total_cell, "total_density", sep, False, problems, marks)
    if viability is not None and viability > 100:
        problems.add("viability_range", f"{_where(cells['viability'])}: viability {cells['viability'].text.strip()!r}"
                                        " is outside 0..100 %", cells["viability"], "viability")
    viable_d = float(viable * Decimal(repr(factors["viable_density"]))) if viable is not None else None
    total_d = (float(total * Decimal(repr(factors.get("total_density", 1.0)))) if total is not None else None)
    if viable_d is not None and total_d is not None and viable_d > total_d * (1 + 1e-12):
        problems.add("viable_above_total", f"{_where(cells['viable_density'])}: viable density {viable_d:.4g} "
                                           f"cells/mL is above the total density {total_d:.4g} cells/mL",
                     cells["viable_density"], "viable_density")
    if len(problems.items) > before or viable_d is None or viability is None:
        return None
    when = cells.get("measured_at") or _from_meta(fmt, meta, "measured_at")
    offset = next((meta[_norm(a)].text for a in fmt.tz_offset if _norm(a) in meta), None)
    status = cells.get("status") or _from_meta(fmt, meta, "status")
    return CounterSample(sid, viable_d, total_d, float(viability),
                         _timestamp(when.text, fmt, offset) if when else None, row,
                         (status.text.strip() or None) if status else None)


def _rows(fmt: CounterFormat, sep: str, lines: list[_Line], at: int, problems: _Problems,
          marks: dict[str, list[_Cell]]) -> tuple[list[CounterSample], list[_Cell], dict[str, _Cell]]:
    header = lines[at]
    meta = _metadata(lines[:at])
    columns = _columns(fmt, header, problems)
    problems.raise_if_any()
    width = len(header.cells)
    factors = {f: factor for f, (_, _, factor) in columns.items()}
    samples: list[CounterSample] = []
    instruments: list[_Cell] = []
    for line in lines[at + 1:]:
        if line.blank:
            continue
        extra = [i for i, c in enumerate(line.cells) if i >= width and c.strip()]
        if extra:
            problems.add("row_length", f"line {line.number}: {len(line.cells)} cells under a header of {width}; "
                                       f"column {extra[0] + 1} has {line.cells[extra[0]].strip()!r}",
                         line=line.number)
            continue
        cells = {f: _Cell(line.cells[i] if i < len(line.cells) else "", line.number, i + 1, name)
                 for f, (i, name, _) in columns.items()}
        if "instrument_id" in cells and cells["instrument_id"].text.strip():
            instruments.append(cells["instrument_id"])
        s = _sample(fmt, sep, cells, meta, line.number, problems, marks, factors)
        if s is not None:
            samples.append(s)
    if not samples and not problems.items:
        problems.add("no_samples", f"the header is on line {header.number} but no sample line follows it",
                     line=header.number)
    return samples, instruments, meta


def _single(fmt: CounterFormat, sep: str, lines: list[_Line], problems: _Problems,
            marks: dict[str, list[_Cell]]) -> tuple[list[CounterSample], list[_Cell], dict[str, _Cell]]:
    entries: dict[str, list[_Cell]] = {}
    for line in lines:
        if line.cells and line.cells[0].strip():
            value = line.cells[1] if len(line.cells) > 1 else ""
            entries.setdefault(_norm(line.cells[0]), []).append(
                _Cell(value, line.number, 2, line.cells[0].strip().rstrip(":").strip()))
    meta = {k: v[0] for k, v in entries.items()}
    cells: dict[str, _Cell] = {}
    factors: dict[str, float] = {}
    twice: set[str] = set()
    fact = {_norm(a): f for a, f in (*fmt.viable_density, *fmt.total_density)}
    for field, aliases in _fields(fmt).items():
        hits = [(a, c) for a in aliases for c in entries.get(_norm(a), [])]
        if len(hits) > 1:
            where = ", ".join(f"line {c.line}" for _, c in hits)
            problems.add("duplicate_column", f"{field} is given more than once: {where}", field=field,
                         line=hits[1][1].line)
            twice.add(field)
        elif hits:
            cells[field] = hits[0][1]
            factors[field] = fact.get(_norm(hits[0][0]), 1.0)
    for field in _REQUIRED:
        if field not in cells and field not in twice:
            expected = " or ".join(repr(a) for a in _fields(fmt)[field])
            problems.add("missing_column", f"the {fmt.name} export has no {field} line ({expected})", field=field)
    problems.raise_if_any()
    s = _sample(fmt, sep, cells, meta, cells["sample_id"].line, problems, marks, factors)
    inst = [cells["instrument_id"]] if "instrument_id" in cells and cells["instrument_id"].text.strip() else []
    return ([s] if s else []), inst, meta


def parse_export(data: bytes, filename: str = "") -> CounterExport:
    """Every sample of a cell counter export; CounterFileError lists every problem with where it is."""
    if len(data) > MAX_BYTES:
        raise _fail("too_large", f"{_named(filename)}{len(data)} bytes is over the {MAX_BYTES}-byte limit of a "
                                 "counter export")
    if not data.strip():
        raise _fail("empty", f"{_named(filename)}the file is empty")
    text = _decode(data, filename)
    if not text.strip():
        raise _fail("empty", f"{_named(filename)}the file is empty")
    found = _detect(text)
    if found is None:
        raise _unknown(text, filename)
    sep, fmt, at = found
    lines = _read(text, sep, strict=True, filename=filename)
    problems = _Problems()
    marks: dict[str, list[_Cell]] = {",": [], ".": []}
    if fmt.layout == "rows":
        assert at is not None
        samples, instruments, meta = _rows(fmt, sep, lines, at, problems, marks)
    else:
        samples, instruments, meta = _single(fmt, sep, lines, problems, marks)
    if marks[","] and marks["."]:
        a, b = marks["."][0], marks[","][0]
        problems.add("mixed_decimal_marks", f"the file mixes decimal points ({_where(a)}: {a.text.strip()!r}) and "
                                            f"decimal commas ({_where(b)}: {b.text.strip()!r})", b)
    first: dict[str, int] = {}
    for s in samples:
        if s.sample_id in first:
            problems.add("duplicate_sample", f"line {s.row}: sample id {s.sample_id!r} is also on line "
                                             f"{first[s.sample_id]}", field="sample_id", line=s.row)
        first.setdefault(s.sample_id, s.row)
    if not instruments:
        inst_cell = _from_meta(fmt, meta, "instrument_id")
        instruments = [inst_cell] if inst_cell and inst_cell.text.strip() else []
    serials = {_serial(c.text) for c in instruments} - {None}
    if len(serials) > 1:
        names = ", ".join(sorted(f"{s!r}" for s in serials if s))
        problems.add("instrument_mismatch", f"the file names more than one instrument: {names}",
                     field="instrument_id", line=instruments[0].line)
    problems.raise_if_any()
    soft = _from_meta(fmt, meta, "software")
    return CounterExport(fmt.name, next(iter(serials)) if serials else None,
                         (soft.text.strip() or None) if soft else None, tuple(samples),
                         hashlib.sha256(data).hexdigest())


def sample(export: CounterExport, sample_id: str | None) -> CounterSample:
    """The named sample, or the only one when no name is given; CounterFileError names the ids otherwise."""
    ids = [s.sample_id for s in export.samples]
    shown = ", ".join(repr(i) for i in ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
    if sample_id is None or not sample_id.strip():
        if len(export.samples) == 1:
            return export.samples[0]
        raise _fail("sample_required", f"the export holds {len(ids)} samples; name one of {shown}",
                    field="sample_id")
    match = next((s for s in export.samples if s.sample_id == sample_id.strip()), None)
    if match is None:
        raise _fail("unknown_sample", f"no sample {sample_id.strip()!r} in the export; it holds {shown}",
                    field="sample_id")
    return match


def count_inputs(s: CounterSample, volume_ml: float | None) -> dict[str, float]:
    """A step's count inputs: viable density (cells/mL), viability (%), and viable cells when a volume is given."""
    inputs = {"viable_density": s.viable_density, "viability": s.viability}
    if volume_ml is not None:
        v = float(volume_ml)
        if not math.isfinite(v) or v <= 0:
            raise _fail("volume", f"the suspension volume must be a finite number of mL > 0, got {volume_ml!r}",
                        field="volume_ml")
        inputs["viable_cells"] = float(Decimal(repr(s.viable_density)) * Decimal(repr(v)))
    return inputs


def formats_markdown() -> str:
    """The table of known formats, as docs/identity.md shows it."""
    def factor(f: float) -> str:
        k = round(math.log10(f))
        return "" if f == 1 else f" x 10^{k}" if math.isclose(f, 10.0**k) else f" x {f:g}"

    def density(aliases: tuple[tuple[str, float], ...]) -> str:
        return "<br>".join(f"`{a}`{factor(f)}" for a, f in aliases) or "-"

    def names(aliases: tuple[str, ...]) -> str:
        return "<br>".join(f"`{a}`" for a in aliases) or "-"

    rows = ["| format | counter | layout | recognised by | sample id | viable density | total density | viability "
            "| measured at | instrument serial |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for f in FORMATS:
        detect = names(f.detect) if f.detect else "sample id, viable density and viability columns"
        rows.append(f"| `{f.name}` | {f.instrument} | {f.layout} | {detect} | {names(f.sample_id)} "
                    f"| {density(f.viable_density)} | {density(f.total_density)} | {names(f.viability)} "
                    f"| {names(f.measured_at)} | {names(f.instrument_id)} |")
    return "\n".join(rows)
