"""``bp-plugin geometry``: the quantities an experiment's geometry implies, as a table or JSON.

:func:`format_geometry` is also the demo's header; the geometry options (SI on output, the
usual beamline units on the command line: keV, A, m, um, nm, deg) are those of
:class:`bp_plugin.geometry.ExperimentGeometry`.
"""
from __future__ import annotations

import argparse
import json

from .geometry import ExperimentGeometry
from .recon.layout import slab_orientation, thin_foil_warning, voxels_across


def add_geometry_args(p: argparse.ArgumentParser) -> None:
    d = ExperimentGeometry()
    p.add_argument("--energy-kev", type=float, default=d.energy_kev)
    p.add_argument("--hkl", type=int, nargs=3, default=list(d.hkl), metavar=("H", "K", "L"))
    p.add_argument("--lattice-a-angstrom", type=float, default=d.lattice_a_m * 1e10,
                   help="cubic lattice parameter (A)")
    p.add_argument("--d-spacing-angstrom", type=float, default=None, help="d-spacing (A), overrides the lattice")
    p.add_argument("--distance-m", type=float, default=d.distance_m)
    p.add_argument("--pixel-um", type=float, default=d.pixel_size_m * 1e6)
    p.add_argument("--crop", type=int, nargs=2, default=list(d.crop), metavar=("N1", "N2"))
    p.add_argument("--rocking-step-deg", type=float, default=d.rocking_step_deg)
    p.add_argument("--angles", type=int, default=d.n_angles)
    p.add_argument("--upsampling", type=int, default=d.upsampling)
    p.add_argument("--raster-step-nm", type=float, nargs=2, default=[s * 1e9 for s in d.raster_step_m],
                   metavar=("X", "Y"))
    p.add_argument("--raster-shape", type=int, nargs=2, default=list(d.raster_shape), metavar=("NY", "NX"))
    p.add_argument("--thickness-um", type=float, default=d.thickness_m * 1e6)
    p.add_argument("--beam-width-um", type=float, default=d.beam_width_m * 1e6,
                   help="beam width along p1 that the rocking step must hold (Eq. 12)")
    p.add_argument("--sample-tilt", type=float, nargs=2, default=None, metavar=("TX", "TY"),
                   help="the foil's surface normal tilted from Q (deg, about x then y; default: unknown, along Q)")
    p.add_argument("--na", type=float, nargs=2, default=list(d.numerical_aperture), metavar=("NA_V", "NA_H"),
                   help="KB half-aperture, vertical (scattering plane) and horizontal")


def geometry_from_args(a: argparse.Namespace) -> ExperimentGeometry:
    return ExperimentGeometry(
        energy_kev=a.energy_kev, hkl=tuple(a.hkl), lattice_a_m=a.lattice_a_angstrom * 1e-10,
        d_spacing_m=None if a.d_spacing_angstrom is None else a.d_spacing_angstrom * 1e-10,
        distance_m=a.distance_m, pixel_size_m=a.pixel_um * 1e-6, crop=tuple(a.crop),
        rocking_step_deg=a.rocking_step_deg, n_angles=a.angles, upsampling=a.upsampling,
        raster_step_m=tuple(s * 1e-9 for s in a.raster_step_nm), raster_shape=tuple(a.raster_shape),
        thickness_m=a.thickness_um * 1e-6, beam_width_m=a.beam_width_um * 1e-6,
        numerical_aperture=tuple(a.na),
        sample_tilt_deg=None if a.sample_tilt is None else tuple(a.sample_tilt))


def format_geometry(geo: ExperimentGeometry) -> str:
    """Human-readable table of the derived quantities of :meth:`ExperimentGeometry.summary`."""
    s = geo.summary()
    tilt, source, _ = slab_orientation(None, geo.sample_tilt_deg)
    thin = thin_foil_warning(geo, tilt, source)
    nm = lambda v: f"{v * 1e9:.1f} nm"  # noqa: E731
    um = lambda v: f"{v * 1e6:.3f} um"  # noqa: E731
    rows = [
        ("wavelength", f"{s['wavelength_m'] * 1e10:.4f} A"),
        ("d-spacing", f"{s['d_spacing_m'] * 1e10:.4f} A  (hkl {tuple(geo.hkl)})"),
        ("Bragg angle theta_B", f"{s['theta_bragg_deg']:.3f} deg"),
        ("|Q|", f"{s['q_bragg_inv_m'] * 1e-10:.4f} 1/A"),
        ("q steps dq1, dq2, dq3", ", ".join(f"{v * 1e-6:.4g}" for v in s["q_step_inv_m"]) + " 1/um"),
        ("box (N3, N1, N2)", str(tuple(s["box_shape"]))),
        ("voxel dr1, dr2, dr3", ", ".join(nm(v) for v in s["voxel_size_m"])
         + f"  (dr1 projected: {nm(s['voxel_size_r1_projected_m'])})"),
        ("window N1 dr1, N2 dr2, N3 dr3", ", ".join(um(v) for v in s["window_m"])),
        ("beam width held, Eq. 2", f"{um(s['window_w_m'])} at {geo.rocking_step_deg:g} deg"),
        ("  with up-sampling", f"{um(s['window_w_upsampled_m'])} (x{geo.upsampling})"),
        ("max rocking step, Eq. 12", f"{s['rocking_step_max_deg']:.5f} deg for W = {um(geo.beam_width_m)}"
         f"  (up-sampling needed: x{s['upsampling_needed']})"),
        ("up-sampling default", f"x{s['upsampling_default']}: what a beam filling the detector's window "
         f"({um(s['widest_sampled_beam_m'])} along p1, tails included) needs; reconstruct uses it"),
        ("intersection length L", um(s["intersection_length_m"])),
        ("exit wave along r1, W + 2cT", f"{um(s['exit_wave_extent_r1_m'])} (window {um(s['window_m'][0])}: "
         + ("fits)" if s["pixel_sampling_ok"] else "TOO WIDE: frames alias; use smaller pixels or a longer distance)")),
        ("foil across its normal", f"{voxels_across(geo, tilt):.2f} voxels of T = {um(geo.thickness_m)} (normal "
         + ("assumed along Q" if source == "assumed specular" else f"tilted {tilt[0]:g}, {tilt[1]:g} deg")
         + (f"); THIN: {thin}" if thin else ")")),
        ("focus FWHM (V, H)", ", ".join(nm(v) for v in s["focus_fwhm_m"])),
        ("depth of focus (V, H)", ", ".join(f"{v * 1e3:.2f} mm" for v in s["depth_of_focus_m"])),
        ("footprint (x, y)", ", ".join(nm(v) for v in s["footprint_m"])),
        ("overlap (x, y)", ", ".join(f"{v * 100:.0f} %" for v in s["overlap"])
         + f" at steps {', '.join(nm(v) for v in geo.raster_step_m)}"),
    ]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def cmd_geometry(a: argparse.Namespace) -> int:
    geo = geometry_from_args(a)
    if a.json:
        tilt, source, _ = slab_orientation(None, geo.sample_tilt_deg)
        print(json.dumps({**geo.summary(), "voxels_across_foil": voxels_across(geo, tilt),
                          "foil_normal": source, "geometry": geo.to_dict()}, indent=2))
    else:
        print(format_geometry(geo))
    return 0


def add_geometry_parser(sub) -> None:
    """The ``geometry`` sub-command on the CLI's sub-parsers."""
    pg = sub.add_parser("geometry", help="print the quantities derived from an experiment's geometry")
    add_geometry_args(pg)
    pg.add_argument("--json", action="store_true", help="machine-readable output (SI units)")
    pg.set_defaults(func=cmd_geometry)
