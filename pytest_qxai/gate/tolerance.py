"""Tolerance bands: how much degradation a metric may show, and how sure the gate must be before failing.

Grammar: ``abs:0.03`` or ``rel:0.1`` (a fraction of the reference value), optionally followed by
``,two-sided`` (changes in either direction count; by default only a degradation in the metric's
direction does) and ``,alpha=0.01`` (significance level, default 0.05).

Precedence, per metric: ``--qxai-tolerance`` on the command line > ``qxai_tolerance`` in the ini file >
the model's band file (:mod:`pytest_qxai.gate.bands`) > the metric's own default band. The command line replaces the ini list as a whole (see
:func:`pytest_qxai.config.raw_value`), so :attr:`QxaiConfig.tolerances` holds the user's overrides.
Within them a suite-qualified key (``nle.cc_shap=...``) beats a bare metric name (``cc_shap=...``), and a
later entry beats an earlier one with the same key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

from ..errors import QxaiUsageError
from ..metrics import Metric

Mode = Literal["abs", "rel"]
DEFAULT_ALPHA = 0.05
_HINT = "write abs:0.03 or rel:0.1, optionally followed by ,two-sided and ,alpha=0.01"
_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$")


@dataclass(frozen=True)
class Tolerance:
    """A parsed band: the largest acceptable change, its sidedness and the test's significance level."""

    mode: Mode
    value: float
    two_sided: bool = False
    alpha: float = DEFAULT_ALPHA

    def threshold(self, reference: float) -> float:
        """The band's half-width in the metric's units; ``rel`` scales with the reference value."""
        if self.mode == "abs":
            return self.value
        return self.value * abs(reference) if math.isfinite(reference) else math.inf

    def __str__(self) -> str:
        """The canonical text form, which parses back to an equal band."""
        text = f"{self.mode}:{_number(self.value)}"
        if self.two_sided:
            text += ",two-sided"
        if self.alpha != DEFAULT_ALPHA:
            text += f",alpha={_number(self.alpha)}"
        return text


def parse_tolerance(text: str) -> Tolerance:
    """Parse a band, or raise :class:`QxaiUsageError` with one line saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise QxaiUsageError(f"tolerance band is empty; {_HINT}")
    head, *options = [part.strip() for part in text.strip().split(",")]
    mode, colon, raw = (s.strip() for s in head.partition(":"))
    if not colon or mode.lower() not in ("abs", "rel"):
        raise QxaiUsageError(f"tolerance band {text!r}: it must start with abs: or rel:; {_HINT}")
    value = _finite(raw, text, "the band width")
    if value < 0:
        raise QxaiUsageError(f"tolerance band {text!r}: the band width must not be negative")
    two_sided: bool | None = None
    alpha: float | None = None
    for option in options:
        name, eq, arg = (s.strip() for s in option.lower().partition("="))
        if name in ("two-sided", "one-sided") and not eq and two_sided is None:
            two_sided = name == "two-sided"
        elif name == "alpha" and eq and alpha is None:
            alpha = _finite(arg, text, "alpha")
            if not 0 < alpha < 1:
                raise QxaiUsageError(f"tolerance band {text!r}: alpha must be between 0 and 1, got {arg}")
        else:
            raise QxaiUsageError(f"tolerance band {text!r}: unknown or repeated option {option!r}; {_HINT}")
    return Tolerance(mode.lower(), value, bool(two_sided), DEFAULT_ALPHA if alpha is None else alpha)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ToleranceOverrides:
    """The user's ``[SUITE.]METRIC=BAND`` entries, parsed once and looked up per metric."""

    bands: dict[str, Tolerance]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> ToleranceOverrides:
        """Parse ``--qxai-tolerance`` / ``qxai_tolerance`` entries; a later entry for a key wins."""
        bands: dict[str, Tolerance] = {}
        for entry in entries:
            key, eq, band = (s.strip() for s in str(entry).partition("="))
            if not eq or not _KEY.match(key):
                raise QxaiUsageError(
                    f"--qxai-tolerance {entry!r}: write [SUITE.]METRIC=BAND, e.g. accuracy=abs:0.03"
                )
            try:
                bands[key] = parse_tolerance(band)
            except QxaiUsageError as exc:
                raise QxaiUsageError(f"--qxai-tolerance {key}: {exc}") from None
        return cls(bands)

    def resolve(self, metric: Metric, model_bands: Mapping[str, Tolerance] | None = None) -> Tolerance:
        """The band for ``metric``: suite-qualified override > bare-name override > the model's band file > default."""
        for key in (metric.key, metric.name):
            if key in self.bands:
                return self.bands[key]
        if model_bands and metric.key in model_bands:
            return model_bands[metric.key]
        try:
            return parse_tolerance(metric.tolerance)
        except QxaiUsageError as exc:
            raise QxaiUsageError(f"metric {metric.key} declares a bad default band: {exc}") from None

    def unused(self, keys: Iterable[str]) -> list[str]:
        """Override keys that match none of the checked ``suite.metric`` keys (likely typos), sorted."""
        used = {part for key in keys for part in (key, key.partition(".")[2])}
        return sorted(set(self.bands) - used)


def _finite(raw: str, text: str, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise QxaiUsageError(f"tolerance band {text!r}: {what} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise QxaiUsageError(f"tolerance band {text!r}: {what} must be finite, got {raw!r}")
    return value


def _number(value: float) -> str:
    """Shortest exact text for a float (``3`` rather than ``3.0``)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
