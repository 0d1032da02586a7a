"""Motor units as the control system writes them: any length or angle unit an EGU field names.

EPICS writes engineering units in any case (``UM``, ``MM``, ``DEG``, ``mdeg``) and spellings vary
(``microns``, ``µm`` with the micro sign or ``μm`` with the Greek mu, ``degrees``, ``°``). The
units are parsed by pint (the bluesky ecosystem's units library; ophyd depends on it), trying
the EGU as written, then in lower case (``MM`` is a megamolar to pint, ``mm`` the millimetre), and
checked for the dimension a scan axis needs (:mod:`plans.checks` refuses a motor whose unit is
not, in one line that names the motor, what it has and what it needs).
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _registry():
    import pint

    return pint.UnitRegistry()


def _spellings(egu: str):
    s = egu.strip().replace("μ", "u").replace("µ", "u").replace("°", "deg")
    yield s
    if s.lower() != s:
        yield s.lower()


@functools.lru_cache(maxsize=256)
def unit_scale(egu: str, dimension: str) -> float | None:
    """SI metres (``dimension="length"``) or degrees (``"angle"``) per ``egu``; None if it is neither."""
    import pint

    ureg = _registry()
    target = ureg.metre if dimension == "length" else ureg.degree
    for s in _spellings(egu):
        if not s:
            return None
        try:
            q = ureg.Quantity(1.0, s)
        except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError, AttributeError, ValueError,
                TypeError, AssertionError):
            continue
        if dimension == "angle":
            factor, root = ureg.get_root_units(q.units)    # pint's angles are dimensionless: ask for radians
            if root == ureg.radian:
                return float(q.to(target).magnitude)
            continue
        if dimension == "length" and q.check("[length]"):
            return float(q.to(target).magnitude)
    return None
