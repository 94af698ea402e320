"""The precision of numbers read from other codes' files, and a model of their rounding error.

A result file holds each value to some precision: CalculiX's ``.frd`` prints 6
significant decimal digits (``E12.5``), its ``.dat`` 7, an ASCII VTU whatever its writer
chose, a binary file the precision of its type (``float32``: 24 bits, about 7.2 digits;
``float64``: 53 bits). Nothing in a file states the decimal case, so it is read off the
values: :func:`significant_digits` is the fewest significant digits that reproduce every
value exactly as parsed (a value printed with 6 digits is the double nearest to a
6-digit decimal; a computed double needs 16 or 17).

The rounding error of each value is then modelled as uniform within half a unit of its
last digit (:func:`half_units`), and :func:`rounding_noise` draws one realization of it
that depends only on the natural ids of the values and a salt (the step), not on how the
values are distributed over the ranks: an estimate computed from it is the same for any
number of ranks (up to the order of floating-point sums).
"""
from __future__ import annotations

import numpy as np

#: Digits beyond which the decimal test is not conclusive in double precision (a 13-digit
#: mantissa times 10^k has a rounding error near one unit): the values are then taken as
#: exact to their binary type's precision.
MAX_DECIMAL_DIGITS = 12


def significant_digits(values: np.ndarray) -> int | None:
    """The fewest significant decimal digits (1..12) that reproduce every finite non-zero value
    of ``values`` exactly as parsed; None when none does (binary data: the type's precision
    applies); 0 when there is no such value (no information: a zero field).

    Values written in a fixed-point format (``%.6f``) have fewer significant digits the
    smaller they are; the count is that of the largest ones, so the rounding of the small
    ones is underestimated (result files use ``%e``/``%g`` formats)."""
    v = np.abs(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return 0
    e = np.floor(np.log10(v))

    def exact(d: int, sl: slice) -> bool:
        m = v[sl] * 10.0 ** (d - 1 - e[sl])              # d digits before the decimal point
        # a parsed d-digit decimal is within a few ulps of an integer mantissa here
        return bool(np.all(np.abs(m - np.rint(m)) <= 64 * np.finfo(np.float64).eps * m))

    head = slice(0, 4096)                 # most digit counts fail on the first values already
    for d in range(1, MAX_DECIMAL_DIGITS + 1):
        if exact(d, head) and exact(d, slice(None)):
            return d
    return None


def half_units(values: np.ndarray, digits: int | None, epsilon: float = 0.0) -> np.ndarray:
    """Half a unit of the last significant digit of each value (its rounding error bound).

    ``digits``: significant decimal digits (:func:`significant_digits`; None: binary data);
    ``epsilon``: the machine epsilon of the file's binary type (``float32``: 1.2e-7), whose
    half-ulp applies too. Zeros are taken as exact (a prescribed DOF is written as 0).
    """
    v = np.abs(np.asarray(values, dtype=np.float64))
    out = 0.5 * epsilon * v
    nz = v > 0
    if digits is not None and nz.any():
        e = np.floor(np.log10(v[nz]))
        out[nz] = np.maximum(out[nz], 0.5 * 10.0 ** (e - digits + 1))
    return out


def hash_uniform(ids: np.ndarray, salt: int) -> np.ndarray:
    """Pseudo-random numbers in [0, 1), a pure function of the integer ``ids`` and ``salt``
    (SplitMix64): the same value for an id whatever rank holds it."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt & 0xFFFFFFFF) \
            * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def rounding_noise(values: np.ndarray, ids: np.ndarray, digits: int | None, epsilon: float = 0.0,
                   salt: int = 0) -> np.ndarray:
    """One realization of the rounding error of ``values``: uniform in +- :func:`half_units`,
    drawn from the natural ``ids`` of the values (same shape) and ``salt``."""
    return (2.0 * hash_uniform(ids, salt) - 1.0) * half_units(values, digits, epsilon)


__all__ = ["significant_digits", "half_units", "hash_uniform", "rounding_noise", "MAX_DECIMAL_DIGITS"]
