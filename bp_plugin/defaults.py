"""One definition of each default that more than one layer reads: the named schedules, the online
reconstructor's intervals and address. The CLI, the service, the engine's options and the benchmarks
take them from here; nothing here imports anything heavier than the standard library, so ``--help``
stays quick.

Schedules are in iterations (one pass over every measured position). ``paper`` is the paper's
1000 joint + 500 maximum-likelihood iterations; ``short`` is the same schedule compressed to
60 + 20 (slab steps and the shrink-wrap window scaled alike): the online reconstructor's final
phase, the tests' and the family benchmark's. On ``tiny`` it ends at object error 0.14-0.15, on
the family of ``benchmarks/bench_family.py`` at a median of 0.15 (docs/validation.md). ``demo``
(40 + 10) is ``make demo``'s: a live result within minutes on a laptop.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """A named reconstruction schedule.

    Attributes:
        name: what ``--schedule`` takes.
        iterations: joint object / probe / background iterations (the paper's schedule compressed
            to that many: slab steps, shrink-wrap window and warm-up scaled alike).
        ml_iterations: maximum-likelihood iterations after them.
    """

    name: str
    iterations: int
    ml_iterations: int


SCHEDULES = {s.name: s for s in (Schedule("paper", 1000, 500), Schedule("short", 60, 20), Schedule("demo", 40, 10))}
PAPER = SCHEDULES["paper"]
SHORT = SCHEDULES["short"]
DEMO = SCHEDULES["demo"]


def schedule(name: str) -> Schedule:
    """The schedule called ``name``; a ValueError naming the known ones otherwise."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}: one of {', '.join(SCHEDULES)}") from None


# --- the online reconstructor (streaming.service, streaming.live, ``bp-plugin reconstructor``) -----
LISTEN = "tcp://127.0.0.1:5577"     # loopback: a beamline opens it to the detector host on purpose
STREAM_FINAL = SHORT                # the final schedule after a run's stop message
CATCH_UP_PER_ANGLE = 6              # see streaming.live.LiveOptions.catch_up_per_angle
PUBLISH_INTERVAL_S = 1.0            # shortest time between two publications to Tiled
CHECKPOINT_INTERVAL_S = 10.0        # shortest time between two checkpoints of a run
IDLE_TIMEOUT_S = 600.0              # a run without stop message or frame this long is finished
PROBE_AFTER_FRACTION = 0.5          # share of a run's frames in before the live phase refines the probe
