"""Link rates in tc's forms ('20mbit', '1gbit', '12.5mbps'), as bits per second."""

from __future__ import annotations

import re

__all__ = ["parse_rate"]

_RATE_UNITS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
    "tbps": 8 * 10**12,
}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_RATE_FORMS = (
    "a positive number with a tc unit: bit, kbit, mbit, gbit, tbit (bits/s, powers of 1000) or "
    "bps, kbps, mbps, gbps, tbps (bytes/s), e.g. '20mbit', '1gbit', '12.5mbps'; a bare number is bits/s"
)


def parse_rate(rate: str | float) -> float:
    """Return ``rate`` in bits per second; accepts tc's forms ('20mbit', '1gbit', '12.5mbps', 1e6)."""
    if isinstance(rate, bool) or not isinstance(rate, (str, int, float)):
        raise TypeError(f"rate must be {_RATE_FORMS}; got {rate!r}")
    if isinstance(rate, str):
        m = _RATE_RE.match(rate)
        unit = m.group(2).lower() if m else None
        if unit is None or (unit and unit not in _RATE_UNITS):
            raise ValueError(f"rate must be {_RATE_FORMS}; got {rate!r}")
        bits = float(m.group(1)) * _RATE_UNITS.get(unit, 1)
    else:
        bits = float(rate)
    if not bits > 0 or bits == float("inf"):
        raise ValueError(f"rate must be {_RATE_FORMS}; got {rate!r}")
    return bits
