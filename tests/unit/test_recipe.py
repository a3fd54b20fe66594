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
V1 = Path(rmod.__file__).parent / "recipes" / "htlp-dl4-tnfa-v1.yaml"


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
    assert rmod.DEFAULT_RECIPE == "htlp-dl4-tnfa-v2.yaml"
    assert (r.key, r.version, r.t0_step) == ("htlp-dl4-tnfa", 2, "seed")
    assert r.step_keys == ("coat_vessels", "incubator_ready", "receive_cells", "seed", "feed_day3", "feed_day5",
                           "mycoplasma_sample", "harvest", "formulate", "release", "infuse")
    assert r.dose.allowed_per_kg == (1.5e6, 4e6, 9e6)
    assert r.dose.harvest_overage_percent == 25 and r.dose.lower_dose_route
    assert r.planning.infusion_window_days == (4, 10) and r.planning.planned_infusion_day == 7
    assert r.step("feed_day5").optional and r.step("seed").signatures == ("performed", "verified")
    assert r.step("receive_cells").input("donor_id").expected_from == "donor_id"  # type: ignore[union-attr]
    assert load_recipe(None) == r and load_recipe(DEFAULT) == r


def test_default_recipe_v2_content() -> None:
    r = default_recipe()
    # steps after the harvest follow its actual time; the infusion is the last step
    assert {k: r.step(k).window.anchor for k in ("formulate", "release", "infuse")} == dict.fromkeys(
        ("formulate", "release", "infuse"), "harvest")
    assert r.step("infuse").operation == "infusion" and r.step("infuse").predecessors == ("release",)
    assert r.step("harvest").predecessors == ("feed_day3", "mycoplasma_sample")
    # the seeding density is computed from the run's typed vessels, not typed in
    assert [i.name for i in r.step("seed").inputs] == ["viable_cells_seeded", "volume"]
    assert r.seeding is not None and r.seeding.density_per_cm2 == (2.5e4, 5e4)
    assert {k: v.area_cm2 for k, v in r.vessel_types.items()} == {"T75-DL4": 75, "T175-DL4": 175, "BAG-DL4-500": 500}
    # QC results are reported separately: formulate records the product, not the results
    assert [i.name for i in r.step("formulate").inputs] == ["cd7_cells_formulated", "product_volume",
                                                             "qc_sample_volume"]
    cd3 = r.step("harvest").input("cd3_percent")
    assert cd3 is not None and cd3.accept_max is None and not cd3.has_limit  # the limit is CD3+/kg at formulation
    assert [i.kind for i in r.step("infuse").inputs] == ["text", "text", "datetime", "datetime", "number"]
    # materials with lots per reagent; arms; transplant types
    assert [m.key for m in r.materials] == ["dl4", "medium", "scf", "flt3l", "tpo", "il7", "tnfa"]
    assert r.step("coat_vessels").materials == ("dl4", "medium")
    assert r.reagent("tnfa").concentration == 20 and r.reagent("tnfa").unit == "ng/mL"
    with pytest.raises(KeyError, match="unknown reagent 'il2'; materials: dl4, medium"):
        r.reagent("il2")
    assert set(r.arms) == {"adult", "paediatric"}
    assert {k: (v.cd3_limit_per_kg, v.earliest_infusion_day) for k, v in r.transplant_types.items()} == {
        "t_cell_depleted": (2.5e4, 4), "ptcy_hla_mismatched": (1e5, 5), "haploidentical": (5e4, 4)}
    # release: expiry, the endotoxin limit, the QC tests and which ones release waits for
    assert r.release is not None
    assert (r.release.product_shelf_life_hours, r.release.endotoxin_limit_eu_per_kg_h,
            r.release.planned_infusion_hours) == (12, 5, 0.5)
    assert {t.key: (t.sampled_at, t.before_release) for t in r.release.tests} == {
        "gram_stain": ("formulate", True), "endotoxin": ("formulate", True),
        "mycoplasma": ("mycoplasma_sample", True), "sterility": ("formulate", False)}
    assert r.release.test("sterility").notify_positive
    with pytest.raises(KeyError, match="unknown QC test 'ph'"):
        r.release.test("ph")
    # the door openings state their expected recovery; the growth forecast replaces the v1 fold ranges
    opening = r.step("seed").planned_opening
    assert opening is not None and r.step("harvest").planned_opening == opening
    assert r.step("release").planned_opening is None
    assert r.projection.growth is not None and r.projection.sources is None
    assert set(r.projection.growth.sources) == {"mobilized", "cord"}


def test_recipe_v1_still_loads_and_validates() -> None:
    r = load_recipe(V1)
    assert (r.key, r.version) == ("htlp-dl4-tnfa", 1)
    assert r.step_keys == ("coat_vessels", "incubator_ready", "receive_cells", "seed", "feed_day3", "feed_day5",
                           "harvest", "formulate", "release")
    assert r.step("formulate").window.anchor == "t0"
    seeding = r.step("seed").input("seeding_density")
    assert seeding is not None and (seeding.accept_min, seeding.accept_max) == (2.5e4, 5e4)
    assert r.step("seed").door_opening is True and r.step("seed").planned_opening is None
    assert r.projection.sources is not None and r.projection.growth is None
    assert r.release is None and r.seeding is None and not r.materials and not r.transplant_types
    assert r.content_hash != default_recipe().content_hash


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


def mutate_beacon(d: dict[str, Any]) -> None:
    step(d, "seed")["setpoints"][0]["point"] = "alarm_beacon"


def mutate_setpoint_range(d: dict[str, Any]) -> None:
    step(d, "seed")["setpoints"][0]["value"] = 145


def mutate_channel(d: dict[str, Any]) -> None:
    step(d, "seed")["channels"] = ["incubator.pressure"]


def mutate_meaning(d: dict[str, Any]) -> None:
    step(d, "seed")["signatures"] = ["performed", "witnessed"]


def mutate_accept_order(d: dict[str, Any]) -> None:
    step(d, "coat_vessels")["inputs"][1].update(accept_min=38)


def _cell_source(d: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in step(d, "receive_cells")["inputs"] if i["name"] == "cell_source")


def mutate_expected_kind(d: dict[str, Any]) -> None:
    inp = _cell_source(d)
    del inp["expected_from"]
    inp["expected"] = "maybe"


def mutate_expected_twice(d: dict[str, Any]) -> None:
    _cell_source(d)["expected"] = "cord"


def mutate_context_key(d: dict[str, Any]) -> None:
    step(d, "receive_cells")["inputs"][0]["expected_from"] = "favourite_colour"


def mutate_choice_without_choices(d: dict[str, Any]) -> None:
    _cell_source(d)["choices"] = []


def mutate_limit_on_datetime(d: dict[str, Any]) -> None:
    step(d, "infuse")["inputs"][2]["accept_min"] = 0


def mutate_planning(d: dict[str, Any]) -> None:
    d["planning"]["planned_infusion_day"] = 11


def mutate_acceptance_percent(d: dict[str, Any]) -> None:
    d["dose"]["acceptance_percent"] = [110, 120]


def mutate_fold(d: dict[str, Any]) -> None:  # recipe v1's fold ranges, still part of the model
    d["projection"]["sources"] = {"cord": {"fold": [50, 20], "cd7_percent": [55, 80]}}


def mutate_overage(d: dict[str, Any]) -> None:
    d["dose"]["harvest_overage_percent"] = -5


def mutate_arm_weight(d: dict[str, Any]) -> None:
    d["arms"]["paediatric"]["patient_weight_kg"] = [120, 2]


def mutate_unknown_arm(d: dict[str, Any]) -> None:
    d["arms"]["elderly"] = {"patient_weight_kg": [60, 120]}


def mutate_unknown_transplant_type(d: dict[str, Any]) -> None:
    d["transplant_types"]["autologous"] = {"cd3_limit_per_kg": 1e5, "earliest_infusion_day": 4}


def mutate_cd3_limit(d: dict[str, Any]) -> None:
    d["transplant_types"]["haploidentical"]["cd3_limit_per_kg"] = 0


def mutate_material(d: dict[str, Any]) -> None:
    step(d, "seed")["materials"] = [*step(d, "seed")["materials"], "il2"]


def mutate_duplicate_material(d: dict[str, Any]) -> None:
    step(d, "coat_vessels")["materials"] = ["dl4", "dl4"]


def mutate_duplicate_reagent(d: dict[str, Any]) -> None:
    d["materials"].append(d["materials"][0])


def mutate_reagent_unit(d: dict[str, Any]) -> None:
    del d["materials"][0]["unit"]


def mutate_vessel_area(d: dict[str, Any]) -> None:
    d["vessel_types"]["T75-DL4"]["area_cm2"] = 0


def mutate_seeding_order(d: dict[str, Any]) -> None:
    d["seeding"]["density_per_cm2"] = [5e4, 2.5e4]


def mutate_qc_sampled_at(d: dict[str, Any]) -> None:
    d["release"]["tests"][2]["sampled_at"] = "mycoplasma"


def mutate_duplicate_qc_test(d: dict[str, Any]) -> None:
    d["release"]["tests"].append(d["release"]["tests"][0])


def mutate_two_endotoxin_tests(d: dict[str, Any]) -> None:
    d["release"]["tests"].append({**d["release"]["tests"][1], "key": "endotoxin_repeat"})


def mutate_qc_kind(d: dict[str, Any]) -> None:
    d["release"]["tests"][0]["kind"] = "colour"


def mutate_shelf_life(d: dict[str, Any]) -> None:
    d["release"]["product_shelf_life_hours"] = 0


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
    # the beacon follows the alarms, never the recipe
    (mutate_beacon, "incubator.alarm_beacon is not a setpoint role; setpoints: ['co2_setpoint', "
                    "'temperature_setpoint']"),
    # the role's range; the bound device's own limits are checked when the setpoint is written
    (mutate_setpoint_range, "incubator.temperature_setpoint = 145 is outside -20..100 degC"),
    (mutate_channel, "unknown channel 'incubator.pressure'"),
    (mutate_meaning, "steps[seed].signatures[1]: Input should be 'performed', 'verified', 'reviewed' or 'approved'"),
    (mutate_accept_order, "steps[coat_vessels].inputs[coat_temperature]: acceptance accept_min 38 > accept_max 37.5"),
    (mutate_expected_kind, "expected 'maybe' does not fit a choice input with choices ['mobilized', 'cord']"),
    (mutate_expected_twice, "give expected or expected_from, not both"),
    (mutate_context_key, "expected_from 'favourite_colour' is not a run attribute"),
    (mutate_choice_without_choices, "a choice input needs choices, and only a choice input has them"),
    (mutate_limit_on_datetime, "steps[infuse].inputs[infusion_start]: min/max/accept_min/accept_max apply to number "
                               "and integer inputs, not datetime"),
    (mutate_planning, "planned_infusion_day 11 is outside infusion_window_days 4..10"),
    (mutate_acceptance_percent, "acceptance_percent must be low <= 100 <= high, got [110.0, 120.0]"),
    (mutate_fold, "fold range must be 1 <= low <= high, got [50.0, 20.0]"),
    (mutate_overage, "dose.harvest_overage_percent: Input should be greater than or equal to 0"),
    (mutate_arm_weight, "patient_weight_kg must be 0 < low <= high, got [120.0, 2.0]"),
    (mutate_unknown_arm, "arms.elderly.[key]: Input should be 'adult' or 'paediatric'"),
    (mutate_unknown_transplant_type, "transplant_types.autologous.[key]: Input should be 't_cell_depleted', "
                                     "'ptcy_hla_mismatched' or 'haploidentical'"),
    (mutate_cd3_limit, "transplant_types.haploidentical.cd3_limit_per_kg: Input should be greater than 0"),
    (mutate_material, "step 'seed': material 'il2' is not a reagent of this recipe (materials)"),
    (mutate_duplicate_material, "steps[coat_vessels]: duplicate materials ['dl4']"),
    (mutate_duplicate_reagent, "materials: duplicate reagent keys ['dl4']"),
    (mutate_reagent_unit, "materials[dl4]: give concentration and unit together"),
    (mutate_vessel_area, "vessel_types.T75-DL4.area_cm2: Input should be greater than 0"),
    (mutate_seeding_order, "density_per_cm2 must be low <= high, got [50000.0, 25000.0]"),
    (mutate_qc_sampled_at, "release.tests[mycoplasma]: sampled_at 'mycoplasma' is not a step of this recipe"),
    (mutate_duplicate_qc_test, "duplicate QC tests ['gram_stain']"),
    (mutate_two_endotoxin_tests, "at most one endotoxin test"),
    (mutate_qc_kind, "release.tests[gram_stain].kind: Input should be 'negative_positive' or 'endotoxin'"),
    (mutate_shelf_life, "release.product_shelf_life_hours: Input should be greater than 0"),
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
    assert ok.exit_code == 0 and default_recipe().content_hash in ok.output and "htlp-dl4-tnfa v2" in ok.output
    old = runner.invoke(cli, ["recipe", "validate", str(V1)])
    assert old.exit_code == 0 and load_recipe(V1).content_hash in old.output and "htlp-dl4-tnfa v1" in old.output
    data = base()
    mutate_predecessor(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    res = runner.invoke(cli, ["recipe", "validate", "--json", str(bad)])
    assert res.exit_code == 1
    out = json.loads(res.output)
    assert out["ok"] is False and any("feed_day4" in e for e in out["errors"])


def test_the_cache_of_released_recipes_keeps_apart_rows_of_the_same_id_from_other_databases() -> None:
    import json as _json

    from app.protocol import recipes as recipes_store

    base = default_recipe().model_dump(mode="json")
    other = {**base, "title": base["title"] + " (other site)"}
    one = recipes_store.recipe_of({"id": 1, "content": _json.dumps(base)})
    two = recipes_store.recipe_of({"id": 1, "content": _json.dumps(other)})
    assert one.title == base["title"] and two.title == other["title"]
    assert recipes_store.recipe_of({"id": 1, "content": _json.dumps(base)}) is one  # still a cache
