"""What a plan reads of a motor before it moves, from ophyd or ophyd-async devices alike.

An ophyd (v1) motor answers at once (``name``, ``egu``, ``limits``, ``position``, ``check_value``); an
ophyd-async one only through its event loop (``describe``, ``locate`` and signals' ``get_value`` are
coroutines). :func:`read_axis` asks either kind, the async one through the RunEngine (the ``locate``
and ``wait_for`` messages: nothing moves and no run is open), and returns an :class:`Axis` that the
checks of :mod:`plans.checks` take in place of the device. For an ophyd motor it yields no message,
so the checks run as the plan starts, as before.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import bluesky.plan_stubs as bps
from bluesky.utils import Msg

from .checks import PlanError


def _record_limits(motor):
    """An EPICS motor record's LLM / HLM signals (ophyd ``EpicsMotor``), else None."""
    lo, hi = getattr(motor, "low_limit_travel", None), getattr(motor, "high_limit_travel", None)
    return (lo, hi) if hasattr(lo, "get") and hasattr(hi, "get") else None


def motor_limits(motor) -> tuple[float, float]:
    """The motor's soft limits ``(low, high)`` in its units, ``(0, 0)`` for none.

    An EPICS motor record's (LLM / HLM) are asked for again now, and ophyd's cache of VAL's control
    limits is refreshed with them: ophyd caches them at connection, so a limit lowered on the IOC
    since would pass the check and hang the move, and a limit raised would refuse a good one.
    Other devices give their ``limits``."""
    signals = _record_limits(motor)
    if signals is not None:
        try:
            setpoint = getattr(motor, "user_setpoint", None)
            if hasattr(setpoint, "get"):        # ophyd checks every move against these: refresh them too
                setpoint.get(form="ctrl", use_monitor=False)
            return float(signals[0].get(use_monitor=False)), float(signals[1].get(use_monitor=False))
        except Exception as exc:
            raise PlanError(f"cannot read the limits of {motor.name!r} ({exc}); check that its IOC is up") from None
    return tuple(float(v) for v in (getattr(motor, "limits", None) or (0.0, 0.0)))


@dataclass(frozen=True)
class Axis:
    """A motor as the checks see it: ``limits`` (low, high) in its units ((0, 0): none), ``egu`` as
    the control system writes it, ``position`` (its readback) and the device itself."""

    name: str
    egu: str
    limits: tuple[float, float]
    position: float
    device: object

    def check_value(self, target: float) -> None:
        """The device's own check where it has a synchronous one (ophyd's), nothing otherwise."""
        check = getattr(self.device, "check_value", None)
        if check is not None and not is_async(self.device):
            check(target)


def is_async(device) -> bool:
    """An ophyd-async device (its ``describe`` is a coroutine function)."""
    return inspect.iscoroutinefunction(getattr(type(device), "describe", None))


def awaited(factory):
    """The result of the coroutine ``factory()``, awaited by the RunEngine."""
    (task,) = yield Msg("wait_for", None, [factory])
    return task.result()


def read_axis(motor):
    """Plan stub: the :class:`Axis` of ``motor`` (ophyd or ophyd-async), its limits as the control
    system has them now (:func:`motor_limits` for ophyd; ``low_limit_travel`` /
    ``high_limit_travel`` signals of an ophyd-async EPICS motor; none for its simulated ones)."""
    if not is_async(motor):
        return Axis(motor.name, str(getattr(motor, "egu", "") or ""), motor_limits(motor), float(motor.position),
                    motor)
    if hasattr(motor, "motor_egu"):                      # ophyd-async's EPICS motor: the record's EGU
        egu = yield from awaited(motor.motor_egu.get_value)
    else:                                               # its readback's units (a simulated motor's)
        desc = yield from awaited(motor.describe)
        egu = (desc.get(motor.name) or next(iter(desc.values()), {})).get("units", "")
    limits = (0.0, 0.0)
    if hasattr(motor, "low_limit_travel") and hasattr(motor, "high_limit_travel"):
        lo = yield from awaited(motor.low_limit_travel.get_value)
        hi = yield from awaited(motor.high_limit_travel.get_value)
        limits = (float(lo), float(hi))
    loc = yield from bps.locate(motor)
    return Axis(motor.name, str(egu or ""), limits, float(loc["readback"]), motor)
