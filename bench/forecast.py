"""Forecast benchmark: how well the projection band at seed and at the day-3 count covers the CD7+ cells a simulated
culture really has at harvest, with the fold-by-day forecast (app/protocol/forecast.py, recipe v2's
`projection.growth`) and, side by side, recipe v1's exponential extrapolation of the day-3 fold.

Run `python -m bench.forecast --runs 400` (`--help` for the flags). Each run is a `CultureModel` (seeds 0, 1, ...)
seeded with 2e6 viable cells; the day-3 count is read at a deterministic hour in 66..78 h and the harvest at 168 h,
both from the model's measured values (with their noise) x the culture volume. It prints, it does not assert
(tests/unit/test_forecast.py asserts the same figures for the fold-by-day forecast).

Columns, per source, basis and model:
- `CD7+ in band`, `fold in band`: share of runs whose real CD7+ cells (fold T0 -> harvest) at 168 h lie in the band;
- `alert -20%`: share of runs alerted when the culture really falls 20 % short (required = actual CD7+ / 0.8);
- `false alert +20%`: share alerted although it has 20 % more than required (required = actual / 1.2);
- `high/low`, `median/actual`: medians over the runs of the band's width and of its median over the real cells
  (v1 has no median: the geometric middle of its band).

`--fit` prints instead the `projection.growth` YAML fitted with `fit_growth` from simulated runs observed on days
1..7 (seeds from 10000, apart from the benchmark's): how the recipe's numbers were made.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.protocol.forecast import (
    ForecastBand,
    GrowthForecast,
    GrowthObservation,
    SourceGrowth,
    fit_growth,
    forecast_at_count,
    forecast_at_seed,
)
from app.protocol.recipe import Recipe, load_recipe
from simulators.physics import CultureModel

RECIPES = Path(__file__).resolve().parents[1] / "app" / "protocol" / "recipes"
V1 = RECIPES / "htlp-dl4-tnfa-v1.yaml"
V2 = RECIPES / "htlp-dl4-tnfa-v2.yaml"
SOURCES = ("mobilized", "cord")
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SEEDED = 2.0e6
HARVEST_H = 168.0
FIT_FIRST_SEED = 10_000


@dataclass(frozen=True, slots=True)
class SimulatedRun:
    seed: int
    count_hours: float
    count_cells: float
    harvest_cells: float
    cd7_percent: float

    @property
    def cd7_cells(self) -> float:
        return self.harvest_cells * self.cd7_percent / 100.0


def count_hour(seed: int) -> float:
    """The day-3 count's hour of run `seed`: deterministic, anywhere in the window 66..78 h."""
    return random.Random(f"day3-count:{seed}").uniform(66.0, 78.0)


def simulate(source: str, seed: int) -> SimulatedRun:
    """One culture: the day-3 count and the harvest at 168 h, read from the model's measured values."""
    model = CultureModel(T0, seed, source)
    volume = SEEDED / model.seeding_density
    hours = count_hour(seed)
    model.step(T0 + timedelta(hours=hours))
    count = model.values()["viable_cell_density"] * volume
    model.step(T0 + timedelta(hours=HARVEST_H))
    v = model.values()
    return SimulatedRun(seed, hours, count, v["viable_cell_density"] * volume, v["cd7_percent"])


def observe(source: str, seed: int, days: tuple[float, ...]) -> GrowthObservation:
    """One culture's measured fold on each of `days`, and its %CD7+ on the last."""
    model = CultureModel(T0, seed, source)
    volume = SEEDED / model.seeding_density
    folds = []
    for d in days:
        model.step(T0 + timedelta(days=d))
        folds.append(model.values()["viable_cell_density"] * volume / SEEDED)
    return GrowthObservation(days, tuple(folds), model.values()["cd7_percent"])


@dataclass(frozen=True, slots=True)
class Band:
    low: float
    high: float
    median: float
    fold_low: float
    fold_high: float


def _new(band: ForecastBand) -> Band:
    return Band(band.low, band.high, band.median, band.fold_low, band.fold_high)


def v1_band(recipe: Recipe, source: str, seeded: float, count: float | None, hours: float | None) -> Band:
    """Recipe v1's projection as app/protocol/dose.py computed it (projection_at_seed / projection_at_day3 before
    the fold-by-day forecast): the source's prior ranges at seed; at day 3 the fold f3 extrapolated as exponential
    growth, f3 ** (culture_hours / h), / and x day3_uncertainty, narrowed to the prior range where they overlap."""
    p = recipe.projection
    assert p.sources is not None and p.day3_uncertainty is not None, "recipe v1 has the exponential parameters"
    ranges = p.sources[source]  # type: ignore[index]
    lo, hi = ranges.fold
    if count is not None and hours is not None:
        f3 = count / seeded
        extrapolated = f3 ** (p.culture_hours / hours) if f3 > 0 else 0.0
        elo, ehi = extrapolated / p.day3_uncertainty, extrapolated * p.day3_uncertainty
        if elo <= hi and ehi >= lo:
            elo, ehi = max(elo, lo), min(ehi, hi)
        lo, hi = elo, ehi
    c_lo, c_hi = ranges.cd7_percent
    low, high = seeded * lo * c_lo / 100, seeded * hi * c_hi / 100
    return Band(low, high, math.sqrt(low * high), lo, hi)


@dataclass(frozen=True, slots=True)
class Figures:
    cd7_cover: float
    fold_cover: float
    alert: float
    false_alert: float
    width: float
    median_ratio: float


def figures(runs: list[SimulatedRun], band_for: Callable[[SimulatedRun], Band]) -> Figures:
    """Coverage and alert rates of `band_for` over `runs` (alerts: the band's low end below the required cells)."""
    bands = [(r, band_for(r)) for r in runs]
    n = len(bands)
    return Figures(
        cd7_cover=sum(b.low <= r.cd7_cells <= b.high for r, b in bands) / n,
        fold_cover=sum(b.fold_low <= r.harvest_cells / SEEDED <= b.fold_high for r, b in bands) / n,
        alert=sum(b.low < r.cd7_cells / 0.8 for r, b in bands) / n,
        false_alert=sum(b.low < r.cd7_cells / 1.2 for r, b in bands) / n,
        width=statistics.median(b.high / b.low for _, b in bands),
        median_ratio=statistics.median(b.median / r.cd7_cells for r, b in bands),
    )


def band_makers(growth: GrowthForecast, v1: Recipe,
                source: str) -> dict[str, dict[str, Callable[[SimulatedRun], Band]]]:
    """basis -> model -> the band of a run, for `source`."""
    return {
        "seed": {
            "fold-by-day": lambda r: _new(forecast_at_seed(growth, source, SEEDED, r.cd7_cells, HARVEST_H)),
            "exponential": lambda r: v1_band(v1, source, SEEDED, None, None),
        },
        "day3": {
            "fold-by-day": lambda r: _new(forecast_at_count(growth, source, SEEDED, r.count_cells, r.count_hours,
                                                            r.cd7_cells, HARVEST_H)),
            "exponential": lambda r: v1_band(v1, source, SEEDED, r.count_cells, r.count_hours),
        },
    }


def fit_yaml(growth: GrowthForecast | None, runs: int, days: tuple[float, ...]) -> str:
    """The `projection.growth` mapping fitted from `runs` simulated runs per source, as recipe YAML."""
    band = 90.0 if growth is None else growth.band_percent
    refine = "{min_runs: 10, prior_weight: 20}" if growth is None or growth.refine is None else (
        f"{{min_runs: {growth.refine.min_runs}, prior_weight: {growth.refine.prior_weight:g}}}")
    lines = [f"    # fitted with fit_growth from {runs} simulated runs per source, days "
             f"{days[0]:g}..{days[-1]:g} (python -m bench.forecast --fit)",
             f"    band_percent: {band:g}", f"    refine: {refine}", "    sources:"]
    for source in SOURCES:
        fit: SourceGrowth = fit_growth([observe(source, s, days) for s in range(FIT_FIRST_SEED, FIT_FIRST_SEED + runs)])
        lines += [f"      {source}:", "        curve:"]
        lines += [f"          - {{day: {p.day:g}, median_fold: {p.median_fold:.3g}, log_sd: {p.log_sd:.3g}}}"
                  for p in fit.curve]
        lines += [f"        residual_log_sd: {fit.residual_log_sd:.3g}",
                  f"        cd7_median_percent: {fit.cd7_median_percent:.3g}",
                  f"        cd7_log_sd: {fit.cd7_log_sd:.3g}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--runs", type=int, default=400, help="simulated runs per source")
    ap.add_argument("--recipe", type=Path, default=V2, help="recipe with projection.growth (default: v2)")
    ap.add_argument("--v1", type=Path, default=V1, help="recipe with the exponential projection (default: v1)")
    ap.add_argument("--fit", action="store_true", help="print the fitted projection.growth YAML instead")
    args = ap.parse_args()
    growth = load_recipe(args.recipe).projection.growth if args.recipe.exists() else None
    if args.fit:
        print(fit_yaml(growth, args.runs, tuple(float(d) for d in range(1, 8))))
        return
    if growth is None:
        ap.error(f"{args.recipe} has no projection.growth")
    v1 = load_recipe(args.v1)
    print(f"# {args.runs} runs per source (seeds 0..{args.runs - 1}), {SEEDED:.0e} viable cells seeded, day-3 count "
          f"at 66-78 h, harvest at {HARVEST_H:g} h; fold-by-day: {args.recipe.name} ({growth.band_percent:g} % "
          f"band), exponential: {args.v1.name}")
    print(f"{'source':10} {'basis':6} {'model':13} {'CD7+ in band':>12} {'fold in band':>12} {'alert -20%':>10} "
          f"{'false alert +20%':>16} {'high/low':>8} {'median/actual':>13}")
    for source in SOURCES:
        runs = [simulate(source, s) for s in range(args.runs)]
        models = band_makers(growth, v1, source)
        for basis, by_model in models.items():
            for name, band_for in by_model.items():
                f = figures(runs, band_for)
                print(f"{source:10} {basis:6} {name:13} {f.cd7_cover:12.1%} {f.fold_cover:12.1%} {f.alert:10.1%} "
                      f"{f.false_alert:16.1%} {f.width:8.2f} {f.median_ratio:13.2f}")


if __name__ == "__main__":
    main()
