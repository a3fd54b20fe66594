"""The runs archive's and the deviation pages' pure helpers: reading the filters, the page links, the rows, the
deviation's age, facts, charts and chart window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest

from app.core.problems import Problem
from app.protocol.runs import RunFilter
from app.web import archive, qa

NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def test_the_archive_reads_its_filters_as_the_api_does() -> None:
    f, size = archive.parse_filters({"status": "completed", "donor_id": " D-1 ", "patient_id": "", "from":
                                     "2026-11-01T00:00", "to": "2026-11-02T00:00+01:00", "date_of": "t0",
                                     "before_id": "12", "limit": "25"})
    assert size == 25 and f.status == "completed" and f.donor_id == "D-1" and f.patient_id is None
    assert f.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert f.end is not None and f.end.utcoffset() == timedelta(hours=1)
    assert f.date_of == "t0" and f.before_id == 12 and f.after_id is None
    assert archive.parse_filters({}) == (RunFilter(), archive.DEFAULT_PAGE_SIZE)


@pytest.mark.parametrize(("params", "name"), [
    ({"status": "lost"}, "status"), ({"from": "yesterday"}, "from"), ({"to": "2026-13-01"}, "to"),
    ({"before_id": "x"}, "before_id"), ({"after_id": "0"}, "after_id"), ({"limit": "5000"}, "limit"),
    ({"date_of": "ended"}, "date_of"),
])
def test_a_bad_filter_is_a_400_naming_its_parameter(params: dict[str, str], name: str) -> None:
    with pytest.raises(Problem) as exc:
        archive.parse_filters(params)
    assert exc.value.status == 400 and exc.value.detail.startswith(f"{name}:")
    assert exc.value.extra["parameter"] == name


def _rows(*ids: int) -> list[dict[str, object]]:
    return [{"id": i} for i in ids]


def _q(link: str | None) -> dict[str, list[str]]:
    assert link is not None and link.startswith("?")
    return parse_qs(link[1:])


def test_pages_link_older_and_newer_keeping_the_filters() -> None:
    query = {"donor_id": "D-1", "status": ""}
    first = archive.paged(_rows(9, 8, 7), RunFilter(), query, 2)  # one more than the page: there are older ones
    assert [r["id"] for r in first.rows] == [9, 8] and first.newer is None
    assert _q(first.older) == {"donor_id": ["D-1"], "limit": ["2"], "before_id": ["8"]}
    last = archive.paged(_rows(7), RunFilter(before_id=8), query, 2)
    assert last.older is None and _q(last.newer) == {"donor_id": ["D-1"], "limit": ["2"], "after_id": ["7"]}
    back = archive.paged(_rows(10, 9, 8), RunFilter(after_id=7), query, 2)  # the newer page: the extra is newest
    assert [r["id"] for r in back.rows] == [9, 8] and _q(back.newer)["after_id"] == ["9"]
    assert _q(back.older)["before_id"] == ["8"]
    assert archive.paged([], RunFilter(), query, 2) == archive.Page([], None, None)


def test_a_row_says_its_status_in_words_and_links_the_issued_record() -> None:
    run = {"id": 4, "status": "held", "recipe_key": "htlp", "recipe_version": 2, "incubator": "inc-1",
           "culture_system": None, "record_version": 3}
    row = archive.row_view(run)
    assert row["status_text"] == "Held for QA" and row["recipe_text"] == "htlp v2" and row["devices"] == ["inc-1"]
    assert row["record_pdf"] == "/api/v1/runs/4/record/versions/3/pdf"
    assert archive.row_view({**run, "record_version": None, "recipe_key": None})["record_pdf"] is None


def test_the_work_list_reads_its_filters() -> None:
    cursor = "0~3~2026-11-30T08:00:00+00:00~5"  # a work_cursor as the list hands it out
    args = qa.parse_filters({"status": "open", "run": " RUN-1 ", "rule": "", "after": cursor})
    assert args == {"status": "open", "run_code": "RUN-1", "severity": None, "rule": None, "after": cursor,
                    "limit": qa.PAGE_SIZE}
    for params, name in (({"status": "done"}, "status"), ({"after": "5"}, "after"), ({"limit": "0"}, "limit"),
                         ({"after": "0~3~yesterday~5"}, "after")):
        with pytest.raises(Problem) as raised:
            qa.parse_filters(params)
        assert raised.value.status == 400 and raised.value.extra["parameter"] == name


def test_a_deviation_age_facts_and_charts() -> None:
    assert qa.age_text(NOW - timedelta(days=2, hours=3, minutes=5), NOW) == "2 d 3 h"
    assert qa.age_text(NOW - timedelta(minutes=90), NOW) == "1 h 30 min"
    assert qa.age_text((NOW - timedelta(minutes=4)).isoformat(), NOW) == "4 min"
    assert qa.fact_items({"value_x": 1.5, "window": {"earliest": "a"}, "gone": None}) == [
        ("value x", "1.5"), ("window", '{\n "earliest": "a"\n}'), ("gone", "—")]
    charts = [{"channel": "inc-1.temperature"}, {"channel": "inc-1.co2"}, {"channel": "cs-1.viability"}]
    assert qa.relevant_charts(charts, {"channel": "inc-1.co2"}) == [charts[1]]
    assert qa.relevant_charts(charts, {"device": "cs-1"}) == [charts[2]]
    assert qa.relevant_charts(charts, {"rule": "after_latest"}) == charts
    old = qa.chart_window(NOW - timedelta(days=1), NOW)
    assert old["fixed"] and old["end"] == (NOW - timedelta(hours=18)).isoformat()
    recent = qa.chart_window(NOW - timedelta(hours=1), NOW)
    assert not recent["fixed"] and recent["end"] == NOW.isoformat()
    assert recent["start"] == (NOW - timedelta(hours=7)).isoformat()
