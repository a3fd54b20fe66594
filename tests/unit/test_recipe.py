"""Recipe format: the default recipe, every cross-validation rule with its message, a stable content hash."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import app as cli
from app.protocol import recipe as rmod
from app.protocol.recipe import RecipeError, default_recipe, load_recipe, parse_recipe

DEFAULT = Path(rmod.__file__).parent / "recipes" / rmod.DEFAULT_RECIPE


def base() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(DEFAULT.read_text(encoding="utf-8")))


def step(data: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in data["steps"] if s["key"] == key)


def errors_of(data: dict[str, Any]) -> str:
    with pytest.raises(RecipeError) as exc:
        parse_recipe(yaml.safe_dump(data), "test.yaml")
    return "\n".join(exc.value.errors)


def test_default_recipe_is_packaged_and_complete() -> None:
    r = default_recipe()
    assert (r.key, r.version, r.t0_step) == ("htlp-dl4-tnfa", 1, "seed")
    assert r.step_keys == ("coat_vessels", "incubator_ready", "receive_cells", "seed", "feed_day3", "feed_day5",
                           "harvest", "formulate", "release")
    assert r.dose.allowed_per_kg == (1.5e6, 4e6, 9e6)
    assert r.planning.infusion_window_days == (4, 10) and r.planning.planned_infusion_day == 7
    assert r.step("feed_day5").optional and r.step("seed").signatures == ("performed", "verified")
    assert r.step("receive_cells").input("donor_id").expected_from == "donor_id"  # type: ignore[union-attr]
    assert load_recipe(None) == r and load_recipe(DEFAULT) == r


def test_meanings_match_the_signature_module() -> None:
    from typing import get_args

    from app.records.signatures import MEANINGS

    assert get_args(rmod.Meaning) == MEANINGS


def test_content_hash_ignores_formatting_and_key_order() -> None:
    r = default_recipe()
    data = base()
    reordered = {k: data[k] for k in reversed(list(data))}
    reordered["steps"] = [{k: s[k] for k in sorted(s, reverse=True)} for s in data["steps"]]
    for text in (yaml.safe_dump(reordered, default_flow_style=True, width=10_000), json.dumps(reordered, indent=3),
                 "# a comment\n" + yaml.safe_dump(data, sort_keys=True)):
        assert parse_recipe(text).content_hash == r.content_hash
    data["steps"][0]["title"] += "!"
    assert parse_recipe(yaml.safe_dump(data)).content_hash != r.content_hash
    assert len(r.content_hash) == 64


def test_int_and_float_spellings_hash_the_same() -> None:
    a, b = base(), base()
    step(a, "harvest")["window"]["target"] = 168
    step(b, "harvest")["window"]["target"] = 168.0
    assert parse_recipe(yaml.safe_dump(a)).content_hash == parse_recipe(yaml.safe_dump(b)).content_hash


def mutate_unknown_field(d: dict[str, Any]) -> None:
    step(d, "seed")["colour"] = "blue"


def mutate_unknown_window_field(d: dict[str, Any]) -> None:
    step(d, "seed")["window"]["soon"] = 1


def mutate_predecessor(d: dict[str, Any]) -> None:
    step(d, "harvest")["predecessors"] = ["feed_day4"]


def mutate_anchor(d: dict[str, Any]) -> None:
    step(d, "harvest")["window"]["anchor"] = "dinner"


def mutate_cycle(d: dict[str, Any]) -> None:
    step(d, "seed")["predecessors"].append("harvest")


def mutate_anchor_cycle(d: dict[str, Any]) -> None:
    step(d, "formulate")["window"]["anchor"] = "release"
    step(d, "formulate")["window"].update(earliest=-8, target=-2, latest=0)


def mutate_self(d: dict[str, Any]) -> None:
    step(d, "seed")["predecessors"].append("seed")


def mutate_window(d: dict[str, Any]) -> None:
    step(d, "feed_day3")["window"]["target"] = 80


def mutate_hard(d: dict[str, Any]) -> None:
    step(d, "feed_day3")["window"]["hard_latest"] = 77


def mutate_unit(d: dict[str, Any]) -> None:
    step(d, "harvest")["inputs"][1]["unit"] = "percent"


def mutate_numeric_without_unit(d: dict[str, Any]) -> None:
    del step(d, "harvest")["inputs"][1]["unit"]


def mutate_duplicate_step(d: dict[str, Any]) -> None:
    d["steps"].append(step(d, "seed"))


def mutate_duplicate_input(d: dict[str, Any]) -> None:
    s = step(d, "harvest")
    s["inputs"] = [*s["inputs"], s["inputs"][0]]


def mutate_t0_step(d: dict[str, Any]) -> None:
    d["t0_step"] = "sow"


def mutate_setpoint(d: dict[str, Any]) -> None:
    step(d, "seed")["setpoints"][0]["point"] = "temperature"


def mutate_setpoint_range(d: dict[str, Any]) -> None:
    step(d, "seed")["setpoints"][0]["value"] = 145


def mutate_channel(d: dict[str, Any]) -> None:
    step(d, "seed")["channels"] = ["incubator.pressure"]


def mutate_meaning(d: dict[str, Any]) -> None:
    step(d, "seed")["signatures"] = ["performed", "witnessed"]


def mutate_accept_order(d: dict[str, Any]) -> None:
    step(d, "seed")["inputs"][1].update(accept_min=6e4)


def mutate_expected_kind(d: dict[str, Any]) -> None:
    step(d, "formulate")["inputs"][2]["expected"] = "maybe"


def mutate_context_key(d: dict[str, Any]) -> None:
    step(d, "receive_cells")["inputs"][0]["expected_from"] = "favourite_colour"


def mutate_choice_without_choices(d: dict[str, Any]) -> None:
    step(d, "formulate")["inputs"][2]["choices"] = []


def mutate_planning(d: dict[str, Any]) -> None:
    d["planning"]["planned_infusion_day"] = 11


def mutate_acceptance_percent(d: dict[str, Any]) -> None:
    d["dose"]["acceptance_percent"] = [110, 120]


def mutate_fold(d: dict[str, Any]) -> None:
    d["projection"]["sources"]["cord"]["fold"] = [50, 20]


def mutate_nan(d: dict[str, Any]) -> None:
    step(d, "harvest")["inputs"][1]["accept_min"] = float("nan")


RULES = [
    (mutate_unknown_field, "steps[seed].colour: unknown field"),
    (mutate_unknown_window_field, "steps[seed].window.soon: unknown field"),
    (mutate_predecessor, "step 'harvest': predecessor 'feed_day4' is not a step of this recipe"),
    (mutate_anchor, "step 'harvest': window anchor 'dinner' is neither t0 nor a step of this recipe"),
    (mutate_cycle, "cycle in step order (predecessors and anchors): "),
    (mutate_anchor_cycle, "cycle in step order (predecessors and anchors): formulate -> release -> formulate"),
    (mutate_self, "step 'seed': a step cannot be its own predecessor"),
    (mutate_window, "steps[feed_day3].window: window must have earliest <= target <= latest <= hard_latest, "
                    "got 66 / 80 / 78 / 84"),
    (mutate_hard, "got 66 / 72 / 78 / 77"),
    (mutate_unit, "steps[harvest].inputs[viability]: unknown unit 'percent'; known: %"),
    (mutate_numeric_without_unit, "steps[harvest].inputs[viability]: a number input needs a unit"),
    (mutate_duplicate_step, "duplicate step keys ['seed']"),
    (mutate_duplicate_input, "steps[harvest]: duplicate input names ['total_viable_cells']"),
    (mutate_t0_step, "t0_step 'sow' is not a step of this recipe"),
    (mutate_setpoint, "incubator.temperature is not a setpoint role; setpoints: ['co2_setpoint', "
                      "'temperature_setpoint']"),
    # the role's range; the bound device's own limits are checked when the setpoint is written
    (mutate_setpoint_range, "incubator.temperature_setpoint = 145 is outside -20..100 degC"),
    (mutate_channel, "unknown channel 'incubator.pressure'"),
    (mutate_meaning, "steps[seed].signatures[1]: Input should be 'performed', 'verified', 'reviewed' or 'approved'"),
    (mutate_accept_order, "acceptance accept_min 60000 > accept_max 50000"),
    (mutate_expected_kind, "expected 'maybe' does not fit a choice input with choices ['negative', 'positive']"),
    (mutate_context_key, "expected_from 'favourite_colour' is not a run attribute"),
    (mutate_choice_without_choices, "a choice input needs choices, and only a choice input has them"),
    (mutate_planning, "planned_infusion_day 11 is outside infusion_window_days 4..10"),
    (mutate_acceptance_percent, "acceptance_percent must be low <= 100 <= high, got [110.0, 120.0]"),
    (mutate_fold, "fold range must be 1 <= low <= high, got [50.0, 20.0]"),
    (mutate_nan, "steps[harvest].inputs[viability].accept_min: Input should be a finite number"),
]


@pytest.mark.parametrize(("mutate", "message"), RULES, ids=[m.__name__.removeprefix("mutate_") for m, _ in RULES])
def test_validation_rule(mutate: Any, message: str) -> None:
    data = base()
    mutate(data)
    assert message in errors_of(data)


def test_not_yaml_and_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe("steps: [unclosed")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        parse_recipe("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "none.yaml")


def test_cli_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["recipe", "validate", str(DEFAULT)])
    assert ok.exit_code == 0 and default_recipe().content_hash in ok.output and "htlp-dl4-tnfa v1" in ok.output
    data = base()
    mutate_predecessor(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    res = runner.invoke(cli, ["recipe", "validate", "--json", str(bad)])
    assert res.exit_code == 1
    out = json.loads(res.output)
    assert out["ok"] is False and any("feed_day4" in e for e in out["errors"])
