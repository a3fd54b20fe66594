"""Pure models of an incubator and a closed culture system (no I/O); see docs/process.md.

Both models are deterministic for a given seed: noise is a function of (seed, channel, whole clock
second), never of how often a model is stepped, and the incubator integrates with the exact
exponential step, so stepping once over an hour or 3600 times over it gives the same state.

The culture can be coupled to its incubator (`CultureModel(environment=...)`, e.g. `IncubatorModel.chamber`):
growth slows outside 36.5-37.5 C / 4.5-5.5 % CO2 and stops at 33 / 40 C and 2 / 8 % CO2; above 39 C cells die
(mildly up to 42 C, with a half-life of about 2 h above it) and below 10 C too. The environment is sampled on
a fixed one-minute grid from T0 (and at the feeds) and the growth is integrated exactly over each grid
interval, so the state does not depend on how often the model is stepped either. With no environment, or
nominal conditions throughout, the values are exactly the closed form's.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from drivers.base import PointError, PointNotWritable, PointSpec
from drivers.points import CULTURE_SYSTEM_POINTS, INCUBATOR_POINTS

AMBIENT_TEMPERATURE = 22.0
AMBIENT_CO2 = 0.04
AMBIENT_HUMIDITY = 45.0
CHAMBER_HUMIDITY = 93.0
HEATER_STUCK_ON_TEMPERATURE = 45.0  # where a chamber heating at full power levels off

HeaterMode = Literal["auto", "on", "off"]

Profile = Literal["mobilized", "cord"]

# Fold over 7 days per cell source, run to run: lognormal (median, sd of the natural log), clipped to
# FOLD_7D_LIMITS. Mobilized blood expands less than cord blood.
PROFILE_FOLD_7D: dict[str, tuple[float, float]] = {
    "mobilized": (17.0, 0.28),
    "cord": (32.0, 0.22),
}
FOLD_7D_LIMITS = (10.0, 50.0)
# %CD7+ at day 7, run to run: normal (mean, sd), clipped to CD7_FINAL_LIMITS
CD7_FINAL = (65.0, 5.0)
CD7_FINAL_LIMITS = (50.0, 80.0)

# What the cells feel: the chamber temperature (C) and CO2 (%) at a time.
Environment = Callable[[datetime], tuple[float, float]]
ENVIRONMENT_STEP_S = 60.0  # the grid the culture samples its environment on
# growth rate factor 1 inside the nominal band, falling linearly to 0 at the "stops" values
NOMINAL_TEMPERATURE = (36.5, 37.5)
GROWTH_STOPS_TEMPERATURE = (33.0, 40.0)
NOMINAL_CO2 = (4.5, 5.5)
GROWTH_STOPS_CO2 = (2.0, 8.0)
# cell death: none from 10 to 39 C; above 39 C rising linearly to a half-life of WARM_HALF_LIFE_H at 42 C; above
# 42 C a half-life of HEAT_HALF_LIFE_H; below 10 C COLD_HALF_LIFE_H
WARM_DEATH_TEMPERATURE = 39.0
HEAT_DEATH_TEMPERATURE = 42.0
COLD_DEATH_TEMPERATURE = 10.0
WARM_HALF_LIFE_H = 24.0
HEAT_HALF_LIFE_H = 2.0
COLD_HALF_LIFE_H = 12.0

_INCUBATOR_SPECS = {p.name: p for p in INCUBATOR_POINTS}
_CULTURE_SPECS = {p.name: p for p in CULTURE_SYSTEM_POINTS}


def noise(seed: int, channel: str, when: datetime) -> float:
    """A reproducible value in [-1, 1) for this seed, channel and whole second of `when`."""
    second = math.floor(when.timestamp())
    digest = hashlib.blake2b(f"{seed}:{channel}:{second}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**63 - 1.0


def relax(x: float, target: float, dt: float, tau: float) -> float:
    """Exact first-order step of `x` toward `target` over `dt` seconds; stable for any dt."""
    if dt <= 0.0:
        return x
    return x + (target - x) * (1.0 - math.exp(-dt / tau))


@dataclass(frozen=True, slots=True)
class IncubatorTimeConstants:
    """First-order time constants in seconds, door shut and door open."""

    temperature: float = 600.0
    co2: float = 300.0
    humidity: float = 900.0
    temperature_door_open: float = 240.0
    co2_door_open: float = 60.0
    humidity_door_open: float = 120.0
    # heater off, door shut: the insulated chamber loses heat slowly
    temperature_passive: float = 2400.0
    # CO2 supply empty, door shut: the gas leaks out through the seals, slower than the supply regulates
    co2_leak: float = 1800.0


@dataclass(frozen=True, slots=True)
class IncubatorNoise:
    """Half-width of the uniform measurement noise per channel."""

    temperature: float = 0.03
    co2: float = 0.03
    humidity: float = 0.3


class IncubatorModel:
    """A CO2 incubator: temperature, CO2 and RH relax to setpoints, or to ambient with the door open."""

    def __init__(
        self,
        start: datetime,
        seed: int = 0,
        *,
        temperature_setpoint: float = 37.0,
        co2_setpoint: float = 5.0,
        temperature: float | None = None,
        co2: float | None = None,
        humidity: float | None = None,
        door_open: bool = False,
        tau: IncubatorTimeConstants | None = None,
        noise_amplitude: IncubatorNoise | None = None,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.seed = seed
        self.tau = tau or IncubatorTimeConstants()
        self.noise_amplitude = noise_amplitude or IncubatorNoise()
        self._now = start
        self._temperature_setpoint = _INCUBATOR_SPECS["temperature_setpoint"].check_write(
            temperature_setpoint
        )
        self._co2_setpoint = _INCUBATOR_SPECS["co2_setpoint"].check_write(co2_setpoint)
        # None: a running incubator that has settled at its setpoints
        self.temperature = temperature_setpoint if temperature is None else temperature
        self.co2 = co2_setpoint if co2 is None else co2
        self.humidity = CHAMBER_HUMIDITY if humidity is None else humidity
        self._door_open = door_open
        # fault hooks: "auto" is normal control; "on"/"off" a stuck heater
        self.heater: HeaterMode = "auto"
        self.co2_supply = True
        self.ignore_setpoint_writes = False
        self.frozen: dict[str, float] = {}

    @property
    def now(self) -> datetime:
        return self._now

    @property
    def door_open(self) -> bool:
        return self._door_open

    @property
    def temperature_setpoint(self) -> float:
        return self._temperature_setpoint

    @property
    def co2_setpoint(self) -> float:
        return self._co2_setpoint

    def step(self, now: datetime) -> None:
        """Advance the state to `now`; a time earlier than the model's is ignored."""
        dt = (now - self._now).total_seconds()
        if dt <= 0.0:
            return
        tau = self.tau
        if self._door_open:
            self.temperature = relax(self.temperature, AMBIENT_TEMPERATURE, dt, tau.temperature_door_open)
            self.co2 = relax(self.co2, AMBIENT_CO2, dt, tau.co2_door_open)
            self.humidity = relax(self.humidity, AMBIENT_HUMIDITY, dt, tau.humidity_door_open)
        else:
            if self.heater == "on":
                self.temperature = relax(self.temperature, HEATER_STUCK_ON_TEMPERATURE, dt, tau.temperature)
            elif self.heater == "off":
                self.temperature = relax(self.temperature, AMBIENT_TEMPERATURE, dt, tau.temperature_passive)
            else:
                self.temperature = relax(self.temperature, self._temperature_setpoint, dt, tau.temperature)
            if self.co2_supply:
                self.co2 = relax(self.co2, self._co2_setpoint, dt, tau.co2)
            else:
                self.co2 = relax(self.co2, AMBIENT_CO2, dt, tau.co2_leak)
            self.humidity = relax(self.humidity, CHAMBER_HUMIDITY, dt, tau.humidity)
        self._now = now

    def set_heater(self, mode: HeaterMode, now: datetime | None = None) -> None:
        """Normal control ("auto") or a heater stuck "on" (toward ~45 C) or "off" (toward ambient)."""
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"heater mode {mode!r}: choose auto, on or off")
        self._advance(now)
        self.heater = mode

    def set_co2_supply(self, available: bool, now: datetime | None = None) -> None:
        """With the supply empty the CO2 decays toward ambient; back on, it returns to the setpoint."""
        self._advance(now)
        self.co2_supply = available

    def freeze(self, point: str, now: datetime | None = None) -> None:
        """Report the current value of `point` from now on (a stuck sensor); the physics goes on."""
        self._advance(now)
        self.frozen[point] = _check_freezable(_INCUBATOR_SPECS, "incubator", point, self.values())

    def unfreeze(self, point: str) -> None:
        self.frozen.pop(point, None)

    def _advance(self, now: datetime | None) -> None:
        # events take effect at their own time, so the state before them is integrated first
        if now is not None:
            self.step(now)

    def open_door(self, now: datetime | None = None) -> None:
        self._advance(now)
        self._door_open = True

    def close_door(self, now: datetime | None = None) -> None:
        self._advance(now)
        self._door_open = False

    def set_temperature_setpoint(self, value: float, now: datetime | None = None) -> None:
        """Set the temperature setpoint; raises PointLimitError outside 30..40 C."""
        value = _INCUBATOR_SPECS["temperature_setpoint"].check_write(value)
        self._advance(now)
        self._temperature_setpoint = value

    def set_co2_setpoint(self, value: float, now: datetime | None = None) -> None:
        """Set the CO2 setpoint; raises PointLimitError outside 0..10 %."""
        value = _INCUBATOR_SPECS["co2_setpoint"].check_write(value)
        self._advance(now)
        self._co2_setpoint = value

    def write(self, point: str, value: float, now: datetime | None = None) -> None:
        """Write a point by its point-map name; raises PointError if unknown, read-only or out of limits."""
        spec = _INCUBATOR_SPECS.get(point)
        if spec is None:
            raise PointError(f"unknown incubator point {point!r}")
        spec.check_write(value)
        if self.ignore_setpoint_writes and spec.writable:
            # a device that acknowledges the write but does not follow it
            return
        if point == "temperature_setpoint":
            self.set_temperature_setpoint(value, now)
        elif point == "co2_setpoint":
            self.set_co2_setpoint(value, now)
        else:
            raise PointNotWritable(f"point {point!r} has no setter in the model")

    def chamber(self, when: datetime) -> tuple[float, float]:
        """The chamber's true temperature (C) and CO2 (%) at `when`, stepped there first: what the cells feel,
        without the sensors' noise or faults. A `CultureModel` environment."""
        self.step(when)
        return self.temperature, self.co2

    def values(self) -> dict[str, float]:
        """Measured values at the model's time, keyed by the incubator point names."""
        t, amp = self._now, self.noise_amplitude
        values = {
            "temperature": self.temperature + amp.temperature * noise(self.seed, "temperature", t),
            "co2": max(0.0, self.co2 + amp.co2 * noise(self.seed, "co2", t)),
            "humidity": min(100.0, max(0.0, self.humidity + amp.humidity * noise(self.seed, "humidity", t))),
            "door_open": 1.0 if self._door_open else 0.0,
            "temperature_setpoint": self._temperature_setpoint,
            "co2_setpoint": self._co2_setpoint,
        }
        values.update(self.frozen)
        return values


def _check_freezable(specs: dict[str, PointSpec], device: str, point: str, values: dict[str, float]) -> float:
    """The value to hold for `point`; ValueError unless it is an analog read-only point of `device`."""
    spec = specs.get(point)
    if spec is None or spec.kind != "analog" or spec.writable:
        choices = ", ".join(name for name, s in specs.items() if s.kind == "analog" and not s.writable)
        raise ValueError(f"{device} point {point!r} cannot be frozen; analog read-only points: {choices}")
    return values[point]


@dataclass(frozen=True, slots=True)
class CultureParameters:
    """The per-run constants a seed and a profile pick."""

    fold_7d: float
    cd7_final: float
    cd7_midpoint_h: float
    viability_base: float


def _clip(x: float, limits: tuple[float, float]) -> float:
    return min(limits[1], max(limits[0], x))


def culture_parameters(seed: int, profile: str) -> CultureParameters:
    """Deterministic run parameters for `seed`: the profile's lognormal fold, a normal final %CD7+ (both clipped)."""
    if profile not in PROFILE_FOLD_7D:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(sorted(PROFILE_FOLD_7D))}")
    rng = random.Random(f"culture:{seed}:{profile}")
    median, log_sd = PROFILE_FOLD_7D[profile]
    return CultureParameters(
        fold_7d=_clip(rng.lognormvariate(math.log(median), log_sd), FOLD_7D_LIMITS),
        cd7_final=_clip(rng.normalvariate(*CD7_FINAL), CD7_FINAL_LIMITS),
        cd7_midpoint_h=rng.uniform(80.0, 100.0),
        viability_base=rng.uniform(90.0, 94.0),
    )


def _band_factor(x: float, nominal: tuple[float, float], stops: tuple[float, float]) -> float:
    """1 inside `nominal`, 0 at or beyond `stops`, linear in between."""
    if nominal[0] <= x <= nominal[1]:
        return 1.0
    if x <= stops[0] or x >= stops[1]:
        return 0.0
    if x < nominal[0]:
        return (x - stops[0]) / (nominal[0] - stops[0])
    return (stops[1] - x) / (stops[1] - nominal[1])


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def growth_factor(temperature: float, co2: float) -> float:
    """Factor on the growth rate at a chamber `temperature` (C) and `co2` (%): 1 in band, 0 far out of it."""
    t, c = _finite("temperature", temperature), _finite("co2", co2)
    return _band_factor(t, NOMINAL_TEMPERATURE, GROWTH_STOPS_TEMPERATURE) * _band_factor(c, NOMINAL_CO2,
                                                                                         GROWTH_STOPS_CO2)


def death_rate(temperature: float) -> float:
    """Rate (per day) at which viable cells die at a chamber `temperature` (C); 0 from 10 to 39 C."""
    t = _finite("temperature", temperature)
    per_day = math.log(2.0) * 24.0
    if t > HEAT_DEATH_TEMPERATURE:
        return per_day / HEAT_HALF_LIFE_H
    if t > WARM_DEATH_TEMPERATURE:
        share = (t - WARM_DEATH_TEMPERATURE) / (HEAT_DEATH_TEMPERATURE - WARM_DEATH_TEMPERATURE)
        return per_day / WARM_HALF_LIFE_H * share
    if t < COLD_DEATH_TEMPERATURE:
        return per_day / COLD_HALF_LIFE_H
    return 0.0


def logistic_step(n0: float, growth: float, death: float, capacity: float, dt: float) -> tuple[float, float]:
    """Exact solution of dN/dt = growth N (1 - N / capacity) - death N over `dt` from `n0` (rates per unit of dt).

    Returns (N(dt), the integral of N over [0, dt]). With death 0 this is K / (1 + (K/N0 - 1) exp(-growth dt)).
    """
    a, b = growth - death, growth / capacity
    q = dt if a == 0.0 else math.expm1(a * dt) / a  # integral of exp(a s) over [0, dt]
    n1 = n0 * math.exp(a * dt) / (1.0 + b * n0 * q)
    integral = n0 * q if b == 0.0 else math.log1p(b * n0 * q) / b
    return n1, integral


@dataclass(frozen=True, slots=True)
class CultureState:
    """The integrated culture once its environment has left nominal: viable and dead cells per mL, and the
    integral of the viable density from T0 (cells/mL x days), also at each feed passed (for the pH)."""

    viable: float
    dead: float
    integral: float
    feed_integrals: tuple[tuple[float, float], ...]  # (feed hour, integral at that feed)


RUN_DAYS = 7.0
FRESH_MEDIUM_PH = 7.40
MIN_PH = 6.8
PH_DRIFT_PER_DAY = 0.02  # medium ageing, independent of cells
PH_DRIFT_PER_DAY_PER_1E6 = 0.06  # acidification by metabolism, per 1e6 viable cells/mL
CD7_SLOPE_H = 14.0
CARRYING_CAPACITY_OVER_FINAL = 1.5  # K / density at day 7: growth still visible at harvest


class CultureModel:
    """A closed culture system: logistic growth, CD7+ rise, pH, DO, medium pumped; closed form unless an
    `environment` (chamber temperature and CO2 over time) leaves nominal, then integrated step by step."""

    def __init__(
        self,
        t0: datetime,
        seed: int = 0,
        profile: str = "mobilized",
        *,
        seeding_density: float = 1.0e5,
        pump_rate: float = 2.0,
        feeds_h: tuple[float, ...] = (72.0, 120.0),
        start: datetime | None = None,
        environment: Environment | None = None,
    ) -> None:
        if t0.tzinfo is None:
            raise ValueError("t0 must be timezone-aware")
        self.t0 = t0
        self.seed = seed
        self.profile = profile
        self.params = culture_parameters(seed, profile)
        self.seeding_density = seeding_density
        self.feeds_h = tuple(sorted(feeds_h))
        self._now = start or t0
        n0, fold = seeding_density, self.params.fold_7d
        self.capacity = CARRYING_CAPACITY_OVER_FINAL * fold * n0
        self._a = self.capacity / n0 - 1.0
        # r per day so that N(7 d) / N0 == fold exactly
        self.rate = -math.log((self.capacity / (fold * n0) - 1.0) / self._a) / RUN_DAYS
        self._pump_rate = _CULTURE_SPECS["pump_rate_setpoint"].check_write(pump_rate)
        self._pumped_ml = 0.0
        self._pump_since = t0  # the pump runs at its default rate from seeding on
        # fault hooks
        self.ignore_setpoint_writes = False
        self.frozen: dict[str, float] = {}
        # coupling: the environment is sampled at _env_from (a grid point, a feed, or the start) and holds
        # until the next one; _state stays None while every interval so far was nominal (closed form)
        self._environment = environment
        self._env_from = max(self._now, t0)
        self._env_rates: tuple[float, float] | None = None  # (growth factor, death rate per day)
        self._state: CultureState | None = None

    @property
    def now(self) -> datetime:
        return self._now

    @property
    def pump_rate(self) -> float:
        return self._pump_rate

    @property
    def environment(self) -> Environment | None:
        return self._environment

    def step(self, now: datetime) -> None:
        """Move the model's time to `now`, integrating the culture over the environment's grid intervals."""
        if now <= self._now:
            return
        if self._environment is not None and now > self._env_from:
            if self._env_rates is None:
                self._env_rates = self._rates_at(self._env_from)
            while (end := self._next_boundary(self._env_from)) <= now:
                self._state = self._integrated(self._state, self._env_from, end, self._env_rates)
                self._env_from = end
                self._env_rates = self._rates_at(end)
        self._now = now

    def _rates_at(self, when: datetime) -> tuple[float, float]:
        assert self._environment is not None
        temperature, co2 = self._environment(when)
        return growth_factor(temperature, co2), death_rate(temperature)

    def _feed_time(self, hours: float) -> datetime:
        return self.t0 + timedelta(hours=hours)

    def _next_boundary(self, after: datetime) -> datetime:
        """The next grid point (whole ENVIRONMENT_STEP_S from T0) or feed after `after`."""
        k = math.floor((after - self.t0).total_seconds() / ENVIRONMENT_STEP_S) + 1
        grid = self.t0 + timedelta(seconds=k * ENVIRONMENT_STEP_S)
        feeds = [t for t in map(self._feed_time, self.feeds_h) if after < t < grid]
        return min(feeds, default=grid)

    def _closed_form_state(self, when: datetime) -> CultureState:
        days = self._days(when)
        feeds = tuple((f, self.density_integral(0.0, f / 24.0)) for f in self.feeds_h if self._feed_time(f) <= when)
        return CultureState(self.density_true(days), 0.0, self.density_integral(0.0, days), feeds)

    def _integrated(self, state: CultureState | None, start: datetime, end: datetime,
                    rates: tuple[float, float]) -> CultureState | None:
        """The state at `end` from the one at `start` under constant `rates`; None while it is all nominal."""
        g, d = rates
        if state is None:
            if g == 1.0 and d == 0.0:
                return None
            state = self._closed_form_state(start)
        dt = (end - start).total_seconds() / 86400.0
        viable, integral = logistic_step(state.viable, self.rate * g, d, self.capacity, dt)
        total = state.integral + integral
        feeds = state.feed_integrals + tuple((f, total) for f in self.feeds_h if self._feed_time(f) == end)
        return CultureState(viable, state.dead + d * integral, total, feeds)

    def _current_state(self) -> CultureState | None:
        """The integrated state at the model's time (committed state plus the interval in progress)."""
        if self._environment is None or self._env_rates is None or self._now <= self._env_from:
            return self._state
        return self._integrated(self._state, self._env_from, self._now, self._env_rates)

    @property
    def viable_density(self) -> float:
        """Noise-free viable cells/mL at the model's time."""
        state = self._current_state()
        return self.density_true(self._days(self._now)) if state is None else state.viable

    @property
    def dead_density(self) -> float:
        """Cells/mL killed by the environment (heat, cold) so far; they stay in the closed system."""
        state = self._current_state()
        return 0.0 if state is None else state.dead

    def freeze(self, point: str, now: datetime | None = None) -> None:
        """Report the current value of `point` from now on (a stuck sensor); the culture goes on."""
        if now is not None:
            self.step(now)
        self.frozen[point] = _check_freezable(_CULTURE_SPECS, "culture-system", point, self.values())

    def unfreeze(self, point: str) -> None:
        self.frozen.pop(point, None)

    def set_pump_rate(self, value: float, now: datetime | None = None) -> None:
        """Set the pump rate (mL/h); raises PointLimitError outside 0..50, ignored while setpoints are."""
        value = _CULTURE_SPECS["pump_rate_setpoint"].check_write(value)
        if self.ignore_setpoint_writes:
            return
        if now is not None:
            self.step(now)
        self._pumped_ml = self._medium_pumped(self._now)
        self._pump_since = self._now
        self._pump_rate = value

    def _days(self, when: datetime) -> float:
        return (when - self.t0).total_seconds() / 86400.0

    def density_true(self, days: float) -> float:
        """Noise-free viable cells/mL `days` after T0 (seeding density before T0)."""
        if days <= 0.0:
            return self.seeding_density
        return self.capacity / (1.0 + self._a * math.exp(-self.rate * days))

    def _log_exp_plus_a(self, x: float) -> float:
        # ln(e^x + A) without overflowing for long demo runs
        return x + math.log1p(self._a * math.exp(-x)) if x > 0.0 else math.log(math.exp(x) + self._a)

    def density_integral(self, d0: float, d1: float) -> float:
        """Integral of the density over [d0, d1] days after T0, in cells/mL x days."""
        d0, d1 = max(d0, 0.0), max(d1, 0.0)
        if d1 <= d0:
            return 0.0
        r = self.rate
        return self.capacity / r * (self._log_exp_plus_a(r * d1) - self._log_exp_plus_a(r * d0))

    def ph_true(self, days: float) -> float:
        """Noise-free pH: drifts down from fresh medium since the last feed, faster at higher density."""
        if days <= 0.0:
            return FRESH_MEDIUM_PH
        hours = days * 24.0
        last_feed = max((f for f in self.feeds_h if f <= hours), default=0.0) / 24.0
        drift = PH_DRIFT_PER_DAY * (days - last_feed)
        drift += PH_DRIFT_PER_DAY_PER_1E6 * self.density_integral(last_feed, days) / 1.0e6
        return max(MIN_PH, FRESH_MEDIUM_PH - drift)

    def _ph_integrated(self, state: CultureState, days: float) -> float:
        hours = days * 24.0
        last_feed = max((f for f in self.feeds_h if f <= hours), default=0.0)
        at_feed = dict(state.feed_integrals).get(last_feed, 0.0)
        drift = PH_DRIFT_PER_DAY * (days - last_feed / 24.0)
        drift += PH_DRIFT_PER_DAY_PER_1E6 * (state.integral - at_feed) / 1.0e6
        return max(MIN_PH, FRESH_MEDIUM_PH - drift)

    def cd7_true(self, days: float) -> float:
        """Noise-free %CD7+: a sigmoid from 0 at T0 to the run's final share at day 7."""
        if days <= 0.0:
            return 0.0

        def s(h: float) -> float:
            return 1.0 / (1.0 + math.exp(-(h - self.params.cd7_midpoint_h) / CD7_SLOPE_H))

        base, end = s(0.0), s(RUN_DAYS * 24.0)
        return self.params.cd7_final * (s(days * 24.0) - base) / (end - base)

    def _medium_pumped(self, when: datetime) -> float:
        start = max(self._pump_since, self.t0)
        hours = max(0.0, (when - start).total_seconds() / 3600.0)
        return self._pumped_ml + self._pump_rate * hours

    def values(self) -> dict[str, float]:
        """Measured values at the model's time, keyed by the culture-system point names."""
        t, seed = self._now, self.seed
        days = self._days(t)
        state = self._current_state()
        if state is None:
            density, alive, ph = self.density_true(days), 1.0, self.ph_true(days)
        else:
            density, ph = state.viable, self._ph_integrated(state, days)
            alive = state.viable / (state.viable + state.dead) if state.dead > 0.0 else 1.0
        viability = self.params.viability_base - 3.0 * density / self.capacity
        healthy = min(95.0, max(85.0, viability + 0.4 * noise(seed, "viability", t)))
        values = {
            "viable_cell_density": density * (1.0 + 0.02 * noise(seed, "density", t)),
            # the cells the environment killed stay in the closed system and count as non-viable
            "viability": healthy * alive,
            "cd7_percent": max(0.0, self.cd7_true(days) + 0.5 * noise(seed, "cd7", t)),
            "ph": ph + 0.005 * noise(seed, "ph", t),
            "dissolved_o2": 20.0 + 75.0 * math.exp(-density / 2.5e6) + 0.5 * noise(seed, "do", t),
            "medium_pumped": self._medium_pumped(t),
            "temperature": 37.0 + 0.05 * math.sin(2.0 * math.pi * days) + 0.03 * noise(seed, "temp", t),
            "pump_rate_setpoint": self._pump_rate,
        }
        values.update(self.frozen)
        return values
