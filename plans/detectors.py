"""What a plan reads of a detector before it acquires, from ophyd or ophyd-async devices alike.

An ophyd (v1) detector describes its data at once. An ophyd-async ``StandardDetector`` describes
them only once prepared (its data keys, a frame per event as ``(1, rows, cols)``, come from the
file writer it opens then), so :func:`open_detector` stages it and prepares it for one frame per
trigger through the RunEngine before describing it. Its triggers then reuse that preparation (one
file for the scan); :func:`stage_rest` stages the other detectors around the run and unstages the
opened one after it, whatever the run's end.
"""
from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from .axes import awaited, is_async


def prepares(detector) -> bool:
    """An ophyd-async detector that must be prepared before it describes (a StandardDetector)."""
    if not is_async(detector):
        return False
    from ophyd_async.core import StandardDetector      # only where ophyd-async devices are used

    return isinstance(detector, StandardDetector)


def open_detector(detector, count_time: float | None = None):
    """Plan stub: the detector's data keys (``describe()``); returns ``(keys, opened)``, ``opened``
    True when this staged and prepared it (an ophyd-async StandardDetector, for one frame per
    trigger of ``count_time`` s, its livetime; default its own) and the caller must unstage it
    (:func:`stage_rest`, or :func:`close_detector` when the plan is refused)."""
    if not is_async(detector):
        return detector.describe(), False
    opened = prepares(detector)
    if opened:
        from ophyd_async.core import TriggerInfo       # only where ophyd-async devices are used

        yield from bps.stage(detector, wait=True)
        info = TriggerInfo() if count_time is None else TriggerInfo(livetime=float(count_time))
        yield from bps.prepare(detector, info, wait=True)
    keys = yield from awaited(detector.describe)
    return keys, opened


def detector_count_time(detector) -> float | None:
    """The exposure (s) an ophyd detector's ``count_time`` signal holds now; None without one
    (an ophyd-async detector's is its preparation's livetime, not a signal read here)."""
    signal = getattr(detector, "count_time", None)
    return signal.get() if hasattr(signal, "get") else None


def close_detector(detector, opened: bool):
    """Plan stub: unstage a detector :func:`open_detector` opened (a refused plan)."""
    if opened:
        yield from bps.unstage(detector)


def stage_rest(plan, detectors, opened=()):
    """``plan`` with ``detectors`` staged around it, except those in ``opened`` (staged already by
    :func:`open_detector`: staging them again would drop their preparation), which it unstages after."""
    rest = [d for d in detectors if not any(d is o for o in opened)]

    def unstage_opened():
        for d in opened:
            yield from bps.unstage(d)

    return bpp.finalize_wrapper(bpp.stage_wrapper(plan, rest), unstage_opened())
