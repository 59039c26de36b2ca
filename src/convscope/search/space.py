"""A sweep's search space in Hydra's override grammar, as Optuna distributions.

The names are hydra-optuna-sweeper's: ``key=choice(8,16,32)`` is categorical,
``key=range(16,128,step=16)`` an integer (or float) grid with a step, ``key=interval(a, b)``
a uniform float, ``key=tag(log, interval(a, b))`` a log-uniform one (integer bounds on both
ends give an integer distribution). ``range`` keeps Hydra's meaning, stop excluded, so
``range(16,128,step=16)`` is 16..112 as in a basic sweep of the same override.

Every value a distribution can take at its ends (each choice, each bound) is composed with
the sweep's other overrides and validated against the schema before any trial runs, so a
study never spends a trial on a value the stage would refuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convscope.config import ConfigError

__all__ = ["SearchSpace", "candidate_values", "check_space", "format_value", "parse_space"]


@dataclass
class SearchSpace:
    """The swept keys (key -> Optuna distribution) and the sweep's fixed overrides."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """One trial's overrides: the fixed ones, then ``key=value`` for each sampled value."""
        return [*self.fixed, *(f"{k}={format_value(v)}" for k, v in params.items())]


def format_value(value: Any) -> str:
    """A sampled value as Hydra's override grammar reads it back to the same value."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and not value.replace("_", "").replace("-", "").isalnum():
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def parse_space(arguments: Sequence[str], params: Mapping[str, Any] | None = None) -> SearchSpace:
    """The space of the command line's ``arguments`` and ``hydra.sweeper.params`` (the
    command line wins for a key in both); a :class:`ConfigError` (one line) if any is
    malformed or empty."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    texts = [f"{k}={v}" for k, v in (params or {}).items()]
    given = {t.partition("=")[0] for t in arguments}
    texts = [t for t in texts if t.partition("=")[0] not in given] + list(arguments)
    parser = OverridesParser.create()
    space = SearchSpace()
    for text in texts:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise ConfigError(f"cannot parse the search space {text!r}: {_line(exc)}") from None
        if not override.is_sweep_override():
            space.fixed.append(text)
            continue
        if override.is_hydra_override():
            raise ConfigError(f"{text} is not allowed: hydra.* settings cannot be searched")
        space.distributions[override.key_or_group] = _distribution(override, text)
    return space


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _distribution(override: Any, text: str) -> Any:
    from hydra.core.override_parser.types import IntervalSweep, Transformer
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    sweep = override.value()
    if override.is_interval_sweep():
        assert isinstance(sweep, IntervalSweep)
        low, high = sweep.start, sweep.end
        log = "log" in sweep.tags
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(
                f"{text} is not allowed: the interval is empty, its start must be below its end"
            )
        if log and low <= 0:
            raise ConfigError(f"{text} is not allowed: a log interval must start above 0")
        if float(low).is_integer() and float(high).is_integer() and _ints_given(text):
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if not values:
        raise ConfigError(f"{text} is not allowed: it has no value to try")
    if override.is_range_sweep() and not sweep.shuffle and len(values) > 1:
        step = sweep.step
        if all(isinstance(v, int) for v in values) and isinstance(step, int):
            return IntDistribution(values[0], values[-1], step=step)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{text} is not allowed: a choice lists a value twice")
    return CategoricalDistribution(values)


def _ints_given(text: str) -> bool:
    """Whether an interval's bounds were written as integers (Hydra reads them as floats)."""
    inside = text.partition("interval(")[2].partition(")")[0]
    return all("." not in b and "e" not in b.lower() for b in inside.split(","))


def candidate_values(distribution: Any) -> list[Any]:
    """The values at a distribution's ends: each choice, or the two bounds."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def check_space(space: SearchSpace, check_point: Callable[[list[str]], Any]) -> None:
    """Check the fixed overrides with every end value of every distribution
    (``check_point(overrides)`` composes and validates one point, raising a
    :class:`ConfigError`): an unknown key, a value the schema refuses, a key the stage does
    not read."""
    if not space.distributions:
        raise ConfigError(
            "the search space is empty: give a key to search, e.g. "
            "'keras.learning_rate=tag(log, interval(1e-4, 1e-1))'"
        )
    for key, distribution in space.distributions.items():
        for value in candidate_values(distribution):
            point = [*space.fixed, f"{key}={format_value(value)}"]
            try:
                check_point(point)
            except ConfigError as exc:
                raise ConfigError(f"search space {key}: {exc}") from None
