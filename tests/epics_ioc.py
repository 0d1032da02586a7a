"""A motor-record IOC for the tests (caproto, Channel Access on loopback): what ophyd's ``EpicsMotor``
talks to at a beamline.

Motors ``<prefix>eta`` (deg), ``<prefix>px`` and ``<prefix>py`` (um), each a motor record:

- a put to VAL inside [LLM, HLM] starts a move: DMOV 0 and MOVN 1, RBV moving at VELO (EGU/s) in
  ticks of 5 ms, then DMOV 1. A put outside is refused as the motor record refuses it: LVIO 1,
  VAL back to where it was, no move (so DMOV never drops and rises: a client that waits for it
  waits for ever, the hang a scan's move timeout is for);
- HLM and LLM can be changed at any time (``caproto-put``, or a test's client); VAL's control
  limits follow them, as the motor record's DRVH / DRVL do, unless ``<prefix>ctrl_frozen`` = 1
  (a control layer whose monitors carry no limits, as pyepics' do: a client's cached limits stay
  what they were at connection);
- STOP ends a move where the motor is (what bluesky does to the motors of a failed run);
- ``<prefix>stall`` = 1: moves are accepted and never finish (a tripped amplifier);
- ``<prefix>cam:``: an image PV camera whose frames are the simulator's at the motors' readbacks
  (:class:`Camera`).

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
            if limits != self._limits_seen and not self.parent.ctrl_frozen.value:   # VAL's: HLM / LLM
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


class _Readback:
    """A motor record's RBV as the position of the simulated beamline's axis it stands for."""

    def __init__(self, motor: Motor):
        self.motor = motor

    @property
    def position(self) -> float:
        return float(self.motor.motor.field_inst.user_readback_value.value)


class Camera(PVGroup):
    """An image PV detector, areaDetector's pattern reduced to what a scan needs: a put of 1 to
    ``Acquire`` takes one frame at the motors' readbacks (the ``tiny`` simulated experiment, no
    noise, no position jitter) into ``image`` (int32 waveform, rows x cols row-major; rows and cols
    in ``ArraySize1_RBV`` / ``ArraySize0_RBV``) and completes the put when it is there, as a
    put-callback client (ophyd's ``put_complete``) waits for."""

    SHAPE = (172, 172)                                 # tiny's binned Maxipix frame
    acquire = pvproperty(value=0, name="Acquire")
    image = pvproperty(value=[0] * (SHAPE[0] * SHAPE[1]), name="image", max_length=SHAPE[0] * SHAPE[1])
    rows = pvproperty(value=SHAPE[0], name="ArraySize1_RBV", read_only=True)
    cols = pvproperty(value=SHAPE[1], name="ArraySize0_RBV", read_only=True)
    _beamline = None

    @acquire.putter
    async def acquire(self, instance, value):
        if value:
            bl = self._simulated()
            frame = bl.detector.frame_source(bl.preset.detector.count_time_s)
            await self.image.write(frame.astype("int32").ravel())
        return 0

    def _simulated(self):
        if self._beamline is None:                     # built at the first frame: the IOC starts at once
            import tempfile
            from dataclasses import replace

            from sim_devices.beamline import build_beamline
            from sim_devices.presets import get_preset

            ioc = self.parent
            bl = build_beamline(replace(get_preset("tiny"), position_jitter_m=0.0), write_dir=tempfile.mkdtemp(),
                                noise=False, background_cps=0.0)
            assert bl.frame_shape == self.SHAPE
            bl.drive_with(eta=_Readback(ioc.eta), piezo_x=_Readback(ioc.px), piezo_y=_Readback(ioc.py))
            self._beamline = bl
        return self._beamline


class ScanIOC(PVGroup):
    """The rocking axis and the two piezo axes of a Bragg ptychography raster, a stall switch and a camera."""

    stall = pvproperty(value=0, name="stall", doc="1: moves are accepted and never finish")
    ctrl_frozen = pvproperty(value=0, name="ctrl_frozen", doc="1: VAL's control limits no longer follow HLM / LLM")
    eta = SubGroup(Motor, prefix="eta", egu="deg", limits=(-5.0, 95.0), velocity=10.0, position=0.0)
    px = SubGroup(Motor, prefix="px", egu="um", limits=(-50.0, 50.0), velocity=100.0, position=0.0)
    py = SubGroup(Motor, prefix="py", egu="um", limits=(-50.0, 50.0), velocity=100.0, position=0.0)
    cam = SubGroup(Camera, prefix="cam:")


if __name__ == "__main__":
    ioc_options, run_options = ioc_arg_parser(default_prefix="BPT:", desc=__doc__.splitlines()[0])
    run(ScanIOC(**ioc_options).pvdb, **run_options)
