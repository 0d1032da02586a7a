"""``time_series``: an in-situ series, one scan repeated while a sample-environment setpoint changes.

Each repetition is its own run (its own start, events, stop; processed, published and replayed
like any scan) and carries ``series`` in its start document, what links it to the others:

=============== ==============================================================================
``uid``         the series' id (shared by its runs; search Tiled for it)
``index``, ``n`` this repetition's place in the series and the series' length
``name``        what the series is over (e.g. ``temperature``)
``motor``       the setpoint's name; ``units`` its EGU
``setpoint``    the value asked for; ``readback`` the value read when the scan started
``t_start``     unix time the repetition's scan started (time series in situ: the time axis)
=============== ==============================================================================

The plan returns the run uids in order. Every check, the scan's own included (:func:`checks_of`),
runs before the first move; a repetition that fails ends the series there (the runs before it stay
complete and linked).
"""
from __future__ import annotations

import time
import uuid

import bluesky.plan_stubs as bps
import numpy as np

from .axes import read_axis
from .checks import PlanError, check_targets
from .moves import check_move_timeout, move

#: how long a setpoint may take to get where it was sent (a furnace ramps at a few K/s)
SETPOINT_TIMEOUT_S = 600.0
#: the messages that act (open a run, move, stage, trigger): a plan's checks are what comes before
ACTS = ("open_run", "set", "stage", "trigger", "kickoff")


def checks_of(plan):
    """Plan stub: ``plan``'s messages up to the first that acts (:data:`ACTS`), then ``plan`` is
    dropped: its checks run (reading motors and limits, describing the camera) and a
    :class:`PlanError` they raise comes out here, with nothing moved. (An ophyd-async camera's
    check stages it; that is where this stops, its description then checked by the scan itself.)"""
    ret = None
    try:
        while True:
            msg = plan.send(ret)
            if msg.command in ACTS:
                return
            ret = yield msg
    except StopIteration:
        return
    finally:
        plan.close()


def time_series(scan, setpoint, values, *, interval_s: float | None = None, settle_s: float = 0.0,
                name: str | None = None, move_timeout: float = SETPOINT_TIMEOUT_S, md: dict | None = None):
    """Run ``scan`` once at each of ``values`` of ``setpoint``.

    Args:
        scan: ``scan(md) -> plan`` making one run with ``md`` merged into its start document (any
            plan of :mod:`plans.dfxrm` or :mod:`plans.dfxrm_layers` with ``md=md``).
        setpoint: the sample environment's positioner (temperature, load, field, ...).
        values: its positions, one per repetition, in its units (repeats allowed: a hold).
        interval_s: start the repetitions this far apart (s) when a scan is shorter; None: one
            after the other.
        settle_s: wait after each setpoint move before the scan (s).
        name: what the series is over (default: the setpoint's name).
        move_timeout: seconds a setpoint move may take before the series ends as failed.
        md: extra metadata for every repetition's start document.

    Returns: the repetitions' run uids, in order.

    Raises:
        PlanError: before any motion, for values outside the setpoint's limits or not finite, no
            values, a scan that is not a callable, negative times.
    """
    if not callable(scan):
        raise PlanError(f"scan must be a function md -> plan (e.g. lambda md: mosaicity_scan(..., md=md)), "
                        f"not {type(scan).__name__}")
    if setpoint is None:
        raise PlanError("setpoint: None; this instrument has no sample environment to step (the simulated "
                        "microscope has one, `temperature`, with a 3D grain: volume=...)")
    if isinstance(setpoint, str) or not hasattr(setpoint, "name"):
        raise PlanError(f"setpoint: {setpoint!r} is not a positioner; pass the sample environment's (e.g. "
                        "microscope.temperature)")
    v = np.asarray(values, float).ravel()
    if v.size < 1 or not np.all(np.isfinite(v)):
        raise PlanError(f"values {values!r}: give one or more finite setpoints of {setpoint.name}")
    for t, what in ((interval_s, "interval_s"), (settle_s, "settle_s")):
        if t is not None and not (np.isfinite(t) and t >= 0):
            raise PlanError(f"{what} {t!r}: give a time >= 0 in s")
    ax = yield from read_axis(setpoint)
    check_targets(ax, v, "the series")
    check_move_timeout(move_timeout)
    series = {"uid": str(uuid.uuid4()), "n": int(v.size), "name": name or setpoint.name, "motor": setpoint.name,
              "units": ax.egu}
    # the scan's own checks (ranges, steps, camera) before the setpoint moves: a furnace is not
    # heated for a scan that would then be refused
    yield from checks_of(scan({**(md or {}), "series": {**series, "index": 0, "setpoint": float(v[0])}}))
    uids, t0 = [], time.time()
    for i, value in enumerate(v):
        if interval_s and i:
            wait = t0 + i * interval_s - time.time()
            if wait > 0:
                yield from bps.sleep(wait)
        yield from move(setpoint, float(value), timeout=move_timeout, what=f"the setpoint of repetition {i}")
        if settle_s:
            yield from bps.sleep(settle_s)
        readback = (yield from bps.rd(setpoint))
        info = {**series, "index": i, "setpoint": float(value), "readback": float(readback), "t_start": time.time()}
        uids.append((yield from scan({**(md or {}), "series": info})))
    return uids
