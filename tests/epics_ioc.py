"""A motor-record IOC for the tests (caproto, Channel Access on loopback): what ophyd's ``EpicsMotor``
talks to at a beamline.

Motors ``<prefix>eta`` (deg), ``<prefix>px`` and ``<prefix>py`` (um), each a motor record:

- a put to VAL inside [LLM, HLM] starts a move: DMOV 0 and MOVN 1, RBV moving at VELO (EGU/s) in
  ticks of 5 ms, then DMOV 1. A put outside is refused as the motor record refuses it: LVIO 1,
  VAL back to where it was, no move (so DMOV never drops and rises: a client that waits for it
  waits for ever, the hang a scan's move timeout is for);
- HLM and LLM can be changed at any time (``caproto-put``, or a test's client); VAL's control
  limits follow them, as the motor record's DRVH / DRVL do;
- STOP ends a move where the motor is (what bluesky does to the motors of a failed run);
- ``<prefix>stall`` = 1: moves are accepted and never finish (a tripped amplifier).

Run: ``python tests/epics_ioc.py --prefix BPT: --interfaces 127.0.0.1`` with the loopback
environment of ``tests/test_epics.py``.
"""
from __future__ import annotations

import math

from caproto.server import PVGroup, SubGroup, ioc_arg_parser, pvproperty, run

TICK_S = 0.005


class Motor(PVGroup):
    """One motor record (the PV is the prefix itself, as a motor record's name is)."""

    motor = pvproperty(value=0.0, name="", record="motor", precision=6)

    def __init__(self, *args, egu: str, limits: tuple[float, float], velocity: float, position: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.egu, self.start_limits, self.start_velocity, self.start = egu, limits, velocity, position
        self._limits_seen = None

    @motor.putter
    async def motor(self, instance, value):
        f = instance.field_inst
        lo, hi = f.user_low_limit.value, f.user_high_limit.value
        if lo < hi and not lo <= value <= hi:
            await f.limit_violation.write(1)
            return instance.value                      # refused: the record does not move
        await f.limit_violation.write(0)
        await f.done_moving_to_value.write(0)
        await f.motor_is_moving.write(1)
        return value

    @motor.fields.stop.putter
    async def motor(fields, instance, value):
        # processed on the put, in order with VAL's (a second STOP after a new move's VAL would
        # stop that move): stay where it is, done
        if value and not fields.done_moving_to_value.value:
            val = fields.parent
            await val.write(fields.user_readback_value.value, verify_value=False)
            await fields.motor_is_moving.write(0)
            await fields.done_moving_to_value.write(1)
        return 0

    @motor.startup
    async def motor(self, instance, async_lib):
        f = instance.field_inst
        await f.engineering_units.write(self.egu)
        await f.velocity.write(self.start_velocity)
        await f.user_low_limit.write(self.start_limits[0])
        await f.user_high_limit.write(self.start_limits[1])
        await f.user_readback_value.write(self.start)
        await instance.write(self.start, verify_value=False)
        await f.done_moving_to_value.write(1)
        while True:
            await async_lib.library.sleep(TICK_S)
            limits = (f.user_low_limit.value, f.user_high_limit.value)
            if limits != self._limits_seen:            # VAL's control limits are the record's HLM / LLM
                self._limits_seen = limits
                await instance.write_metadata(lower_ctrl_limit=limits[0], upper_ctrl_limit=limits[1])
            rbv, target = f.user_readback_value.value, instance.value
            if f.done_moving_to_value.value or self.parent.stall.value:
                continue
            step = max(f.velocity.value, 1e-9) * TICK_S
            if rbv == target:                          # arrived on the last tick: done on this one,
                await f.motor_is_moving.write(0)       # as a record's poll cycle reports it
                await f.done_moving_to_value.write(1)
            elif abs(target - rbv) <= step:
                await f.user_readback_value.write(target)
            else:
                await f.user_readback_value.write(rbv + math.copysign(step, target - rbv))


class ScanIOC(PVGroup):
    """The rocking axis and the two piezo axes of a Bragg ptychography raster, and a stall switch."""

    stall = pvproperty(value=0, name="stall", doc="1: moves are accepted and never finish")
    eta = SubGroup(Motor, prefix="eta", egu="deg", limits=(-5.0, 95.0), velocity=10.0, position=0.0)
    px = SubGroup(Motor, prefix="px", egu="um", limits=(-50.0, 50.0), velocity=100.0, position=0.0)
    py = SubGroup(Motor, prefix="py", egu="um", limits=(-50.0, 50.0), velocity=100.0, position=0.0)


if __name__ == "__main__":
    ioc_options, run_options = ioc_arg_parser(default_prefix="BPT:", desc=__doc__.splitlines()[0])
    run(ScanIOC(**ioc_options).pvdb, **run_options)
