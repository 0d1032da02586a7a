"""A family of simulated experiments drawn from documented ranges, not one preset.

A reconstruction that is only ever tested on the sample it was tuned on encodes that sample
(its tilt, its probe, its up-sampling) in its defaults. :func:`draw_member` draws, from a seed, a
``tiny``-sized experiment whose every free choice lies in :data:`RANGES`: reflection and energy,
crop size and parity, detector distance, numerical aperture, foil thickness and tilt, probe
aberrations (coma, astigmatism, defocus) and tails, frames integrated over their rocking step,
flux, background, and the orientation in which the detector stores its axes. The scan file of a
member holds only what a user would know: the experiment's geometry with ``upsampling = 1`` (a
converter does not know the ratio the data need), the beam width the user states (the focus'
central part, not its tails), the nominal thickness, the scan mode (``rocking_exposure``: frames
at one angle, or integrated over their step), no sample tilt.

Used by ``tests/test_family.py`` (a few members, thresholds that hold for every member drawn) and
``benchmarks/bench_family.py`` (a table of the spread of object, probe and strain errors).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from bp_plugin.geometry import ExperimentGeometry, exit_wave_extent_r1_m, rocking_step_max_rad

from .diffraction import DetectorModel
from .presets import Preset, get_preset
from .probe import ProbeModel

#: reflections (name, hkl, cubic lattice parameter in m) a member draws from
REFLECTIONS = (("W(220)", (2, 2, 0), 3.165e-10), ("Si(004)", (0, 0, 4), 5.431e-10),
               ("Au(111)", (1, 1, 1), 4.078e-10), ("Pt(200)", (2, 0, 0), 3.924e-10))

#: the documented ranges (uniform unless stated; "choice" lists are drawn with equal weight)
RANGES = {
    "reflection": "choice of REFLECTIONS",
    "energy_kev": (8.0, 10.0),
    "crop_px": (29, 36),                       # each axis independently: both parities
    "distance_m": (1.2, 1.6),                  # raised where the pixel sampling condition needs it
    "numerical_aperture": (4.0e-4, 6.0e-4),    # each axis
    "thickness_m": (0.10e-6, 0.20e-6),
    "sample_tilt_deg": (-6.0, 6.0),            # each of (about x, about y)
    "coma_rad": (-0.8, 0.8),                   # each axis
    "astig_rad": (-0.4, 0.4),                  # each axis
    "defocus_dof": (-0.3, 0.3),                # defocus in units of the vertical depth of focus
    "probe_extent_m": (0.7e-6, 1.0e-6),        # full width of the field (both axes)
    "tails": "choice of tapered (raised cosine over 20 % of the extent) or cut (2 % : long, hard tails)",
    "stated_beam_width": (0.55, 0.9),          # the width the user states, in units of the extent
    "step_over_max": (1.6, 2.8),               # rocking step / the largest step the extent allows
    "rocking_substeps": "choice of 1 (a point per frame) or 5 (integrated over the step)",
    "peak_rate_cps": (5e4, 3e5),
    "background_cps": (0.2, 2.0),
    "file_signs": "n1, n2 and translation signs each +1 or -1 (flipped about the crop's centre)",
}


def draw_member(seed: int) -> Preset:
    """The family member of ``seed``: a complete simulated experiment (a :class:`Preset`)."""
    rng = np.random.default_rng([20261201, seed])
    u = lambda key: float(rng.uniform(*RANGES[key]))  # noqa: E731
    name, hkl, a = REFLECTIONS[rng.integers(len(REFLECTIONS))]
    na = (u("numerical_aperture"), u("numerical_aperture"))
    crop = tuple(int(rng.integers(RANGES["crop_px"][0], RANGES["crop_px"][1] + 1)) for _ in range(2))
    thickness = u("thickness_m")
    extent = u("probe_extent_m")
    base = ExperimentGeometry(energy_kev=u("energy_kev"), hkl=hkl, lattice_a_m=a, distance_m=u("distance_m"),
                              pixel_size_m=165e-6, crop=crop, n_angles=12, upsampling=1,
                              raster_step_m=(60e-9, 60e-9), raster_shape=(5, 5), thickness_m=thickness,
                              beam_width_m=extent, numerical_aperture=na)
    # a user sets the distance so the exit wave fits the detector's window lambda D / p with a margin
    # (the pixel sampling condition), or the frames alias whatever the reconstruction does
    span = exit_wave_extent_r1_m(base.theta_bragg_rad, thickness, extent)
    base = replace(base, distance_m=max(base.distance_m, 1.15 * span * base.pixel_size_m / base.wavelength_m))
    step_max = rocking_step_max_rad(base.wavelength_m, base.theta_bragg_rad, thickness, extent)
    step_deg = math.degrees(step_max * u("step_over_max"))
    geo = replace(base, rocking_step_deg=step_deg, beam_width_m=extent * u("stated_beam_width"))
    dof = geo.wavelength_m / (2 * na[0] ** 2)
    tapered = bool(rng.integers(2))
    probe = ProbeModel(numerical_aperture=na, coma_rad=(u("coma_rad"), u("coma_rad")),
                       astig_rad=(u("astig_rad"), u("astig_rad")), defocus_m=u("defocus_dof") * dof,
                       extent_m=(extent, extent), taper_m=((0.2 if tapered else 0.02) * extent,) * 2)
    gap = int(rng.integers(crop[0] // 2 + 3, crop[0] - 3))
    detector = DetectorModel(peak_rate_cps=u("peak_rate_cps"), count_time_s=0.2, background_cps=u("background_cps"),
                             gap_rows=(gap,), n_hot=1, n_dead=2, seed=int(rng.integers(1 << 30)))
    tilt = (u("sample_tilt_deg"), u("sample_tilt_deg"))
    substeps = int(rng.choice([1, 5]))
    # the scan mode is the user's knowledge: a fly scan's file says its frames integrate their step
    geo = replace(geo, rocking_exposure="step" if substeps > 1 else "point")
    signs = tuple(int(s) for s in rng.choice([-1, 1], size=3))
    desc = (f"family member {seed}: {name} at {geo.energy_kev:.2f} keV (theta_B {math.degrees(geo.theta_bragg_rad):.1f} "
            f"deg), crop {crop[0]} x {crop[1]}, T {thickness * 1e9:.0f} nm tilted ({tilt[0]:.1f}, {tilt[1]:.1f}) deg, "
            f"{'tapered' if tapered else 'hard'} tails, {substeps} rocking substep(s), file signs {signs}")
    tiny = get_preset("tiny")
    return replace(tiny, name=f"family-{seed}", description=desc, geometry=geo, probe=probe, detector=detector,
                   sample_tilt_deg=tilt, rocking_substeps=substeps, file_conventions=signs)


def member_truth(preset: Preset) -> dict:
    """What the family drew that the file does not say (for tables): tilt, extent, tails, needed ratio."""
    geo = preset.geometry
    needed = geo.upsampling_needed(preset.probe.extent_m[0])
    return {"name": preset.name, "sample_tilt_deg": list(preset.sample_tilt_deg),
            "probe_extent_m": preset.probe.extent_m[0], "stated_beam_width_m": geo.beam_width_m,
            "upsampling_needed_for_extent": needed, "rocking_substeps": preset.rocking_substeps,
            "file_signs": list(preset.file_conventions), "crop": list(geo.crop),
            "theta_bragg_deg": math.degrees(geo.theta_bragg_rad)}
