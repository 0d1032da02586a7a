"""A whole simulated scan: preset -> simulator -> frames in a dataset file, with ground truth.

The simulated detector of the plans (and this function) append frames to the dataset file as
they are computed, so an interrupted simulation leaves a readable partial file.
"""
from __future__ import annotations

import math
import time
import resource
from dataclasses import dataclass

import numpy as np

from bp_plugin.dataset import Conventions, DatasetWriter, normalise_axis
from bp_plugin.geometry import ExperimentGeometry

from .diffraction import BraggSimulator, measured_rocking_offsets_rad, raster_translations
from .presets import Preset, get_preset


@dataclass
class SimulatedExperiment:
    """Everything of one simulated scan: preset, simulator, translations (m) and rocking offsets (rad)."""

    preset: Preset
    simulator: BraggSimulator
    translations_m: np.ndarray   # (n_positions, 3)
    deltas_rad: np.ndarray       # (n_angles,)

    @property
    def geometry(self) -> ExperimentGeometry:
        return self.preset.geometry

    @property
    def angles_deg(self) -> np.ndarray:
        """Absolute rocking angles (deg): theta_B + delta."""
        return np.degrees(self.geometry.theta_bragg_rad + self.deltas_rad)

    def ground_truth(self) -> tuple[dict[str, np.ndarray], dict]:
        """Ground truth arrays on the lab grid plus the probe section, and their attributes.

        Grid: equal voxels of ``preset.gt_voxel_m``, axis order ``(z, y, x)``, covering the
        scanned area plus the beam's footprint on the foil (at least ``preset.gt_margin_m``) and the
        whole foil thickness: every voxel the beam lights is in it, or the probe's coverage and the
        object error would be judged on a truncated crystal (at low Bragg angles the footprint along
        y, ``extent / sin tB``, is several times the beam).
        """
        p, geo = self.preset, self.geometry
        crystal = self.simulator.sample
        v = p.gt_voxel_m
        tb = geo.theta_bragg_rad
        ext_v, ext_h = self.simulator.probe.extent_m
        foot_x = ext_h / 2
        foot_y = ext_v / (2 * math.sin(tb)) + crystal.thickness_m / (2 * math.tan(tb))
        hx = np.abs(self.translations_m[:, 0]).max() + max(p.gt_margin_m, foot_x)
        hy = np.abs(self.translations_m[:, 1]).max() + max(p.gt_margin_m, foot_y)
        n = crystal.normal
        hz = crystal.thickness_m / 2 / abs(n[2]) + (abs(n[0]) * hx + abs(n[1]) * hy) / abs(n[2]) + 2 * v
        shape = tuple(int(math.ceil(2 * h / v)) + 1 for h in (hz, hy, hx))
        origin = (-(shape[2] - 1) * v / 2, -(shape[1] - 1) * v / 2, -(shape[0] - 1) * v / 2)
        gt = crystal.ground_truth(origin, v, shape)
        dr = geo.voxel_size_m
        pixel = (min(dr), min(dr))
        npx = [int(math.ceil(e / pixel[0])) for e in self.simulator.probe.extent_m]
        probe, p1, p2 = self.simulator.probe_section(pixel, npx)
        gt.update(probe=probe, probe_p1_m=p1, probe_p2_m=p2)
        attrs = {
            "grid_origin_m": list(origin), "grid_voxel_m": v, "grid_axes": "z, y, x",
            "grid_note": "lab frame of the sample at zero translation; density = amplitude * exp(i phase)",
            "probe_axes": "p1 (vertical, scattering plane), p2 (horizontal); peak amplitude 1 for an "
                          "aberration-free focus; counts per |Psi|^2 in 'simulator_scale'",
            "q_bragg_inv_m": geo.q_bragg_inv_m,
            "simulator_scale": self.simulator.scale,
            "simulator_oversampling": self.simulator.f,
            "simulator_box_shape": list(self.simulator.box_shape),
        }
        units = {"density": "1", "amplitude": "1", "phase": "rad", "eps_zz": "1", "omega_x": "rad",
                 "omega_y": "rad", "probe": "1", "probe_p1_m": "m", "probe_p2_m": "m"}
        attrs.update({f"{k}_units": v for k, v in units.items()})
        return gt, attrs


@dataclass(frozen=True)
class _StoredOrientation:
    """How a detector that does not follow the project's frame stores a scan: each -1 axis flipped
    about the crop's centre (q = 0 stays at pixel ``N // 2`` of the stored frame, increasing index
    is -q), translations as the beam's position on the sample (-1)."""

    n1_sign: int = 1
    n2_sign: int = 1
    translation_sign: int = 1

    def conventions(self, crop) -> Conventions:
        return Conventions(n1_sign=self.n1_sign, n2_sign=self.n2_sign, translation_sign=self.translation_sign,
                           q0_pixel=(int(crop[0]) // 2, int(crop[1]) // 2))

    def frames(self, a: np.ndarray, fill=0) -> np.ndarray:
        """``(..., N1, N2)`` from the project's frame to the stored one (the mapping is its own inverse)."""
        for axis, sign in ((-2, self.n1_sign), (-1, self.n2_sign)):
            a = normalise_axis(a, a.ndim + axis, sign, a.shape[axis] // 2, fill=fill)
        return a

    def translations(self, t: np.ndarray) -> np.ndarray:
        return self.translation_sign * np.asarray(t)


def build_experiment(preset: str | Preset = "small", *, seed: int = 0, backend=None) -> SimulatedExperiment:
    """Simulator (on ``backend``'s device; default the CPU), raster translations (with the preset's
    position jitter) and rocking offsets."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    t = raster_translations(p.geometry, snake=p.snake, jitter_m=p.position_jitter_m, seed=seed)
    margin = 4 * p.position_jitter_m
    trange = ((t[:, 0].min() - margin, t[:, 0].max() + margin), (t[:, 1].min() - margin, t[:, 1].max() + margin))
    sim = BraggSimulator(p.geometry, p.crystal(), p.probe, p.detector, oversampling=p.oversampling,
                         translation_range_m=trange, backend=backend)
    sim.rocking_substeps = p.rocking_substeps
    return SimulatedExperiment(p, sim, t, measured_rocking_offsets_rad(p.geometry))


def simulate_to_file(path, preset: str | Preset = "small", *, seed: int = 0, device: str = "auto",
                     progress: bool = True, max_positions: int | None = None,
                     overwrite: bool = False) -> dict:
    """Simulate a scan and write it, frame by frame, to the dataset file ``path``.

    Args:
        path: output HDF5 file (the project's dataset format, docs/dataset-format.md).
        preset: preset name or :class:`Preset`.
        seed: seed of the photon noise and the position jitter.
        device: "auto" | "cpu" | "gpu" (auto: a GPU when CuPy sees one). On the CPU the frames
            are bitwise those of earlier versions; on a GPU they agree to float32 rounding
            (single-precision FFT) and the paper preset takes seconds instead of half an hour.
        progress: show a progress bar.
        max_positions: simulate only the first N positions (the file is then partial), for
            timing a fraction of a large preset.
        overwrite: replace an existing file (refused by default: it could be a measured scan).

    Returns:
        dict with ``n_frames``, ``frame_shape``, ``seconds``, ``seconds_per_position``,
        ``peak_memory_bytes`` (peak resident set size of the process), ``device``.
    """
    from tqdm import tqdm

    from bp_plugin.backend import get_backend

    t0 = time.perf_counter()
    backend = get_backend(device)
    exp = build_experiment(preset, seed=seed, backend=backend)
    geo = exp.geometry
    rng = np.random.default_rng(seed)
    n_pos = len(exp.translations_m) if max_positions is None else min(max_positions, len(exp.translations_m))
    det = exp.simulator.detector
    meta = {"preset": exp.preset.name, "description": exp.preset.description, "seed": seed,
            "simulated": True, "position_jitter_m": exp.preset.position_jitter_m,
            "peak_rate_cps": det.peak_rate_cps, "background_cps": det.background_cps,
            "sample_tilt_deg": list(exp.preset.sample_tilt_deg), "rocking_substeps": exp.preset.rocking_substeps}
    store = _StoredOrientation(*exp.preset.file_conventions)
    with DatasetWriter(path, geo, store.translations(exp.translations_m), exp.angles_deg,
                       store.frames(det.mask(tuple(geo.crop)), fill=False), count_time_s=det.count_time_s,
                       conventions=store.conventions(geo.crop), metadata=meta, overwrite=overwrite) as w:
        gt, attrs = exp.ground_truth()
        w.write_ground_truth(gt, attrs)
        t_sim = time.perf_counter()
        bar = tqdm(range(n_pos), desc=f"simulate {exp.preset.name}", unit="pos", disable=not progress,
                   postfix={"frames": 0})
        for j in bar:
            frames = exp.simulator.frames(exp.translations_m[j], exp.deltas_rad, rng)
            for i in range(geo.n_angles):
                w.write_frame(i, j, store.frames(frames[i]), flush=(i == geo.n_angles - 1))
            bar.set_postfix(frames=(j + 1) * geo.n_angles, refresh=False)
        t_frames = time.perf_counter() - t_sim
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"n_frames": n_pos * geo.n_angles, "frame_shape": tuple(geo.crop), "seconds": time.perf_counter() - t0,
            "seconds_per_position": t_frames / max(n_pos, 1), "n_positions_total": len(exp.translations_m),
            "peak_memory_bytes": peak, "device": backend.device, "box_shape": exp.simulator.box_shape}
