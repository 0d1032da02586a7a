"""A whole simulated Bragg ptychography beamline, built from a preset: motors plus detector.

Axes (names are the ophyd names, i.e. the data keys in the documents):

========== ===== ================================================================================
name       units what it is
========== ===== ================================================================================
sample_x   mm    coarse stage, lab x (perpendicular to the scattering plane)
sample_y   mm    coarse stage, lab y (in the scattering plane, in the foil)
sample_z   mm    coarse stage, lab z (along Q, the foil normal)
piezo_x    um    raster axis on top of the coarse stage, lab x (readback error: the preset's jitter)
piezo_y    um    raster axis, lab y
eta        deg   goniometer rocking axis: the rocking offset is ``eta - theta_B``
tth        deg   detector arm 2theta; at ``2 theta_B`` the Bragg peak sits at the frame centre
det_dist   mm    sample-detector distance (recorded; the frames are computed for the preset's)
========== ===== ================================================================================

The crystal's origin is at ``sample = (0, 0, 0)`` and ``piezo = (0, 0)``; the sample translation of
the simulator is ``(sample_x + piezo_x, sample_y + piezo_y, sample_z)`` in metres.

The detector is a Maxipix (516 x 516 pixels of 55 um) binned to the preset's pixel size (tiny 3x3,
small 2x2, paper 1x1); the preset's crop (``geometry.crop``) is the region around the Bragg peak
where the simulator computes diffraction; the rest of the frame holds background only. Module gaps
and bad pixels sit at fixed sensor positions (the preset's, in the crop at nominal 2theta).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bp_plugin.geometry import ExperimentGeometry
from bp_plugin.truth import write_truth_file

from .detector import SimAreaDetector
from .experiment import SimulatedExperiment, build_experiment
from .motors import SimAxis
from .presets import Preset, get_preset

MAXIPIX_PIXELS = 516
MAXIPIX_PIXEL_M = 55e-6


@dataclass
class BeamlineOptions:
    """How the simulated beamline behaves.

    Attributes:
        write_dir: where the detector writes its HDF5 files.
        seed: seed of the photon noise (per frame: ``(seed, frame number)``) and of readback errors.
        noise: Poisson counting noise (False: rounded expected counts, for exact comparisons).
        velocity: realistic motor speeds (mm/s, um/s, deg/s) instead of instantaneous moves.
        realtime: each exposure lasts ``count_time`` as on the real detector.
        exit_wave_cache_mb: memory for cached exit waves (one per raster position), which makes
            every rocking angle after the first at a position about 10x cheaper to simulate.
    """

    write_dir: Path = Path("out/detector")
    seed: int = 0
    noise: bool = True
    velocity: bool = False
    realtime: bool = False
    exit_wave_cache_mb: float = 1024.0


class SimBraggBeamline:
    """Motors and detector of one simulated experiment (see the module docstring for the axes)."""

    #: the axes, by attribute
    AXES = ("sample_x", "sample_y", "sample_z", "piezo_x", "piezo_y", "eta", "tth", "det_dist")

    def __init__(self, preset: str | Preset = "small", options: BeamlineOptions | None = None):
        self.options = opt = options or BeamlineOptions()
        p = get_preset(preset) if isinstance(preset, str) else preset
        self.experiment: SimulatedExperiment = build_experiment(p, seed=opt.seed)
        self.experiment.simulator.cache_bytes = int(opt.exit_wave_cache_mb * 2**20)
        self.preset = p
        geo = self.geometry
        tb = math.degrees(geo.theta_bragg_rad)
        v = (lambda x: x) if opt.velocity else (lambda x: None)
        jitter_um = p.position_jitter_m * 1e6
        self.sample_x = SimAxis(name="sample_x", egu="mm", limits=(-12.5, 12.5), velocity=v(2.0))
        self.sample_y = SimAxis(name="sample_y", egu="mm", limits=(-12.5, 12.5), velocity=v(2.0))
        self.sample_z = SimAxis(name="sample_z", egu="mm", limits=(-5.0, 5.0), velocity=v(1.0))
        self.piezo_x = SimAxis(name="piezo_x", egu="um", limits=(-50.0, 50.0), velocity=v(100.0),
                               readback_jitter=jitter_um, seed=opt.seed + 1)
        self.piezo_y = SimAxis(name="piezo_y", egu="um", limits=(-50.0, 50.0), velocity=v(100.0),
                               readback_jitter=jitter_um, seed=opt.seed + 2)
        self.eta = SimAxis(name="eta", egu="deg", limits=(-5.0, 95.0), init_pos=tb, velocity=v(1.0))
        self.tth = SimAxis(name="tth", egu="deg", limits=(-5.0, 150.0), init_pos=2 * tb, velocity=v(2.0))
        self.det_dist = SimAxis(name="det_dist", egu="mm", limits=(300.0, 5000.0), init_pos=geo.distance_m * 1e3,
                                velocity=v(20.0))
        self.binning = max(1, int(round(geo.pixel_size_m / MAXIPIX_PIXEL_M)))
        n = MAXIPIX_PIXELS // self.binning
        self.frame_shape = (max(n, geo.crop[0]), max(n, geo.crop[1]))
        self.crop_origin = tuple((s - c) // 2 for s, c in zip(self.frame_shape, geo.crop))
        self.mask = self._sensor_mask()
        self._frame_count = 0
        self.detector = SimAreaDetector(
            name="maxipix", frame_source=self._frame, frame_shape=self.frame_shape, pixel_size_m=geo.pixel_size_m,
            mask=self.mask, write_dir=opt.write_dir, count_time_s=p.detector.count_time_s, realtime=opt.realtime)
        # the ground truth travels as a file named in the start document: consumers read it, they
        # never rebuild the simulator (a reconstructor at a beamline has no sim_devices)
        gt, gt_attrs = self.experiment.ground_truth()
        truth = write_truth_file(Path(opt.write_dir) / f"truth_{p.name}_seed{opt.seed}.h5", gt, gt_attrs)
        self.detector.sim_metadata = {"preset": p.name, "seed": opt.seed, "noise": opt.noise,
                                      "truth_file": str(truth.resolve())}

    def drive_with(self, **motors) -> None:
        """Compute the frames from other motors' readbacks, by role (``eta=``, ``piezo_x=``,
        ``sample_x=``, ... each with the units of the axis it stands for): EPICS motors on an IOC,
        say, so that a plan drives real control-system devices and the simulated detector sees
        where they are."""
        for role, motor in motors.items():
            if role not in self.AXES:
                raise ValueError(f"no axis {role!r} to drive: one of {self.AXES}")
            setattr(self, role, motor)

    # --- description --------------------------------------------------------------------------
    @property
    def geometry(self) -> ExperimentGeometry:
        return self.preset.geometry

    @property
    def motors(self) -> dict[str, SimAxis]:
        return {m.name: m for m in (getattr(self, a) for a in self.AXES)}

    @property
    def devices(self) -> dict:
        """Every device by its ophyd name."""
        return {**self.motors, self.detector.name: self.detector}

    def crop_slices(self) -> tuple[slice, slice]:
        """Where the preset's crop sits in a full frame at nominal 2theta."""
        (r0, c0), (n1, n2) = self.crop_origin, self.geometry.crop
        return slice(r0, r0 + n1), slice(c0, c0 + n2)

    def _sensor_mask(self) -> np.ndarray:
        det, geo = self.preset.detector, self.geometry
        m = np.ones(self.frame_shape, bool)
        r0, c0 = self.crop_origin
        m[[r0 + r for r in det.gap_rows], :] = False
        m[:, [c0 + c for c in det.gap_cols]] = False
        crop_mask = det.mask(tuple(geo.crop))
        rs, cs = self.crop_slices()
        m[rs, cs] &= crop_mask
        return m

    # --- physics ------------------------------------------------------------------------------
    def translation_m(self) -> np.ndarray:
        """Sample translation (m), lab ``(x, y, z)``, from the current readbacks."""
        return np.array([self.sample_x.position * 1e-3 + self.piezo_x.position * 1e-6,
                         self.sample_y.position * 1e-3 + self.piezo_y.position * 1e-6,
                         self.sample_z.position * 1e-3])

    def rocking_offset_rad(self) -> float:
        """``eta - theta_B`` (rad)."""
        return math.radians(self.eta.position) - self.geometry.theta_bragg_rad

    def peak_shift_rows(self) -> int:
        """Rows by which the Bragg peak moves on the detector when 2theta is off ``2 theta_B``.

        The detector arm rotates in the scattering plane; an arm at ``2 theta_B + d`` sees the
        diffracted beam ``-D tan(d) / p`` pixels along n1 from the frame centre.
        """
        d = math.radians(self.tth.position) - 2 * self.geometry.theta_bragg_rad
        return int(round(-self.det_dist.position * 1e-3 * math.tan(d) / self.geometry.pixel_size_m))

    def expected_frame(self, count_time_s: float) -> np.ndarray:
        """Expected counts of a full frame at the current motor positions, float64 ``(rows, cols)``."""
        det, geo = self.preset.detector, self.geometry
        scale = count_time_s / det.count_time_s
        frame = det.background(self.frame_shape) * scale
        crop = self.experiment.simulator.expected_counts(self.translation_m(), [self.rocking_offset_rad()])[0]
        r0 = self.crop_origin[0] + self.peak_shift_rows()
        c0 = self.crop_origin[1]
        n1, n2 = geo.crop
        a, b = max(r0, 0), min(r0 + n1, self.frame_shape[0])
        if b > a:
            frame[a:b, c0:c0 + n2] += scale * crop[a - r0:b - r0]
        return frame

    def _frame(self, count_time_s: float) -> np.ndarray:
        expected = self.expected_frame(count_time_s)
        if self.options.noise:
            rng = np.random.default_rng((self.options.seed, self._frame_count))
            counts = rng.poisson(expected).astype(np.uint32)
        else:
            counts = np.rint(expected).astype(np.uint32)
        self._frame_count += 1
        det = self.preset.detector
        counts[~self.mask] = 0
        rs, cs = self.crop_slices()
        hot, _ = det.bad_pixels(tuple(self.geometry.crop))
        counts[rs, cs].flat[hot] = det.hot_value  # hot pixels read a large constant (masked)
        return counts


def build_beamline(preset: str | Preset = "small", *, write_dir="out/detector", seed: int = 0, noise: bool = True,
                   velocity: bool = False, realtime: bool = False, background_cps: float | None = None,
                   exit_wave_cache_mb: float = 1024.0) -> SimBraggBeamline:
    """A simulated beamline for a preset (``tiny``, ``small``, ``paper``).

    Args:
        preset: preset name or :class:`Preset` (its sample, probe, detector and geometry).
        write_dir: directory for the detector's HDF5 files.
        seed: seed of the photon noise and readback errors.
        noise: Poisson noise on (False for exact, rounded expected counts).
        velocity, realtime: realistic motor speeds and exposure times (both off: as fast as the
            simulator goes).
        background_cps: override the preset's background rate (counts/s per pixel).
        exit_wave_cache_mb: simulator cache budget (MiB).
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    if background_cps is not None:
        p = replace(p, detector=replace(p.detector, background_cps=background_cps))
    return SimBraggBeamline(p, BeamlineOptions(write_dir=Path(write_dir), seed=seed, noise=noise, velocity=velocity,
                                               realtime=realtime, exit_wave_cache_mb=exit_wave_cache_mb))
