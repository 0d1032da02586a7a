"""The plans with ophyd-async motors: the same Bragg scan and alignment as with ophyd's.

ophyd-async's ``SimMotor``s (units in their readback's description, positions only through the event
loop) drive the simulated detector (``SimBraggBeamline.drive_with``, through each motor's readback
subscription); the rocking axis in millidegrees, so its units are read and converted, not assumed.
"""
import math
from dataclasses import replace

import numpy as np
import pytest

ophyd_async = pytest.importorskip("ophyd_async", reason="ophyd-async (dev extra) is not installed")

from bluesky import RunEngine  # noqa: E402
from bluesky.run_engine import call_in_bluesky_event_loop  # noqa: E402
from ophyd_async.core import init_devices  # noqa: E402
from ophyd_async.sim import SimMotor  # noqa: E402

from plans.alignment import find_bragg_peak  # noqa: E402
from plans.bragg_ptycho import bragg_ptycho_scan  # noqa: E402
from plans.checks import PlanError  # noqa: E402
from sim_devices.beamline import build_beamline  # noqa: E402
from sim_devices.presets import get_preset  # noqa: E402


class Readback:
    """The last readback an ophyd-async motor reported, times ``scale``: what the simulated
    detector reads as the axis's ``position`` (in the units of the axis it stands for)."""

    def __init__(self, motor, scale: float = 1.0):
        self.scale, self.position = scale, None

        async def subscribe():                # ophyd-async subscribes in its event loop only
            motor.user_readback.subscribe_reading(self._update)
        call_in_bluesky_event_loop(subscribe())

    def _update(self, reading):
        self.position = float(next(iter(reading.values()))["value"]) * self.scale


@pytest.fixture
def setup(tmp_path):
    p = get_preset("tiny")
    bl = build_beamline(replace(p, position_jitter_m=0.0), write_dir=tmp_path, noise=False, background_cps=0.0)
    RE = RunEngine(call_returns_result=True)  # before init_devices: the devices join its event loop
    tb_mdeg = math.degrees(bl.geometry.theta_bragg_rad) * 1e3
    with init_devices():
        eta = SimMotor(units="mdeg", initial_value=tb_mdeg)
        piezo_x = SimMotor(units="um")
        piezo_y = SimMotor(units="um")
    bl.drive_with(eta=Readback(eta, 1e-3), piezo_x=Readback(piezo_x), piezo_y=Readback(piezo_y))
    return RE, bl, eta, piezo_x, piezo_y


def test_a_scan_on_ophyd_async_motors_in_mdeg_and_um(setup):
    RE, bl, eta, px, py = setup
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bragg_ptycho_scan([bl.detector], eta, px, py, bl.geometry, snake=True))
    start = docs[0][1]
    sp = start["bp_scan"]
    assert sp["rocking_unit_deg"] == pytest.approx(1e-3) and sp["x_unit_m"] == pytest.approx(1e-6)
    events = [d for n, d in docs if n == "event"]
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "success" and len(events) == 300
    sim = bl.experiment.simulator
    rs, cs = bl.crop_slices()
    valid = bl.mask[rs, cs]
    from sim_devices.detector_file import read_detector_file

    frames = read_detector_file(bl.detector.file_history[-1])
    for k in range(0, 300, 37):
        d = events[k]["data"]
        # the readbacks (mdeg, um) at their setpoints, and the frame the simulator's there
        assert d["eta"] * 1e-3 == pytest.approx(sp["eta_setpoints_deg"][d["bp_index_angle"]], abs=1e-9)
        assert d["piezo_x"] == pytest.approx(sp["x_setpoints"][d["bp_index_pos"]], abs=1e-9)
        t = np.array([d["piezo_x"] * 1e-6, d["piezo_y"] * 1e-6, 0.0])
        delta = math.radians(d["eta"] * 1e-3) - bl.geometry.theta_bragg_rad
        np.testing.assert_array_equal(frames[k][rs, cs][valid], np.rint(sim.expected_counts(t, [delta])[0])[valid])


def test_alignment_and_refusals_on_ophyd_async_motors(setup):
    RE, bl, eta, px, py = setup
    peak = RE(find_bragg_peak(bl.detector, eta, half_range=0.2, num=21)).plan_result   # deg
    assert abs(peak - math.degrees(bl.geometry.theta_bragg_rad)) < 0.02
    # a raster axis in an angle unit: refused before anything moves, in one line that names it
    with init_devices():
        wrong = SimMotor(name="wrong", units="deg")
    with pytest.raises(PlanError, match="'wrong' has units 'deg', which is no length"):
        RE(bragg_ptycho_scan([bl.detector], eta, wrong, py, bl.geometry))
