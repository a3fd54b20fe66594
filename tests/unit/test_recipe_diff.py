"""The recipe diff (app/protocol/recipe_diff.py): steps added, removed and changed, fields with old and new values."""

from __future__ import annotations

from typing import Any

from app.protocol.recipe import Recipe, default_recipe
from app.protocol.recipe_diff import Change, diff_recipes, diff_values, value_text


def _variant(edit: Any) -> Recipe:
    """The default recipe as a new version, changed by `edit` on its JSON."""
    data = default_recipe().model_dump(mode="json")
    data["version"] += 1
    edit(data)
    return Recipe.model_validate(data)


def _step(data: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in data["steps"] if s["key"] == key)


def _input(step: dict[str, Any], name: str) -> dict[str, Any]:
    return next(i for i in step["inputs"] if i["name"] == name)


def test_the_same_recipe_has_no_differences() -> None:
    d = diff_recipes(default_recipe(), default_recipe())
    assert d.empty and d.fields == () and d.steps == ()


def test_only_the_version_changed() -> None:
    d = diff_recipes(default_recipe(), _variant(lambda data: None))
    old = default_recipe().version
    assert d.fields == (Change("version", "changed", old, old + 1),) and d.steps == ()


def test_a_changed_limit_and_an_added_input_of_one_step() -> None:
    def edit(data: dict[str, Any]) -> None:
        step = _step(data, "receive_cells")
        _input(step, "viability")["accept_min"] = 85.0
        step["inputs"].append({"name": "cd3_count", "kind": "number", "unit": "cells", "min": 0, "max": 1e10})

    d = diff_recipes(default_recipe(), _variant(edit))
    assert [(s.key, s.kind) for s in d.steps] == [("receive_cells", "changed")]
    changes = d.steps[0].changes
    assert changes[0] == Change("inputs[viability].accept_min", "changed", 80.0, 85.0)
    assert [(c.path, c.kind) for c in changes] == [("inputs[viability].accept_min", "changed"),
                                                   ("inputs[cd3_count]", "added")]  # one change, not each field
    assert changes[1].old is None and changes[1].new["unit"] == "cells"
    assert d.counts == {"added": 0, "removed": 0, "changed": 1}


def test_steps_added_and_removed_keep_their_place() -> None:
    def edit(data: dict[str, Any]) -> None:
        data["steps"] = [s for s in data["steps"] if s["key"] != "mycoplasma_sample"]
        extra = {**_step(data, "feed_day5"), "key": "feed_day6", "title": "Feed day 6"}
        data["steps"].insert([s["key"] for s in data["steps"]].index("feed_day5") + 1, extra)
        data["release"]["tests"] = [t for t in data["release"]["tests"] if t["sampled_at"] != "mycoplasma_sample"]
        for s in data["steps"]:
            s["predecessors"] = [p for p in s["predecessors"] if p != "mycoplasma_sample"]

    d = diff_recipes(default_recipe(), _variant(edit))
    kinds = [(s.key, s.kind) for s in d.steps]
    # the removed step where it was (after feed_day5), then the added one
    assert kinds[:2] == [("mycoplasma_sample", "removed"), ("feed_day6", "added")]
    assert d.steps[1].title == "Feed day 6" and d.steps[1].changes == ()
    assert all(k == "changed" for _, k in kinds[2:])  # the steps that came after it (their predecessors)
    assert {c.path for s in d.steps[2:] for c in s.changes} == {"predecessors"}
    removed_tests = [c for c in d.fields if c.path.startswith("release.tests[")]
    assert removed_tests and all(c.kind == "removed" for c in removed_tests)


def test_window_signatures_and_top_level_fields() -> None:
    def edit(data: dict[str, Any]) -> None:
        seed = _step(data, "feed_day3")
        seed["window"]["latest"] += 2
        seed["signatures"] = [*seed["signatures"], "approved"] if "approved" not in seed["signatures"] else []
        data["title"] = "Another title"
        data["dose"]["acceptance_percent"] = [75.0, 125.0]

    old = default_recipe()
    d = diff_recipes(old, _variant(edit))
    assert {c.path for c in d.fields} == {"version", "title", "dose.acceptance_percent"}
    dose = next(c for c in d.fields if c.path == "dose.acceptance_percent")
    assert dose.old == list(old.dose.acceptance_percent) and dose.new == [75.0, 125.0]
    (step,) = d.steps
    assert step.key == "feed_day3" and {c.path for c in step.changes} == {"window.latest", "signatures"}
    window = next(c for c in step.changes if c.path == "window.latest")
    assert window.new == window.old + 2


def test_step_order_is_a_change() -> None:
    def edit(data: dict[str, Any]) -> None:
        steps = data["steps"]
        i = [s["key"] for s in steps].index("feed_day5")
        steps[i], steps[i + 1] = steps[i + 1], steps[i]

    d = diff_recipes(default_recipe(), _variant(edit))
    order = [c for c in d.fields if c.path == "step order"]
    assert len(order) == 1 and order[0].old != order[0].new and d.steps == ()


def test_lists_without_names_are_compared_whole_and_named_ones_by_name() -> None:
    old = {"signatures": ["performed"], "inputs": [{"name": "a", "min": 1}, {"name": "b", "min": 2}]}
    new = {"signatures": ["performed", "verified"], "inputs": [{"name": "b", "min": 3}]}
    assert diff_values(old, new) == (
        Change("signatures", "changed", ["performed"], ["performed", "verified"]),
        Change("inputs[a]", "removed", {"name": "a", "min": 1}, None),
        Change("inputs[b].min", "changed", 2, 3),
    )


def test_values_in_words() -> None:
    assert value_text(None) == "\u2014" and value_text(True) == "yes" and value_text(85.0) == "85"
    assert value_text(["performed", "verified"]) == "performed, verified"
    assert value_text({"name": "x", "unit": "cells", "min": 0.0, "description": ""}) == "name: x; unit: cells; min: 0"


def test_a_named_list_that_was_empty_lists_only_what_was_added() -> None:
    changes = diff_values({"inputs": []}, {"inputs": [{"name": "a", "kind": "number"}]})
    assert [(c.path, c.kind) for c in changes] == [("inputs[a]", "added")]
    gone = diff_values({"materials": ["dl4"]}, {"materials": []})
    assert [(c.path, c.kind, c.old) for c in gone] == [("materials", "removed", ["dl4"])]
