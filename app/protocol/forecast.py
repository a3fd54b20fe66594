"""The fold-by-day forecast of the CD7+ cells at harvest, pure (no I/O, no clock).

Model, per cell source (the parameters are recipe data, `projection.growth`, a `GrowthForecast`):

    log fold(t) = mu(t) + sigma(t) * Z + e

fold(t) = viable cells at t / viable cells seeded (N0); Z ~ N(0, 1) is one growth factor per run (a culture that
grows fast early grows fast late), e ~ N(0, residual_log_sd^2) is independent per measurement (count noise and
what one factor does not explain). mu(t) = log(median_fold(t)) and sigma(t) are interpolated linearly in hours
between the curve's points; day 0 is implied (fold 1, sd 0). %CD7+ at harvest is lognormal(log(cd7_median),
cd7_log_sd), independent of the growth. CD7+ cells at harvest = N0 x fold(T) x %CD7+ / 100, so its log is normal.
With z the two-sided normal quantile of the band level (1.6449 for 90 %):

At seed the band of log CD7+ at harvest (T = culture hours) is
    log N0 + mu(T) + log c_med +- z * sqrt(sigma(T)^2 + resid^2 + cd7_sd^2).
At a count at hour h with observed fold y = log(N_h / N0) the posterior of Z given y is normal with
    mean m = sigma_h (y - mu_h) / (sigma_h^2 + resid^2),  variance v = resid^2 / (sigma_h^2 + resid^2)
(the prior, m = 0 and v = 1, when sigma_h and resid are both 0), so log fold(T) ~ N(mu_T + sigma_T m,
sigma_T^2 v + resid^2), combined with the %CD7+ spread as above. The fold band alone is reported too.
An alert is raised when the band's low end is below the required CD7+ cells.

Refinement (optional, `refine`): with at least `min_runs` completed runs of the site, the curve's log-median and
variance at its last point (the harvest day) and the %CD7+ log-median and log-variance are replaced by weighted
averages of the recipe's values (weight `prior_weight`) and the runs' (weight n); the rest of the curve is scaled
so it keeps its shape. `fit_growth` derives the curve from fold trajectories (simulated or real).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.protocol.numbers import percent, positive

Source = Literal["mobilized", "cord"]
Basis = Literal["seed", "count"]

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrowthPoint(_Frozen):
    """The fold vs T0 a day after seeding: its median over runs and the sd of its natural log."""

    day: Finite
    median_fold: Finite
    log_sd: Finite

    @field_validator("day")
    @classmethod
    def _day(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"day must be > 0 (day 0 is implied: fold 1, sd 0), got {v:g}")
        return v

    @field_validator("median_fold")
    @classmethod
    def _fold(cls, v: float) -> float:
        if v < 1:
            raise ValueError(f"median_fold must be >= 1 (a fold vs the cells seeded), got {v:g}")
        return v

    @field_validator("log_sd")
    @classmethod
    def _sd(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"log_sd must be >= 0, got {v:g}")
        return v


class SourceGrowth(_Frozen):
    """The growth curve of one cell source, its residual and its %CD7+ at harvest."""

    curve: tuple[GrowthPoint, ...] = Field(min_length=1)
    residual_log_sd: Finite
    cd7_median_percent: Finite
    cd7_log_sd: Finite

    @field_validator("residual_log_sd", "cd7_log_sd")
    @classmethod
    def _sd(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v:g}")
        return v

    @field_validator("cd7_median_percent")
    @classmethod
    def _cd7(cls, v: float) -> float:
        if not 0 < v <= 100:
            raise ValueError(f"cd7_median_percent must be in (0, 100], got {v:g}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> SourceGrowth:
        days = [p.day for p in self.curve]
        if any(b <= a for a, b in itertools.pairwise(days)):
            raise ValueError(f"curve days must be strictly increasing, got {', '.join(f'{d:g}' for d in days)}")
        folds = [p.median_fold for p in self.curve]
        if any(b < a for a, b in itertools.pairwise(folds)):
            raise ValueError(f"curve median_fold must not decrease from day to day, got "
                             f"{', '.join(f'{f:g}' for f in folds)}")
        return self

    @property
    def last_hours(self) -> float:
        """Hours after T0 of the curve's last point."""
        return self.curve[-1].day * 24.0

    def at(self, hours: float) -> tuple[float, float]:
        """(mu, sigma) of log fold at `hours` after T0, interpolated linearly in hours; ValueError past the curve."""
        if not 0 <= hours <= self.last_hours:
            raise ValueError(f"{hours:g} h is outside the growth curve (0 .. {self.last_hours:g} h)")
        t0, mu0, sd0 = 0.0, 0.0, 0.0
        for p in self.curve:
            t1, mu1, sd1 = p.day * 24.0, math.log(p.median_fold), p.log_sd
            if hours <= t1:
                w = (hours - t0) / (t1 - t0)
                return mu0 + w * (mu1 - mu0), sd0 + w * (sd1 - sd0)
            t0, mu0, sd0 = t1, mu1, sd1
        return mu0, sd0  # pragma: no cover - hours == last point is returned in the loop


class Refinement(_Frozen):
    """Refine a source's curve from the site's completed runs: at least `min_runs`, the recipe weighing
    `prior_weight` runs."""

    min_runs: Annotated[int, Field(ge=2)]
    prior_weight: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class GrowthForecast(_Frozen):
    """Recipe `projection.growth`: the band level, the growth per cell source, and the optional refinement."""

    band_percent: Annotated[float, Field(ge=50, le=99.9, allow_inf_nan=False)] = 90.0
    sources: dict[Source, SourceGrowth] = Field(min_length=1)
    refine: Refinement | None = None


@dataclass(frozen=True, slots=True)
class CompletedRun:
    """A finished run of the site (for refinement): cells seeded, the count (optional), the harvest and %CD7+."""

    seeded: float
    count_cells: float | None
    count_hours: float | None
    harvest_cells: float
    harvest_hours: float
    cd7_percent: float

    def __post_init__(self) -> None:
        positive("seeded", self.seeded)
        positive("harvest_cells", self.harvest_cells)
        positive("harvest_hours", self.harvest_hours)
        percent("cd7_percent", self.cd7_percent, allow_zero=False)
        if (self.count_cells is None) != (self.count_hours is None):
            raise ValueError("count_cells and count_hours go together: give both or neither")
        if self.count_cells is not None and self.count_hours is not None:
            positive("count_cells", self.count_cells, allow_zero=True)
            positive("count_hours", self.count_hours)


@dataclass(frozen=True, slots=True)
class GrowthObservation:
    """One run's fold trajectory (viable cells / cells seeded at each of `days`) and its %CD7+ at harvest."""

    days: tuple[float, ...]
    folds: tuple[float, ...]
    cd7_percent: float


@dataclass(frozen=True, slots=True)
class ForecastBand:
    """The forecast of the CD7+ cells at harvest against what the patient needs."""

    basis: Basis
    low: float  # CD7+ cells at harvest
    high: float
    median: float
    fold_low: float  # fold T0 -> harvest
    fold_high: float
    fold_median: float
    cd7_percent: tuple[float, float]
    observed_fold: float | None  # at the count; None at seed
    hours: float | None  # of the count after T0; None at seed
    required: float
    alert: bool  # low < required
    band_percent: float
    site_runs: int  # completed site runs the curve was refined with (0: the recipe's curve)
    message: str


def _source(model: GrowthForecast, source: str) -> SourceGrowth:
    for key, growth in model.sources.items():
        if key == source:
            return growth
    raise ValueError(f"source {source!r} has no growth curve; known: {', '.join(sorted(model.sources))}")


def _culture_hours(growth: SourceGrowth, value: float) -> float:
    hours = positive("culture_hours", value)
    if hours > growth.last_hours:
        raise ValueError(f"culture_hours {hours:g} is past the growth curve's last point ({growth.last_hours:g} h)")
    return hours


def _growth(model: GrowthForecast, source: str, site_runs: Sequence[CompletedRun]) -> tuple[SourceGrowth, int]:
    growth = _source(model, source)
    if model.refine is None or not site_runs:
        return growth, 0
    return refine(growth, model.refine, site_runs)


def _z(band_percent: float) -> float:
    return NormalDist().inv_cdf(0.5 + band_percent / 200.0)


def _band(basis: Basis, model: GrowthForecast, growth: SourceGrowth, seeded: float, fold_mean: float,
          fold_var: float, required: float, culture_hours: float, observed: float | None, hours: float | None,
          site_runs: int) -> ForecastBand:
    z = _z(model.band_percent)
    log_c, sd_c = math.log(growth.cd7_median_percent / 100.0), growth.cd7_log_sd
    fold_half = z * math.sqrt(fold_var)
    cells_mean = math.log(seeded) + fold_mean + log_c
    cells_half = z * math.sqrt(fold_var + sd_c * sd_c)
    low, high, median = math.exp(cells_mean - cells_half), math.exp(cells_mean + cells_half), math.exp(cells_mean)
    cd7 = (100.0 * math.exp(log_c - z * sd_c), min(100.0, 100.0 * math.exp(log_c + z * sd_c)))
    alert = low < required
    where = "at seed" if hours is None else f"from the count at {hours:g} h (fold {observed:.2f}x)"
    refined = f", refined with {site_runs} site runs" if site_runs else ""
    message = (f"CD7+ cells at harvest ({culture_hours:g} h), {model.band_percent:g} % band {where}{refined}: "
               f"{low:.3g} .. {high:.3g} (median {median:.3g}), required {required:.3g}"
               + ("; the low end is below the required dose" if alert else ""))
    return ForecastBand(basis, low, high, median, math.exp(fold_mean - fold_half), math.exp(fold_mean + fold_half),
                        math.exp(fold_mean), cd7, observed, hours, required, alert, model.band_percent, site_runs,
                        message)


def forecast_at_seed(model: GrowthForecast, source: str, viable_cells_seeded: float, required: float,
                     culture_hours: float, site_runs: Sequence[CompletedRun] = ()) -> ForecastBand:
    """The band of the CD7+ cells at harvest from the cells seeded and the source's curve alone."""
    growth, used = _growth(model, source, site_runs)
    seeded = positive("viable_cells_seeded", viable_cells_seeded)
    need = positive("required", required)
    total = _culture_hours(growth, culture_hours)
    mu, sigma = growth.at(total)
    resid = growth.residual_log_sd
    return _band("seed", model, growth, seeded, mu, sigma * sigma + resid * resid, need, total, None, None, used)


def forecast_at_count(model: GrowthForecast, source: str, viable_cells_seeded: float, viable_cells_now: float,
                      hours_since_t0: float, required: float, culture_hours: float,
                      site_runs: Sequence[CompletedRun] = ()) -> ForecastBand:
    """The band narrowed by a count of `viable_cells_now` at `hours_since_t0` (the module docstring's posterior)."""
    growth, used = _growth(model, source, site_runs)
    seeded = positive("viable_cells_seeded", viable_cells_seeded)
    now = positive("viable_cells_now", viable_cells_now, allow_zero=True)
    need = positive("required", required)
    total = _culture_hours(growth, culture_hours)
    hours = positive("hours_since_t0", hours_since_t0)
    if hours > total:
        raise ValueError(f"hours_since_t0 {hours:g} is after the harvest (culture_hours {total:g})")
    if now == 0:
        # no viable cells: nothing will grow
        return ForecastBand("count", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0), 0.0, hours, need, True,
                            model.band_percent, used,
                            f"CD7+ cells at harvest ({total:g} h) from the count at {hours:g} h: no viable cells "
                            f"counted, required {need:.3g}; the low end is below the required dose")
    y = math.log(now / seeded)
    mu_h, sigma_h = growth.at(hours)
    mu_t, sigma_t = growth.at(total)
    resid2 = growth.residual_log_sd ** 2
    denom = sigma_h * sigma_h + resid2
    m, v = (sigma_h * (y - mu_h) / denom, resid2 / denom) if denom > 0 else (0.0, 1.0)
    return _band("count", model, growth, seeded, mu_t + sigma_t * m, sigma_t * sigma_t * v + resid2, need, total,
                 now / seeded, hours, used)


def refine(source_growth: SourceGrowth, refinement: Refinement,
           runs: Sequence[CompletedRun]) -> tuple[SourceGrowth, int]:
    """The curve shrunk toward the site's completed runs, and how many runs were used (0: unchanged).

    With fewer than `min_runs` runs the curve is returned as it is. Otherwise, with w = prior_weight and n runs,
    at the curve's last point (the harvest day):
        log-median' = (w log-median + n median of the runs' log folds) / (w + n)
        sd'^2       = (w sd^2 + n max(0, variance of the runs' log folds - residual^2)) / (w + n)
    (a run harvested before the last point has its fold carried to it along the curve's median; the residual is
    the count's own noise, which the curve's sd leaves out), and the same for log %CD7+ (median, variance). The
    other points' log-medians and sds are scaled by the same factors, so the curve keeps its shape.
    """
    runs = list(runs)
    n = len(runs)
    if n < refinement.min_runs:
        return source_growth, 0
    growth = source_growth
    last = growth.curve[-1]
    mu_last, sd_last = math.log(last.median_fold), last.log_sd
    end = growth.last_hours
    logs = [math.log(r.harvest_cells / r.seeded) + mu_last - growth.at(min(r.harvest_hours, end))[0] for r in runs]
    w = refinement.prior_weight
    resid2 = growth.residual_log_sd ** 2
    mu_new = max(0.0, (w * mu_last + n * statistics.median(logs)) / (w + n))
    sd_new = math.sqrt((w * sd_last ** 2 + n * max(0.0, statistics.variance(logs) - resid2)) / (w + n))
    curve = []
    for p in growth.curve:
        share = p.day / last.day
        mu = math.log(p.median_fold) * mu_new / mu_last if mu_last > 0 else mu_new * share
        sd = p.log_sd * sd_new / sd_last if sd_last > 0 else sd_new * share
        curve.append(GrowthPoint(day=p.day, median_fold=max(1.0, math.exp(mu)), log_sd=sd))
    cd7_logs = [math.log(r.cd7_percent) for r in runs]
    cd7_mu = (w * math.log(growth.cd7_median_percent) + n * statistics.median(cd7_logs)) / (w + n)
    cd7_sd = math.sqrt((w * growth.cd7_log_sd ** 2 + n * statistics.variance(cd7_logs)) / (w + n))
    refined = SourceGrowth(curve=tuple(curve), residual_log_sd=growth.residual_log_sd,
                           cd7_median_percent=min(100.0, math.exp(cd7_mu)), cd7_log_sd=cd7_sd)
    return refined, n


def _leading_eigen(matrix: list[list[float]]) -> tuple[float, list[float]]:
    """The largest eigenvalue of a symmetric positive semi-definite matrix and its unit eigenvector (power
    iteration from the all-ones vector, which is not orthogonal to a positive leading vector)."""
    size = len(matrix)
    vec = [1.0 / math.sqrt(size)] * size
    value = 0.0
    for _ in range(1000):
        nxt = [sum(row[j] * vec[j] for j in range(size)) for row in matrix]
        norm = math.sqrt(sum(x * x for x in nxt))
        if norm == 0.0:
            return 0.0, vec
        nxt = [x / norm for x in nxt]
        done = max(abs(a - b) for a, b in zip(nxt, vec, strict=True)) < 1e-13
        vec, value = nxt, norm
        if done:
            break
    return value, vec


def fit_growth(observations: Sequence[GrowthObservation]) -> SourceGrowth:
    """Fit a source's curve from fold trajectories (every run observed on the same days, at least two days).

    Per day the median fold is exp(median of log fold), kept >= 1 and non-decreasing. The sds and the residual
    come from the covariance S of the log folds across runs, fitted as the one-factor model sigma sigma^T +
    resid^2 I: resid^2 = (trace S - lambda_1) / (days - 1) and sigma = sqrt(lambda_1 - resid^2) v_1, with
    (lambda_1, v_1) the leading eigenpair (a day whose fold moves against the others gets sd 0). %CD7+: the
    median and the sd of its log.
    """
    obs = list(observations)
    if len(obs) < 3:
        raise ValueError(f"fit_growth needs at least 3 runs, got {len(obs)}")
    days = obs[0].days
    if len(days) < 2:
        raise ValueError("fit_growth needs trajectories of at least two days (to tell the residual from the spread)")
    for i, o in enumerate(obs):
        if o.days != days or len(o.folds) != len(days):
            raise ValueError(f"observation {i}: every run must be observed on the same days as the first")
        for f in o.folds:
            positive(f"observation {i}: fold", f)
        percent(f"observation {i}: cd7_percent", o.cd7_percent, allow_zero=False)
    logs = [[math.log(f) for f in o.folds] for o in obs]
    size, n = len(days), len(logs)
    means = [statistics.fmean(row[d] for row in logs) for d in range(size)]
    cov = [[sum((row[i] - means[i]) * (row[j] - means[j]) for row in logs) / (n - 1) for j in range(size)]
           for i in range(size)]
    lam, vec = _leading_eigen(cov)
    if sum(vec) < 0:
        vec = [-x for x in vec]
    resid2 = max(0.0, (sum(cov[i][i] for i in range(size)) - lam) / (size - 1))
    scale = math.sqrt(max(0.0, lam - resid2))
    curve = []
    fold = 1.0
    for d in range(size):
        fold = max(fold, math.exp(statistics.median(row[d] for row in logs)))
        curve.append(GrowthPoint(day=days[d], median_fold=fold, log_sd=max(0.0, scale * vec[d])))
    cd7_logs = [math.log(o.cd7_percent) for o in obs]
    return SourceGrowth(curve=tuple(curve), residual_log_sd=math.sqrt(resid2),
                        cd7_median_percent=math.exp(statistics.median(cd7_logs)),
                        cd7_log_sd=statistics.stdev(cd7_logs))
