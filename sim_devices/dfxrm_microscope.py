"""A simulated dark-field x-ray microscope that a RunEngine drives like the real one.

Axes (ophyd names = data keys):

===== ===== ===================================================================================
name  units what it is
===== ===== ===================================================================================
phi   deg   sample tilt about y (the rocking axis in the scattering plane's normal)
chi   deg   sample tilt about x (the rolling axis)
tth   deg   the 2theta arm: objective lens and detector move together
===== ===== ===================================================================================

With a 3D grain (``volume=``, layer scans) the sample's height ``sample_z`` (um, along the
beam-normal axis) selects the layer the line beam lights (:mod:`sim_devices.dfxrm_volume`). With
``imaging="projections"`` the grain is lit whole, a near-field camera takes the diffracted beam
and ``omega`` (deg) turns the sample about Q: topo-tomography (:mod:`sim_devices.dfxrm_topo`).
A 3D grain also has a sample environment, ``temperature`` (K), whose setpoint moves its sub-grain
boundaries (in situ time series: :mod:`plans.time_series`).

The camera is a 2048 x 2048 sCMOS (uint16) behind an objective; a preset reads a region of it and
bins it (``tiny``: 256 x 256 binned 4x = 64 x 64 pixels, ``small``: 1024 x 1024 -> 256 x 256,
``full``: 2048 x 2048 -> 512 x 512), 150 nm per binned pixel in the sample plane. Frames are
computed from the motors' readbacks by :mod:`sim_devices.dfxrm_sample` and written to HDF5 by the
same :class:`~sim_devices.detector.SimAreaDetector` the ptychography beamline uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bp_plugin.dfxrm.geometry import DfxrmGeometry
from bp_plugin.truth import write_truth_file

from .detector import SimAreaDetector
from .dfxrm_sample import DfxrmSample, DfxrmSampleConfig, build_sample
from .dfxrm_topo import GrainProjector, write_topo_truth
from .dfxrm_volume import Grain3D, Grain3DConfig
from .motors import SimAxis

CAMERA_PIXELS = 2048
UNBINNED_PIXEL_M = 37.5e-9          # camera pixel / magnification, in the sample plane


@dataclass(frozen=True)
class DfxrmPreset:
    """A simulated DF-XRM experiment.

    Attributes:
        name, description: for humans.
        roi: camera pixels read (square, centred).
        binning: camera pixels per image pixel along each axis.
        sample: the grain (its ``shape`` is set from roi / binning).
        count_time_s: exposure per frame.
        phi_range_deg, chi_range_deg, tth_range_deg: default scan ranges, offsets from the reference.
        n_phi, n_chi, n_tth: default numbers of points.
    """

    name: str
    description: str
    roi: int
    binning: int
    sample: DfxrmSampleConfig = field(default_factory=DfxrmSampleConfig)
    count_time_s: float = 0.1
    phi_range_deg: tuple[float, float] = (-0.07, 0.07)
    chi_range_deg: tuple[float, float] = (-0.07, 0.07)
    tth_range_deg: tuple[float, float] = (-0.02, 0.02)
    n_phi: int = 29
    n_chi: int = 15
    n_tth: int = 21

    @property
    def shape(self) -> tuple[int, int]:
        n = self.roi // self.binning
        return (n, n)

    def geometry(self) -> DfxrmGeometry:
        return DfxrmGeometry(pixel_size_m=UNBINNED_PIXEL_M * self.binning)

    def sample_config(self, seed: int = 0) -> DfxrmSampleConfig:
        return replace(self.sample, shape=self.shape, seed=seed)


DFXRM_PRESETS = {
    "tiny": DfxrmPreset("tiny", "64 x 64 pixels, 5 sub-grains, seconds per scan (tests)", 256, 4,
                        DfxrmSampleConfig(n_subgrains=5)),
    "small": DfxrmPreset("small", "256 x 256 pixels, 9 sub-grains (the demo)", 1024, 4,
                         DfxrmSampleConfig(n_subgrains=9, domain_period_px=12)),
    "full": DfxrmPreset("full", "512 x 512 pixels of the whole 2048 x 2048 camera, 14 sub-grains", 2048, 4,
                        DfxrmSampleConfig(n_subgrains=14, domain_period_px=16)),
}


def get_dfxrm_preset(name: str) -> DfxrmPreset:
    try:
        return DFXRM_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown DF-XRM preset {name!r}; choose one of {sorted(DFXRM_PRESETS)}") from None


def build_preset_sample(preset: str | DfxrmPreset, seed: int = 0) -> DfxrmSample:
    """The ground-truth grain of a preset (what the simulated microscope images)."""
    p = get_dfxrm_preset(preset) if isinstance(preset, str) else preset
    return build_sample(p.sample_config(seed), p.geometry())


def write_sample_truth(sample: DfxrmSample, path) -> Path:
    """The sample's truth maps and dislocations (``(n, 3)``: row, col, b_m) as a truth file
    (:mod:`bp_plugin.truth`), what ``streaming.dfxrm_live.truth_metrics`` reads."""
    return write_truth_file(path, {**sample.truth_maps(), "dislocations": np.asarray(sample.dislocations, float).reshape(-1, 3)},
                            {"dislocations_columns": "row, col, b_m (screw, b along Q, signed, m)"})


class SimDfxrmMicroscope:
    """Motors and camera of a simulated DF-XRM experiment (see the module docstring).

    Args:
        preset: preset name or :class:`DfxrmPreset`.
        write_dir: where the camera writes its HDF5 files.
        seed: seed of the sample layout and of the photon noise (per frame: ``(seed, frame number)``).
        noise: Poisson noise (False: rounded expected counts).
        realtime: each exposure lasts ``count_time`` as on the real camera.
        volume: a 3D grain (:class:`sim_devices.dfxrm_volume.Grain3DConfig`) imaged layer by layer
            under a line beam; adds the sample's height axis ``sample_z`` (um), the layer the beam
            lights. None: the 2D grain of the preset.
        imaging: with a 3D grain, ``"layers"`` (line beam, objective) or ``"projections"`` (the
            grain lit whole, a near-field camera, and the ``omega`` axis about Q).
        temperature_rate_K_per_s: with a 3D grain, the sample environment's ramp rate (its
            ``temperature`` setpoint, K, moves the grain's sub-grain boundaries:
            ``Grain3DConfig.boundary_drift_m_per_K``); None: a new setpoint is reached at once.
    """

    def __init__(self, preset: str | DfxrmPreset = "tiny", *, write_dir="out/detector", seed: int = 0,
                 noise: bool = True, realtime: bool = False, volume: Grain3DConfig | None = None,
                 imaging: str = "layers", temperature_rate_K_per_s: float | None = None):
        if imaging not in ("layers", "projections"):
            raise ValueError(f"imaging {imaging!r}: choose 'layers' (line beam) or 'projections' (topo-tomography)")
        self.preset = p = get_dfxrm_preset(preset) if isinstance(preset, str) else preset
        self.seed, self.noise = int(seed), bool(noise)
        self.sample = build_preset_sample(p, seed)
        geo = self.geometry
        self.phi = SimAxis(name="phi", egu="deg", limits=(-5.0, 5.0), init_pos=geo.phi0_deg)
        self.chi = SimAxis(name="chi", egu="deg", limits=(-5.0, 5.0), init_pos=geo.chi0_deg)
        self.tth = SimAxis(name="tth", egu="deg", limits=(0.0, 60.0), init_pos=geo.tth_ref_deg)
        # layer-by-layer: a 3D grain under a line beam, and the sample's height (the layer it lights)
        self.volume = None if volume is None else Grain3D(replace(volume, seed=volume.seed + self.seed), geo, p.shape)
        self.z = SimAxis(name="sample_z", egu="um", limits=(-50.0, 50.0), init_pos=0.0) if volume else None
        # the sample environment: a furnace / cryostream whose setpoint ramps at its rate
        self.temperature = None if volume is None else SimAxis(
            name="temperature", egu="K", limits=(4.0, 1500.0), init_pos=self.volume.temperature_K,
            velocity=temperature_rate_K_per_s)
        self.projector = self.omega = None
        if volume is not None and imaging == "projections":
            self.projector = GrainProjector(self.volume)
            self.omega = SimAxis(name="omega", egu="deg", limits=(-370.0, 370.0), init_pos=0.0)
        self._frame_count = 0
        self.detector = SimAreaDetector(
            name="dfxrm_cam", frame_source=self._frame, frame_shape=p.shape, pixel_size_m=geo.pixel_size_m,
            mask=np.ones(p.shape, bool), write_dir=Path(write_dir), count_time_s=p.count_time_s, dtype=np.uint16,
            realtime=realtime)
        # the truth travels as a file named in the start document (consumers never rebuild the sample)
        self.detector.sim_metadata = {"technique": "dfxrm", "preset": p.name, "seed": self.seed, "noise": self.noise}
        if volume is None:
            truth = write_sample_truth(self.sample, Path(write_dir) / f"truth_dfxrm_{p.name}_seed{self.seed}.h5")
            self.detector.sim_metadata["truth_file"] = str(truth.resolve())
        else:
            self.detector.sim_metadata.update(volume=True, imaging=imaging)
        if self.projector is not None:      # the shape a topo-tomography should find, on its grid
            truth = write_topo_truth(self.projector, p.shape,
                                     Path(write_dir) / f"truth_dfxrm_topo_{p.name}_seed{self.seed}.h5")
            self.detector.sim_metadata["truth_file"] = str(truth.resolve())
        # what the instrument scientist would know of the real microscope: the objective's angular
        # resolution and the camera's dark level (the plans record both in the start document)
        self.detector.resolution_deg = dict((volume or self.sample.config).resolution_deg)
        self.detector.background_counts = self.background_counts

    @property
    def geometry(self) -> DfxrmGeometry:
        return self.sample.geometry

    @property
    def motors(self) -> dict[str, SimAxis]:
        return {m.name: m for m in (self.phi, self.chi, self.tth, self.z, self.omega, self.temperature)
                if m is not None}

    @property
    def devices(self) -> dict:
        return {**self.motors, self.detector.name: self.detector}

    def background_counts(self, count_time_s: float | None = None) -> float:
        """Mean dark/background counts per pixel and frame at this exposure."""
        ct = float(self.detector.count_time.get()) if count_time_s is None else count_time_s
        return (self.volume or self.sample).background_counts(ct)

    def _frame(self, count_time_s: float) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self._frame_count)) if self.noise else None
        self._frame_count += 1
        if self.volume is not None:
            self.volume.temperature_K = self.temperature.position
        if self.projector is not None:
            return self.projector.frame(self.phi.position, self.omega.position, count_time_s, rng)
        if self.volume is not None:
            return self.volume.frame(self.phi.position, self.chi.position, self.tth.position, self.z.position * 1e-6,
                                     count_time_s, rng)
        return self.sample.frame(self.phi.position, self.chi.position, self.tth.position, count_time_s, rng)
