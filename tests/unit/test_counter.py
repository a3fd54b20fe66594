"""Cell counter exports: the shapes each counter writes, the way a site re-saves them, every refusal with its place."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from app.protocol import counter
from app.protocol.counter import (
    FORMATS,
    MAX_BYTES,
    MAX_ERRORS,
    CounterExport,
    CounterFileError,
    CounterFormat,
    CounterSample,
    count_inputs,
    formats_markdown,
    parse_export,
    sample,
)

ROOT = Path(__file__).resolve().parents[2]

# ---- the shapes, as the counters write them ---------------------------------------------------------------

BLU_HEADER = (
    "Sample ID,Cell count,Viable cells,Total (x10^6) cells/mL,Viable (x10^6) cells/mL,Viability (%),"
    "Average diameter (\u03bcm),Average viable diameter (\u03bcm),Average circularity,Average viable circularity,"
    "Average cells per image,Average background intensity,Bubble count,Cluster count,Images for analysis,Cell type,"
    "Minimum Diameter (\u03bcm),Maximum Diameter (\u03bcm),Images,Cell sharpness,Minimum circularity,"
    "Decluster degree,Aspiration cycles,Viable spot brightness (%),Viable spot area (%),Mixing cycles,"
    "Analysis date/time,Reanalysis date/time,Analysis by,Reanalysis by,Dilution,Wash,Tag")


def blu_row(sid: str, total: str, viable: str, viability: str, when: str = "11/14/2026 9:42", sep: str = ",",
            trailing: str = "") -> str:
    cells = [sid, "4310", "4190", total, viable, viability, "9.84", "9.91", "0.89", "0.9", "43", "136", "0", "2",
             "100", "T progenitor", "5", "30", "100", "7", "0.1", "Medium", "3", "50", "5", "3", when, "",
             "Vi-CELL", "", "1", "Normal Wash", ""]
    return sep.join(cells) + trailing


# Vi-CELL BLU sample results: header on line 1, LF; a data line may carry one empty cell more than the header.
VI_CELL_BLU = "\n".join([
    BLU_HEADER,
    blu_row("RUN-0042-D0", "1.52", "1.47", "96.71", "11/14/2026 9:42"),
    blu_row("RUN-0042-D0-REP", "1.49", "1.45", "97.32", "11/14/2026 9:45", trailing=","),
    blu_row("RUN-0042-D3", "4.86", "4.51", "92.80", "11/17/2026 16:05"),
]) + "\n"

# NucleoCounter NC-202 results table: upper-case headers, the serial on every line, thousands grouped with a
# space, E notation, the counter's own status.
NC_202_HEADER = ("NAME,SAMPLE ID,TAGS,PROTOCOL,MEDIA,USER,OPERATOR,SIGNED BY,INSTRUMENT,STATUS,TOTAL (cells/ml),"
                 "LIVE (cells/ml),DEAD (cells/ml),VIABILITY (%),DIAMETER (\u00b5m),AGGREGATES (%),DEBRIS INDEX,"
                 "DILUTION FACTOR")
NC_202_TABLE = "\n".join([
    NC_202_HEADER,
    "20261114-00007,RUN-0042-D0,,Count & Viability,Via2-Cassette,na,jdo,,S/N: 9002020100000417,OK,"
    "1 520 000,1 470 000,50 000,96.7,9.8,1.2,15,1",
    "20261114-00008,RUN-0042-D3,,Count & Viability,Via2-Cassette,na,jdo,,S/N: 9002020100000417,"
    "Warning: Foreign object detected,4.86E+06,4.51E+06,350 000,92.8,10.4,3.1,20,1",
    "20261114-00009,RUN-0043-D0,,Count & Viability,Via2-Cassette,na,jdo,,S/N: 9002020100000417,OK,"
    "988 000,921 000,67 000,93.2,9.6,0.8,10,1",
])

# NucleoCounter NC-202 single result: one sample, tab separated `key:<TAB>value`, a time in UTC.
NC_202_SINGLE = "\n".join([
    "Source ID:\t20261114-00011",
    "Time (UTC):\t2026-11-14 08:51:12",
    "Sample ID:\tRUN-0042-D0",
    "Protocol:\tCount & Viability; 1.49",
    "Software version:\t1.2.0.11",
    "Secure Mode status:\tEnable",
    "Sample Media:\tVia2-Cassette",
    "Operator:\tjdo",
    "Instrument:\tS/N:9002020100000417",
    "Total (cells/ml):\t1.52E+06",
    "Live (cells/ml):\t1.47E+06",
    "Dead (cells/ml):\t5.00E+04",
    "Viability (%):\t96.7",
    "Diameter (um):\t9.8",
    "Debris Index:\t15",
    "Dilution Factor:\t1",
    "Status:\tOK",
]) + "\n"

# NucleoCounter NC-200 (NucleoView): one sample, `key;value;` lines, a value broken over two lines, the file's
# own signature line at the end.
NC_200 = "\n".join([
    "Viability and Cell Count Assay - T progenitor; ;",
    "Image;20261114-0031-c-RUN-0042-D0;",
    "Operator;jdo;",
    "Viability (%);96.7;",
    "Live (cells/ml);1.47E6;",
    "Dead (cells/ml);5.03E4;",
    "Total (cells/ml);1.52E6;",
    " ; ;",
    "Estimated cell diameter (um);9.8 (Uncertain",
    "determination);",
    "Sample Volume (ul);200.0;",
    "Multiplication factor;1.000;",
    ";", ";",
    "Instrument type;NucleoView NC-200",
    "Instrument s/n;s/n 9000201000000123",
    "Date time;20261114 094210",
    "Time zone offset;1",
    "Application SW version;1.4.2.0",
    "csv file version;2",
    "",
    "//[5E0C41A7]",
])

# Revvity Cellaca MX: metadata lines above the header, the header and lines start with two empty cells,
# densities in 10^6 cells/mL.
CELLACA_MX = "\n".join([
    "Plate Name,Plate Name: RUN-0042 D0 2026/11/14-09:40:02" + "," * 16,
    "Dilution,Dilution Factor: 2" + "," * 16,
    "Assay Name,Assay Name:   AOPI" + "," * 16,
    "Results Timestamp,11/14/2026 9:40:31 AM" + "," * 16,
    "Instrument SN,MX-120-0419" + "," * 16,
    "Operator,jdo" + "," * 16,
    "Version,2" + "," * 16,
    ",,Row,Column,Well Name,Live Count,Live Concentration (E6),Live Diameter,Viability (%),Dead Count,"
    "Dead Concentration (E6),Dead Diameter,Total Count,Total Concentration (E6),Aggregate Count,Aggregate Size,"
    "Aggregates (%),Errors",
    ",,0,0,D0-A,2249,1.47,9.52,96.00,61,0.05,8.97,2310,1.52,12,31.62,0.52,",
    ",,0,1,D0-B,2201,1.45,9.61,97.00,52,0.04,9.12,2253,1.49,9,30.10,0.40,",
    ",,0,2,D0-C,1757,1.15,9.86,92.00,152,0.10,8.28,1909,1.25,31,32.64,1.62,\"No cells found in F2 Image C\"",
])

# The generic template, as Excel saves it in a decimal-comma locale: UTF-8 with a byte-order mark, CRLF,
# semicolons, decimal commas, metadata lines above the header.
GENERIC = ("\ufeffInstrument serial;CT3-2216-0042\r\n"
           "Software version;3.1.4\r\n"
           "\r\n"
           "Sample ID;Measured at;Viable cells (x10^6/mL);Total cells (x10^6/mL);Viability (%)\r\n"
           "RUN-0042-D0;2026-11-14 09:42;1,47;1,52;96,7\r\n"
           "RUN-0042-D3;2026-11-17 16:05;4,51;4,86;92,8\r\n")

# The Vi-CELL BLU export opened and re-saved by Excel in a decimal-comma locale.
VI_CELL_BLU_RESAVED = "\ufeff" + "\r\n".join([
    BLU_HEADER.replace(",", ";"),
    blu_row("RUN-0042-D0", "1,52", "1,47", "96,71", sep=";"),
    blu_row("RUN-0042-D3", "4,86", "4,51", "92,80", "11/17/2026 16:05", sep=";"),
]) + "\r\n"


def _s(sid: str, viable: float, total: float | None, viability: float, when: str | None, row: int,
       status: str | None = None) -> CounterSample:
    return CounterSample(sid, viable, total, viability, when, row, status)


SHAPES = [
    pytest.param(VI_CELL_BLU.encode(), "vi-cell-blu", None, None, [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.71, "2026-11-14T09:42:00", 2),
        _s("RUN-0042-D0-REP", 1.45e6, 1.49e6, 97.32, "2026-11-14T09:45:00", 3),
        _s("RUN-0042-D3", 4.51e6, 4.86e6, 92.80, "2026-11-17T16:05:00", 4)], id="vi-cell-blu"),
    pytest.param(VI_CELL_BLU.replace("\u03bc", "\u00b5").encode("latin-1"), "vi-cell-blu", None, None, [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.71, "2026-11-14T09:42:00", 2),
        _s("RUN-0042-D0-REP", 1.45e6, 1.49e6, 97.32, "2026-11-14T09:45:00", 3),
        _s("RUN-0042-D3", 4.51e6, 4.86e6, 92.80, "2026-11-17T16:05:00", 4)], id="vi-cell-blu-latin-1"),
    pytest.param(VI_CELL_BLU.encode("utf-16"), "vi-cell-blu", None, None, [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.71, "2026-11-14T09:42:00", 2),
        _s("RUN-0042-D0-REP", 1.45e6, 1.49e6, 97.32, "2026-11-14T09:45:00", 3),
        _s("RUN-0042-D3", 4.51e6, 4.86e6, 92.80, "2026-11-17T16:05:00", 4)], id="vi-cell-blu-utf-16"),
    pytest.param(VI_CELL_BLU_RESAVED.encode(), "vi-cell-blu", None, None, [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.71, "2026-11-14T09:42:00", 2),
        _s("RUN-0042-D3", 4.51e6, 4.86e6, 92.80, "2026-11-17T16:05:00", 3)], id="vi-cell-blu-excel-decimal-comma"),
    pytest.param(NC_202_TABLE.encode(), "nc-202-table", "9002020100000417", None, [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.7, None, 2, "OK"),
        _s("RUN-0042-D3", 4.51e6, 4.86e6, 92.8, None, 3, "Warning: Foreign object detected"),
        _s("RUN-0043-D0", 921000.0, 988000.0, 93.2, None, 4, "OK")], id="nc-202-table"),
    pytest.param(NC_202_SINGLE.encode(), "nc-202-single", "9002020100000417", "1.2.0.11", [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.7, "2026-11-14T08:51:12+00:00", 3, "OK")], id="nc-202-single"),
    pytest.param(NC_200.encode(), "nc-200", "9000201000000123", "1.4.2.0", [
        _s("20261114-0031-c-RUN-0042-D0", 1.47e6, 1.52e6, 96.7, "2026-11-14T09:42:10+01:00", 2)], id="nc-200"),
    pytest.param(NC_200.replace("\n", "\r\n").encode("utf-8-sig"), "nc-200", "9000201000000123", "1.4.2.0", [
        _s("20261114-0031-c-RUN-0042-D0", 1.47e6, 1.52e6, 96.7, "2026-11-14T09:42:10+01:00", 2)],
        id="nc-200-bom-crlf"),
    pytest.param(CELLACA_MX.encode(), "cellaca-mx", "MX-120-0419", None, [
        _s("D0-A", 1.47e6, 1.52e6, 96.0, "2026-11-14T09:40:31", 9),
        _s("D0-B", 1.45e6, 1.49e6, 97.0, "2026-11-14T09:40:31", 10),
        _s("D0-C", 1.15e6, 1.25e6, 92.0, "2026-11-14T09:40:31", 11, "No cells found in F2 Image C")],
        id="cellaca-mx"),
    pytest.param(GENERIC.encode(), "generic", "CT3-2216-0042", "3.1.4", [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.7, "2026-11-14T09:42:00", 5),
        _s("RUN-0042-D3", 4.51e6, 4.86e6, 92.8, "2026-11-17T16:05:00", 6)], id="generic-excel-decimal-comma"),
    pytest.param(GENERIC.replace("\r\n", "\r").encode(), "generic", "CT3-2216-0042", "3.1.4", [
        _s("RUN-0042-D0", 1.47e6, 1.52e6, 96.7, "2026-11-14T09:42:00", 5),
        _s("RUN-0042-D3", 4.51e6, 4.86e6, 92.8, "2026-11-17T16:05:00", 6)], id="generic-cr-line-ends"),
    pytest.param(b"Sample,Viable cells/mL,Viability\n1,750000,81.5%\n", "generic", None, None, [
        _s("1", 750000.0, None, 81.5, None, 2)], id="generic-minimal"),
    pytest.param("Sample;Viable cells/mL;Viability\nD0 \u2013 r\u00e9p;750000;81,5\n".encode("cp1252"), "generic",
                 None, None, [_s("D0 \u2013 r\u00e9p", 750000.0, None, 81.5, None, 2)], id="generic-windows-1252"),
]


@pytest.mark.parametrize(("raw", "name", "instrument", "software", "samples"), SHAPES)
def test_each_counter_shape(raw: bytes, name: str, instrument: str | None, software: str | None,
                            samples: list[CounterSample]) -> None:
    export = parse_export(raw, "export.csv")
    assert export == CounterExport(name, instrument, software, tuple(samples), hashlib.sha256(raw).hexdigest())


def test_densities_are_scaled_exactly() -> None:
    # 0.78 x 10^6 is 780000.0, not 780000.0000000001: the unit factor is applied in decimal
    raw = VI_CELL_BLU.replace("1.52", "0.78").replace("1.47", "0.75").encode()
    s = parse_export(raw).samples[0]
    assert (s.viable_density, s.total_density) == (750000.0, 780000.0)


def test_sha256_is_over_the_raw_bytes() -> None:
    a, b = GENERIC.encode(), GENERIC.replace("\r\n", "\n").encode()
    ea, eb = parse_export(a), parse_export(b)
    assert ea.samples == eb.samples  # same content ...
    assert ea.sha256 == hashlib.sha256(a).hexdigest() != eb.sha256  # ... different files


def test_a_time_the_format_cannot_read_is_kept_as_in_the_file() -> None:
    raw = VI_CELL_BLU.replace("11/14/2026 9:42", "14.11.2026 9h42").encode()
    assert parse_export(raw).samples[0].measured_at == "14.11.2026 9h42"
    no_time = parse_export(VI_CELL_BLU.replace("11/14/2026 9:42", "").encode())
    assert no_time.samples[0].measured_at is None


def test_a_new_counter_is_data(monkeypatch: pytest.MonkeyPatch) -> None:
    luna = CounterFormat(
        name="site-luna", instrument="a LUNA export as the site configured it", layout="rows",
        detect=("Sample name", "Live cell conc.(cells/mL)"), sample_id=("Sample name",),
        viable_density=(("Live cell conc.(cells/mL)", 1.0),), total_density=(("Total cell conc.(cells/mL)", 1.0),),
        viability=("Viability(%)",), instrument_id=("Serial",))
    monkeypatch.setattr(counter, "FORMATS", (luna, *FORMATS))
    raw = b"Serial,LF7-0099\nSample name,Live cell conc.(cells/mL),Total cell conc.(cells/mL),Viability(%)\n" \
          b"D0,1.47E+06,1.52E+06,96.7\n"
    export = parse_export(raw)
    assert (export.format, export.instrument_id) == ("site-luna", "LF7-0099")
    assert export.samples == (_s("D0", 1.47e6, 1.52e6, 96.7, None, 3),)


def test_each_shape_is_claimed_by_its_own_format_only(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f.name for f in FORMATS]
    assert names[-1] == "generic" and len(set(names)) == len(names)
    shapes = {"vi-cell-blu": VI_CELL_BLU, "nc-202-table": NC_202_TABLE, "nc-202-single": NC_202_SINGLE,
              "nc-200": NC_200, "cellaca-mx": CELLACA_MX, "generic": GENERIC}
    assert set(shapes) == set(names)
    for order in (FORMATS, tuple(reversed(FORMATS))):  # no shape is also claimed by another format
        monkeypatch.setattr(counter, "FORMATS", order)
        for name, text in shapes.items():
            assert parse_export(text.encode()).format == name


# ---- refusals ---------------------------------------------------------------------------------------------


def errors(raw: bytes) -> list[dict[str, object]]:
    with pytest.raises(CounterFileError) as exc:
        parse_export(raw, "count.csv")
    assert isinstance(exc.value, ValueError)
    for e in exc.value.errors:
        assert set(e) == {"line", "column", "field", "rule", "detail"}
    return exc.value.errors


def only(raw: bytes) -> dict[str, object]:
    found = errors(raw)
    assert len(found) == 1, found
    return found[0]


def blu(*rows: str) -> bytes:
    return ("\n".join([BLU_HEADER, *rows]) + "\n").encode()


@pytest.mark.parametrize(("raw", "rule", "line", "column", "field", "message"), [
    pytest.param(b"", "empty", None, None, None, "count.csv: the file is empty", id="empty"),
    pytest.param(b"\xef\xbb\xbf\r\n \r\n", "empty", None, None, None, "the file is empty", id="bom-and-blank-lines"),
    pytest.param(b"x" * (MAX_BYTES + 1), "too_large", None, None, None,
                 f"{MAX_BYTES + 1} bytes is over the {MAX_BYTES}-byte limit", id="over-1-MiB"),
    pytest.param(b"PK\x03\x04\x14\x00\x06\x00", "encoding", None, None, None, "this is a workbook (.xlsx)",
                 id="xlsx"),
    pytest.param(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "encoding", None, None, None,
                 "Excel 97-2003 workbook (.xls)", id="xls"),
    pytest.param(BLU_HEADER.encode("utf-16-le"), "encoding", 1, 2, None, "control byte 0x00",
                 id="utf-16-without-bom"),
    pytest.param(b"\xff\xfe\x00\xd8", "encoding", None, None, None, "byte-order mark but is not UTF-16",
                 id="broken-utf-16"),
    pytest.param(b"Sample ID,Viability (%)\n\x1a\x02\x03", "encoding", 2, 1, None, "control byte 0x1A",
                 id="binary"),
    pytest.param(b"Sample ID,Viability (%)\nD0\x81,96.7\n", "encoding", 2, 3, None, "control byte 0x81",
                 id="neither-utf-8-nor-windows-1252"),
    pytest.param(b"Name,Count,Mean size\nD0,1470000,9.8\n", "unknown_format", 1, None, None,
                 "not a known cell counter export: line 1 has the headers 'Name', 'Count', 'Mean size'; known "
                 "formats: vi-cell-blu (Beckman Coulter Vi-CELL BLU", id="unknown-format"),
    pytest.param(b"just some notes\n", "unknown_format", 1, None, None, "line 1 has the headers 'just some notes'",
                 id="not-a-table"),
    pytest.param(NC_200.replace("Live (cells/ml);1.47E6;\n", "").encode(), "missing_column", None, None,
                 "viable_density", "the nc-200 export has no viable_density line ('Live (cells/ml)')",
                 id="nc-200-without-live"),
    pytest.param(blu(blu_row("D0", "1.52", "abc", "96.7")), "not_a_number", 2, 5, "viable_density",
                 "line 2, column 5 ('Viable (x10^6) cells/mL'): 'abc' is not a number", id="text"),
    pytest.param(blu(blu_row("D0", "1.52", "NaN", "96.7")), "not_a_number", 2, 5, "viable_density",
                 "'NaN' is not a number", id="nan"),
    pytest.param(blu(blu_row("D0", "inf", "1.47", "96.7")), "not_a_number", 2, 4, "total_density",
                 "'inf' is not a number", id="infinity"),
    pytest.param(blu(blu_row("D0", "1.52", "1e999999", "96.7")), "not_a_number", 2, 5, "viable_density",
                 "'1e999999' is out of range", id="overflow"),
    pytest.param(blu(blu_row("D0", "1.52", "---", "96.7")), "not_a_number", 2, 5, "viable_density",
                 "'---' is not a number", id="dashes"),
    pytest.param(blu(blu_row("D0", "1.52", "1.4 7", "96.7")), "not_a_number", 2, 5, "viable_density",
                 "'1.4 7' is not a number", id="stray-space"),
    pytest.param(blu(blu_row("D0", "1.52", "1.47%", "96.7")), "not_a_number", 2, 5, "viable_density",
                 "'1.47%' is not a number", id="percent-on-a-density"),
    pytest.param(blu(blu_row("D0", "1.52", "", "96.7")), "missing_value", 2, 5, "viable_density", "no value",
                 id="empty-viable"),
    pytest.param(blu(blu_row("D0", "1.52", "1.47", " ")), "missing_value", 2, 6, "viability", "no value",
                 id="blank-viability"),
    pytest.param(blu(blu_row("D0", "1.52", "-0.5", "96.7")), "negative", 2, 5, "viable_density",
                 "'-0.5' is negative", id="negative-viable"),
    pytest.param(blu(blu_row("D0", "-1.52", "1.47", "96.7")), "negative", 2, 4, "total_density",
                 "'-1.52' is negative", id="negative-total"),
    pytest.param(blu(blu_row("D0", "1.52", "1.47", "100.5")), "viability_range", 2, 6, "viability",
                 "viability '100.5' is outside 0..100 %", id="viability-over-100"),
    pytest.param(blu(blu_row("D0", "1.52", "1.47", "-2")), "viability_range", 2, 6, "viability",
                 "viability '-2' is outside 0..100 %", id="viability-negative"),
    pytest.param(blu(blu_row("D0", "1.47", "1.52", "96.7")), "viable_above_total", 2, 5, "viable_density",
                 "viable density 1.52e+06 cells/mL is above the total density 1.47e+06 cells/mL",
                 id="viable-above-total"),
    pytest.param(blu(blu_row("", "1.52", "1.47", "96.7")), "missing_value", 2, 1, "sample_id", "no sample id",
                 id="no-sample-id"),
    pytest.param(blu(blu_row("D0", "1.52", "1.47", "96.7"), blu_row("D0", "1.49", "1.45", "97.3")),
                 "duplicate_sample", 3, None, "sample_id", "line 3: sample id 'D0' is also on line 2",
                 id="duplicate-sample"),
    pytest.param(blu(blu_row("D0", "1.52", "1.47", "96.7", trailing=",surprise")), "row_length", 2, None, None,
                 "line 2: 34 cells under a header of 33; column 34 has 'surprise'", id="row-too-long"),
    pytest.param(blu('D0,4310,4190,1.52,"1,47",96.7'), "ambiguous_number", 2, 5, "viable_density",
                 "'1,47' has a comma in a comma-separated file", id="comma-in-a-comma-file"),
    pytest.param(VI_CELL_BLU_RESAVED.replace("4,51", "4.51").encode(), "mixed_decimal_marks", 2, 5, None,
                 "the file mixes decimal points (line 3, column 5 ('Viable (x10^6) cells/mL'): '4.51') and decimal "
                 "commas (line 2, column 5 ('Viable (x10^6) cells/mL'): '1,47')", id="mixed-decimal-marks"),
    pytest.param(blu('D0,4310,4190,1.52,1.47,"96.7"x'), "malformed_line", 2, None, None,
                 "line 2 is not a well-formed CSV line", id="stray-quote"),
    pytest.param(BLU_HEADER.encode() + b"\n\n", "no_samples", 1, None, None,
                 "the header is on line 1 but no sample line follows it", id="header-only"),
    pytest.param(NC_202_TABLE.replace("S/N: 9002020100000417,OK,988", "S/N: 9002020100000999,OK,988").encode(),
                 "instrument_mismatch", 2, None, "instrument_id",
                 "more than one instrument: '9002020100000417', '9002020100000999'", id="two-instruments"),
    pytest.param((BLU_HEADER + ",Viable (x10^6) cells/mL\n" + blu_row("D0", "1.52", "1.47", "96.7") + ",1.47\n")
                 .encode(), "duplicate_column", 1, None, "viable_density",
                 "viable_density is in more than one column: 'Viable (x10^6) cells/mL' (column 5), "
                 "'Viable (x10^6) cells/mL' (column 34)", id="duplicate-column"),
])
def test_refusals(raw: bytes, rule: str, line: int | None, column: int | None, field: str | None,
                  message: str) -> None:
    e = only(raw)
    assert (e["rule"], e["line"], e["column"], e["field"]) == (rule, line, column, field)
    assert message in str(e["detail"])


def test_every_problem_is_listed_not_only_the_first() -> None:
    raw = blu(blu_row("D0", "1.52", "x", "96.7"), blu_row("D1", "1.52", "1.47", "180"),
              blu_row("D2", "1.47", "1.52", "96.7"), blu_row("D3", "1.52", "1.47", "96.7"))
    assert [(e["rule"], e["line"]) for e in errors(raw)] == [
        ("not_a_number", 2), ("viability_range", 3), ("viable_above_total", 4)]


def test_the_vi_cell_blu_detail_export_is_refused_for_its_missing_columns() -> None:
    # the per-image detail export carries the sample's settings on line 1 and its counts in tables below
    raw = (b"Sample ID,Images for analysis,Cell type,Decluster degree,Analysis date/time\n"
           b"RUN-0042-D0,100,T progenitor,Medium,11/14/2026 9:42:31 AM\n"
           b"Image#,Cell count,Viable cells,Total (x10^6) cells/mL,Viable (x10^6) cells/mL,Viability (%)\n"
           b"1,104,103,3.8849,3.8476,99.0\n")
    found = errors(raw)
    assert [(e["rule"], e["line"], e["field"]) for e in found] == [
        ("missing_column", 1, "viable_density"), ("missing_column", 1, "viability")]
    assert "the vi-cell-blu export has no viable_density column ('Viable (x10^6) cells/mL')" in str(found[0]["detail"])


def test_a_file_wrong_everywhere_answers_with_the_first_problems() -> None:
    raw = blu(*(blu_row(f"D{i}", "1.52", "x", "96.7") for i in range(MAX_ERRORS + 20)))
    found = errors(raw)
    assert len(found) == MAX_ERRORS + 1
    assert found[-1]["rule"] == "too_many_errors" and "20 more problems" in str(found[-1]["detail"])


def test_the_unknown_format_message_names_every_known_format() -> None:
    detail = str(only(b"Name,Count\nD0,1\n")["detail"])
    for f in FORMATS:
        assert f"{f.name} ({f.instrument})" in detail


def test_the_error_message_is_the_problems_joined() -> None:
    with pytest.raises(CounterFileError, match=re.escape("'abc' is not a number")):
        parse_export(blu(blu_row("D0", "1.52", "abc", "96.7")))


# ---- choosing the sample, the step inputs -----------------------------------------------------------------


def test_sample_by_id_or_the_only_one() -> None:
    export = parse_export(VI_CELL_BLU.encode())
    assert sample(export, "RUN-0042-D3").viable_density == 4.51e6
    assert sample(export, "  RUN-0042-D3 ").row == 4
    single = parse_export(NC_200.encode())
    assert sample(single, None) is single.samples[0]
    assert sample(single, "") is single.samples[0]


@pytest.mark.parametrize(("sample_id", "rule", "message"), [
    (None, "sample_required", "the export holds 3 samples; name one of 'RUN-0042-D0', 'RUN-0042-D0-REP', "
                              "'RUN-0042-D3'"),
    ("RUN-0042-D5", "unknown_sample", "no sample 'RUN-0042-D5' in the export; it holds 'RUN-0042-D0', "),
    ("run-0042-d3", "unknown_sample", "no sample 'run-0042-d3'"),  # ids are compared exactly
])
def test_sample_refusals(sample_id: str | None, rule: str, message: str) -> None:
    with pytest.raises(CounterFileError) as exc:
        sample(parse_export(VI_CELL_BLU.encode()), sample_id)
    assert exc.value.errors[0]["rule"] == rule and exc.value.errors[0]["field"] == "sample_id"
    assert message in str(exc.value)


def test_sample_lists_at_most_twenty_ids() -> None:
    raw = blu(*(blu_row(f"S{i:02d}", "1.52", "1.47", "96.7") for i in range(25)))
    with pytest.raises(CounterFileError, match="'S19' and 5 more"):
        sample(parse_export(raw), None)


def test_count_inputs() -> None:
    s = sample(parse_export(VI_CELL_BLU.encode()), "RUN-0042-D0")
    assert count_inputs(s, None) == {"viable_density": 1.47e6, "viability": 96.71}
    assert count_inputs(s, 2.5) == {"viable_density": 1.47e6, "viability": 96.71, "viable_cells": 3.675e6}
    assert count_inputs(s, 0.3)["viable_cells"] == 441000.0  # exact, not 440999.99999999994


@pytest.mark.parametrize("volume", [0.0, -1.0, float("nan"), float("inf")])
def test_count_inputs_refuses_a_volume_that_is_not_one(volume: float) -> None:
    s = parse_export(NC_200.encode()).samples[0]
    with pytest.raises(CounterFileError) as exc:
        count_inputs(s, volume)
    assert exc.value.errors[0]["rule"] == "volume" and exc.value.errors[0]["field"] == "volume_ml"


# ---- the docs ---------------------------------------------------------------------------------------------


def test_the_formats_table_in_the_docs_matches_code() -> None:
    text = (ROOT / "docs" / "identity.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- counter-formats -->\n(.*?)\n<!-- /counter-formats -->", text, re.S)
    assert m, "no counter-formats section in docs/identity.md"
    assert m.group(1).strip() == formats_markdown()
