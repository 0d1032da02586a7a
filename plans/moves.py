"""Moves that end, and limits as the control system has them now.

A motor that never reports done (an IOC that refused the setpoint: the motor record sets LVIO and
does not move, so DMOV never drops and rises; a tripped amplifier; a lost connection) would hold a
scan forever with no event and no message. Every move of our plans therefore waits at most
``timeout`` seconds and then ends the run with a reason that names the motors, their targets and
where they are (:func:`move`). And because ophyd caches an EPICS motor's control limits when it
connects, the pre-motion checks read the motor record's soft limits again
(:func:`plans.axes.motor_limits`).
"""
from __future__ import annotations

import bluesky.plan_stubs as bps

from .checks import PlanError

#: seconds one move of a scan may take before the run ends (the raster and rocking steps of a
#: ptychography scan take well under a second on any stage; a plan's ``move_timeout`` changes it)
MOVE_TIMEOUT_S = 60.0


def _where(motor) -> str:
    if not hasattr(motor, "position"):            # ophyd-async: read through its event loop only
        return "see its last reading"
    try:
        return f"{float(motor.position):g}"
    except Exception:                              # a motor that cannot even be read: say so, do not mask
        return "unreadable"


def check_move_timeout(timeout: float) -> float:
    """``timeout`` if it is a positive number of seconds; a :class:`PlanError` otherwise (a plan
    calls it before anything moves)."""
    if not timeout > 0:
        raise PlanError(f"move_timeout {timeout} s: give a positive time")
    return timeout


def move(*args, timeout: float = MOVE_TIMEOUT_S, what: str = "the scan"):
    """``bps.mv(motor, target, ...)`` that gives up after ``timeout`` s with a :class:`PlanError`:
    "``what``: moving eta to 10.2 (at 10.1) did not finish within 5 s; ..." (the RunEngine then
    stops the motors it moved and closes the run as failed with that reason)."""
    check_move_timeout(timeout)
    try:
        return (yield from bps.mv(*args, timeout=timeout))
    except TimeoutError:                          # bluesky's WaitForTimeoutError is one
        pairs = ", ".join(f"{m.name} to {float(t):g} (at {_where(m)})" for m, t in zip(args[::2], args[1::2]))
        raise PlanError(f"{what}: moving {pairs} did not finish within {timeout:g} s; check the motors and their "
                        "IOC (limits, amplifier, connection); nothing measured so far is lost") from None


def timed_step(timeout: float = MOVE_TIMEOUT_S, what: str = "the scan"):
    """A ``per_step`` for bluesky's ``scan`` / ``grid_scan`` / ``list_scan`` (their default step,
    ``bps.one_nd_step``, waits for ever): a checkpoint, the changed motors moved with :func:`move`,
    then one reading of the detectors and motors. ``timeout`` is checked now, as the plan is built."""
    check_move_timeout(timeout)

    def per_step(detectors, step, pos_cache):
        yield from bps.checkpoint()
        moves = []
        for motor, target in step.items():
            if pos_cache[motor] != target:
                moves += [motor, target]
                pos_cache[motor] = target
        if moves:
            yield from move(*moves, timeout=timeout, what=what)
        return (yield from bps.trigger_and_read(list(detectors) + list(step)))
    return per_step
