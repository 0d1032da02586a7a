"""Named simulated experiments: ``tiny`` (seconds, unit tests), ``small`` (about a minute on 2
CPU cores, the demo), ``paper`` (the paper's experiment: 20 x 20 positions, 42 angles,
200 x 160 crop; meant for a GPU).

Each preset is one :class:`Preset`: geometry, probe, detector, and a sample laid out relative to
the scanned area, so every feature of physics.md section 5 falls inside the field of view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from bp_plugin.geometry import ExperimentGeometry

from .diffraction import DetectorModel
from .probe import ProbeModel
from .sample import CrystalSample, Dislocation, Void

#: the tilt (about x, then y; deg) of the presets' simulated W foil, the paper's (physics.md section 3).
#: Their scan files state it (``geometry.sample_tilt_deg``), as an experimenter who cut the lamella
#: knows it; the reconstruction has no default of its own (family members state none).
FOIL_TILT_DEG = (5.5, -2.0)


@dataclass(frozen=True)
class Preset:
    """A complete simulated experiment (everything a scan needs but the random seed).

    Attributes:
        name: preset name.
        description: one line for humans.
        geometry: the experiment.
        probe: KB focus model.
        detector: detector model.
        sample: the crystal, built by :func:`make_sample` from the fields below when ``None``.
        features: which sample features to include (see :func:`make_sample`).
        oversampling: simulator fine-grid factor (avoids the inverse crime).
        position_jitter_m: standard deviation of the stage position error (m), recorded in the file.
        snake: snake raster (every other row reversed).
        gt_voxel_m: voxel of the ground-truth lab grid (m).
        gt_margin_m: ground-truth grid margin around the scanned area (m).
        sample_tilt_deg: tilt of the foil's normal from Q (about x, then about y; deg).
        rocking_substeps: each frame is the mean intensity of this many rocking angles spread over
            its step (1: a point at the nominal angle; more: a continuous or finite rocking exposure).
        file_conventions: orientation in which the frames are stored in the scan file (the
            simulator computes them in the project's frame; a detector may store them otherwise).
    """

    name: str
    description: str
    geometry: ExperimentGeometry
    probe: ProbeModel
    detector: DetectorModel
    features: tuple[str, ...] = ("grain_boundary", "implanted", "fib", "dislocation", "pair", "voids")
    sample: CrystalSample | None = None
    oversampling: int = 2
    position_jitter_m: float = 2e-9
    snake: bool = False
    gt_voxel_m: float = 10e-9
    gt_margin_m: float = 0.3e-6
    sample_tilt_deg: tuple[float, float] = FOIL_TILT_DEG
    rocking_substeps: int = 1
    file_conventions: tuple[int, int, int] = (1, 1, 1)
    extra: dict = field(default_factory=dict)

    @property
    def scan_half_extent_m(self) -> tuple[float, float]:
        """Half of the scanned area ``(x, y)`` (m), centre to outermost position."""
        (ny, nx), (sx, sy) = self.geometry.raster_shape, self.geometry.raster_step_m
        return ((nx - 1) * sx / 2, (ny - 1) * sy / 2)

    def crystal(self) -> CrystalSample:
        return self.sample or make_sample(self.geometry, self.scan_half_extent_m, self.features,
                                          fib_strains=self.extra.get("fib_strains", (1.5e-3, 1.1e-3)),
                                          tilt_deg=self.sample_tilt_deg)


def make_sample(geometry: ExperimentGeometry, half_extent_m: tuple[float, float],
                features=("grain_boundary", "implanted", "fib", "dislocation", "pair", "voids"),
                fib_strains: tuple[float, float] = (1.5e-3, 1.1e-3),
                tilt_deg: tuple[float, float] = FOIL_TILT_DEG) -> CrystalSample:
    """The paper's W-1%Re foil (physics.md section 5), scaled to a scanned area of ``2 * half_extent_m``.

    ``tilt_deg`` tilts the foil's normal from Q (about x, then y). ``fib_strains`` (top, bottom)
    are the paper's by default. A strained layer shifts its
    diffraction by ``|Q| eps / (cos tB dq1)`` pixels along n1: a preset with a small crop or large
    pixels must scale them down, or the layer diffracts outside the detector and cannot be
    reconstructed (the paper's 1.5e-3 lands 73 pixels from the peak on its 200-pixel crop).

    The grain boundary crosses the upper quarter of the scan, the implanted layer ends at the left
    third, dislocation lines thread the foil along z, voids sit in the middle of the foil.
    """
    hx, hy = half_extent_m
    t = geometry.thickness_m
    q = geometry.q_bragg_inv_m
    kw: dict = dict(q_bragg_inv_m=q, thickness_m=t, tilt_x_deg=tilt_deg[0], tilt_y_deg=tilt_deg[1],
                    edge_m=4e-9)
    if "grain_boundary" in features:
        kw.update(grain_boundary_y_m=0.6 * hy, grain_boundary_tilt_deg=8.0)
    if "implanted" in features:
        kw.update(implanted_strain=3e-4, implanted_edge_x_m=-0.35 * hx, implanted_edge_width_m=20e-9,
                  denuded_strain=2.07e-4, denuded_width_m=72e-9)
    if "fib" in features:
        kw.update(fib_top_strain=fib_strains[0], fib_top_m=0.33 * t, fib_bottom_strain=fib_strains[1],
                  fib_bottom_m=0.22 * t)
    disl = []
    if "dislocation" in features:
        disl.append(Dislocation((0.25 * hx, -0.2 * hy, 0.0), (0.15, 0.1, 1.0), 4 * math.pi, 12e-9))
    if "pair" in features:
        sep = max(60e-9, 0.3 * hx)  # partials resolved by a few reconstruction voxels
        disl += [Dislocation((-0.1 * hx - sep / 2, 0.2 * hy, 0.0), (0.0, 0.2, 1.0), 2 * math.pi, 8e-9),
                 Dislocation((-0.1 * hx + sep / 2, 0.2 * hy, 0.0), (0.0, 0.2, 1.0), 2 * math.pi, 8e-9)]
    kw["dislocations"] = tuple(disl)
    if "voids" in features:
        r = min(0.2 * t, 40e-9)
        kw["voids"] = (Void((0.5 * hx, 0.3 * hy, 0.0), r), Void((-0.55 * hx, -0.5 * hy, 0.1 * t), 0.7 * r))
    return CrystalSample(**kw)


def _tiny() -> Preset:
    na = (5e-4, 5e-4)
    geo = ExperimentGeometry(pixel_size_m=165e-6, crop=(32, 32), rocking_step_deg=0.02, n_angles=12, upsampling=2,
                             raster_step_m=(60e-9, 60e-9), raster_shape=(5, 5), thickness_m=0.15e-6,
                             beam_width_m=0.8e-6, numerical_aperture=na, sample_tilt_deg=FOIL_TILT_DEG)
    return Preset(
        name="tiny", description="5 x 5 positions, 12 angles, 32 x 32 pixels (3x3-binned Maxipix): seconds",
        geometry=geo,
        probe=ProbeModel(numerical_aperture=na, coma_rad=(0.5, 0.3), extent_m=(0.8e-6, 0.8e-6),
                         taper_m=(0.15e-6, 0.15e-6)),
        detector=DetectorModel(peak_rate_cps=1e5, count_time_s=0.2, background_cps=0.5, gap_rows=(22,),
                               n_hot=1, n_dead=2),
        features=("grain_boundary", "implanted", "dislocation"),
        gt_voxel_m=10e-9, gt_margin_m=0.25e-6)


def _small() -> Preset:
    na = (3.7e-4, 1.9e-4)
    # the beam (1.1 um with its tails) plus 2 cos(tB) T must fit the detector's window
    # lambda D / p = 1.97 um along r1, or the frames alias: here 1.1 + 0.43 = 1.53 um
    geo = ExperimentGeometry(pixel_size_m=110e-6, crop=(64, 64), rocking_step_deg=0.015, n_angles=16, upsampling=3,
                             raster_step_m=(80e-9, 80e-9), raster_shape=(8, 8), thickness_m=0.3e-6,
                             beam_width_m=1.1e-6, numerical_aperture=na, sample_tilt_deg=FOIL_TILT_DEG)
    return Preset(
        name="small", description="8 x 8 positions, 16 angles, 64 x 64 pixels (2x2-binned Maxipix): a minute",
        geometry=geo,
        probe=ProbeModel(numerical_aperture=na, coma_rad=(0.6, 0.4), extent_m=(1.1e-6, 1.1e-6),
                         taper_m=(0.25e-6, 0.25e-6)),
        detector=DetectorModel(peak_rate_cps=2e5, count_time_s=0.2, background_cps=0.5, gap_rows=(45, 46),
                               gap_cols=(20,), n_hot=2, n_dead=3),
        gt_voxel_m=10e-9, gt_margin_m=0.4e-6,
        # 64 pixels of 110 um hold a layer shift of 16 pixels: 6e-4 (the paper's 1.5e-3 would land at 37)
        extra={"fib_strains": (6e-4, 4.5e-4)})


def _paper() -> Preset:
    geo = ExperimentGeometry(upsampling=3, thickness_m=0.45e-6, beam_width_m=5.0e-6, sample_tilt_deg=FOIL_TILT_DEG)
    return Preset(
        name="paper", description="the paper's scan: 20 x 20 positions, 42 angles, 200 x 160 pixels (GPU)",
        geometry=geo,
        probe=ProbeModel(numerical_aperture=geo.numerical_aperture, coma_rad=(0.6, 0.4), extent_m=(4.0e-6, 3.8e-6),
                         taper_m=(0.6e-6, 0.6e-6)),
        detector=DetectorModel(peak_rate_cps=2e5, count_time_s=0.2, background_cps=0.5, gap_rows=(140, 141),
                               gap_cols=(50, 51), n_hot=4, n_dead=6),
        gt_voxel_m=20e-9, gt_margin_m=1.0e-6)


PRESETS = {"tiny": _tiny, "small": _small, "paper": _paper}


def get_preset(name: str, **overrides) -> Preset:
    """The preset called ``name``; keyword overrides replace :class:`Preset` fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    p = PRESETS[name]()
    return replace(p, **overrides) if overrides else p
