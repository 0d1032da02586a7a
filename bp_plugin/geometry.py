"""Geometry of one Bragg reflection in 3D Bragg ptychography (physics.md section 1).

Conventions (used everywhere in the project, checked by ``tests/test_geometry.py``):

* Units are SI inside the code: metres, radians; keV and degrees only at the user edge.
* Lab / sample frame ``(x, y, z)``: ``z`` along the Bragg vector ``Q`` (the foil normal for a
  specular reflection), ``x`` perpendicular to the scattering plane, ``y`` in the scattering plane.
  Incident and exit wave vectors are ``k_i = k (0, cos tB, -sin tB)`` and
  ``k_f = k (0, cos tB, sin tB)``, so ``k_f - k_i = Q = (0, 0, |Q|)``.
* Probe frame ``(p1, p2, p3)``: ``p3`` along ``k_i``; ``p1 = (0, sin tB, cos tB)`` in the scattering
  plane (the KB *vertical* focus direction of a vertical-scattering beamline such as ID01);
  ``p2 = (1, 0, 0)`` (the *horizontal* focus direction). Right-handed: ``p1 x p2 = p3``.
* Reconstruction frame ``(r1, r2, r3)``: ``e3`` along ``k_f``; ``e1 = (0, sin tB, -cos tB)`` in the
  scattering plane, ``e2 = (-1, 0, 0)``. Right-handed: ``e1 x e2 = e3``.
  ``e1`` and ``e2`` are the detector pixel axes (index ``n1`` and ``n2``).
* Rocking direction ``e_rock = cos tB e3 + sin tB e1 = +y``: the measured reciprocal-space point of
  rocking index ``n3`` (centred) is ``q = n1 dq1 e1 + n2 dq2 e2 + n3 dq3 e_rock``.
* Voxel sizes: ``dr1 = lambda D / (N1 p)`` (orthogonal frame, *not* the projected value
  ``dr1 sin tB`` that the paper quotes as 13.6 nm; that one is reported too, as
  ``voxel_size_r1_projected_m``), ``dr2 = lambda D / (N2 p)``,
  ``dr3 = lambda / (2 N3 dtheta_eff sin tB cos tB)``.
* Array axis order for 3D fields, in real and reciprocal space: ``(3, 1, 2)``, i.e.
  ``[rocking / r3, n1 / r1, n2 / r2]``, so a rocking-curve stack of detector frames
  ``[n_angles, n1, n2]`` is a reciprocal-space box without any transpose.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: what a frame holds along the rocking curve (``ExperimentGeometry.rocking_exposure``)
EXPOSURES = ("point", "step")

HC_KEV_ANGSTROM = 12.398419843320026  # h c in keV * Angstrom (CODATA 2018)
EV_TO_J = 1.602176634e-19


def wavelength_m(energy_kev: float) -> float:
    """X-ray wavelength in metres for a photon energy in keV (8 keV -> 1.5498e-10 m)."""
    if not energy_kev > 0:
        raise ValueError(f"energy must be positive, got {energy_kev} keV")
    return HC_KEV_ANGSTROM / energy_kev * 1e-10


def cubic_d_spacing_m(lattice_a_m: float, hkl: tuple[int, int, int]) -> float:
    """d-spacing in metres of reflection ``hkl`` of a cubic lattice of parameter ``a`` (m)."""
    n = math.sqrt(sum(int(h) ** 2 for h in hkl))
    if n == 0:
        raise ValueError("hkl (0, 0, 0) is not a reflection")
    return lattice_a_m / n


def bragg_angle_rad(wavelength: float, d_spacing: float) -> float:
    """Bragg angle theta_B in radians from ``lambda = 2 d sin theta_B``.

    Raises ``ValueError`` naming the shortest reachable d-spacing when the reflection is
    beyond the Ewald sphere at this wavelength.
    """
    s = wavelength / (2.0 * d_spacing)
    if not 0 < s < 1:
        raise ValueError(
            f"reflection with d = {d_spacing * 1e10:.4f} A is unreachable at lambda = "
            f"{wavelength * 1e10:.4f} A (needs d > lambda / 2 = {wavelength * 5e9:.4f} A): "
            "raise the energy or choose a lower-order reflection"
        )
    return math.asin(s)


def q_bragg_inv_m(wavelength: float, theta_b: float) -> float:
    """|Q| = 4 pi sin(theta_B) / lambda in 1/m."""
    return 4.0 * math.pi * math.sin(theta_b) / wavelength


def window_w_m(wavelength: float, theta_b: float, rocking_step_rad: float, thickness_m: float) -> float:
    """Eq. 2: beam width W (m, along p1) that one rocking step can hold.

    ``W = lambda / (2 dtheta cos^2 tB) - T cos(2 tB) / cos tB``.
    """
    c = math.cos(theta_b)
    return wavelength / (2.0 * rocking_step_rad * c * c) - thickness_m * math.cos(2 * theta_b) / c


def rocking_step_max_rad(wavelength: float, theta_b: float, thickness_m: float, beam_width_m: float) -> float:
    """Eq. 12: largest rocking step (rad) that samples a beam of width W through a foil of thickness T.

    ``dtheta <= lambda / (2 cos tB [T cos 2tB + W cos tB])``.
    """
    c = math.cos(theta_b)
    return wavelength / (2.0 * c * (thickness_m * math.cos(2 * theta_b) + beam_width_m * c))


def intersection_length_m(theta_b: float, thickness_m: float, beam_width_m: float) -> float:
    """Probe-object intersection length along the beam, ``L = T / sin tB + W / tan tB`` (m)."""
    return thickness_m / math.sin(theta_b) + beam_width_m / math.tan(theta_b)


def exit_wave_extent_r1_m(theta_b: float, thickness_m: float, beam_width_m: float) -> float:
    """Extent (m) along r1 of the exit wave of a beam of width W (along p1) through a foil of
    thickness T: ``W + 2 cos(tB) T`` (from ``r1 = p1 - 2 cos(tB) z`` in the scattering plane).

    The detector samples the far field every ``dq1``, so the exit wave must fit in the window
    ``lambda D / p`` along r1, or the frames alias (the pixel sampling condition).
    """
    return beam_width_m + 2 * math.cos(theta_b) * thickness_m


def depth_of_focus_m(wavelength: float, na: float) -> float:
    """Depth of focus ``lambda / (2 NA^2)`` in metres."""
    return wavelength / (2.0 * na * na)


def focus_fwhm_m(wavelength: float, na: float) -> float:
    """Intensity FWHM (m) of the focus of a uniformly lit 1D aperture of half-angle ``na``.

    The amplitude is ``sinc(2 NA x / lambda)``; the FWHM of ``sinc^2`` is 0.8859 in that unit.
    """
    return 0.8858929 * wavelength / (2.0 * na)


def recon_basis(theta_b: float) -> np.ndarray:
    """Rows ``e1, e2, e3`` of the reconstruction frame in lab ``(x, y, z)`` coordinates, shape (3, 3)."""
    s, c = math.sin(theta_b), math.cos(theta_b)
    return np.array([[0.0, s, -c], [-1.0, 0.0, 0.0], [0.0, c, s]])


def probe_basis(theta_b: float) -> np.ndarray:
    """Rows ``p1, p2, p3`` of the probe frame in lab ``(x, y, z)`` coordinates, shape (3, 3)."""
    s, c = math.sin(theta_b), math.cos(theta_b)
    return np.array([[0.0, s, c], [1.0, 0.0, 0.0], [0.0, c, -s]])


def rocking_direction(theta_b: float) -> np.ndarray:
    """Unit vector (lab frame) along which the rocking index moves q: ``cos tB e3 + sin tB e1 = +y``."""
    e = recon_basis(theta_b)
    return math.cos(theta_b) * e[2] + math.sin(theta_b) * e[0]


def recon_to_lab(r123: np.ndarray, theta_b: float) -> np.ndarray:
    """Coordinates ``(..., 3)`` in ``(r1, r2, r3)`` (m) to lab ``(x, y, z)`` (m)."""
    return np.asarray(r123) @ recon_basis(theta_b)


def lab_to_recon(xyz: np.ndarray, theta_b: float) -> np.ndarray:
    """Lab coordinates ``(..., 3)`` to ``(r1, r2, r3)``; the inverse of :func:`recon_to_lab`."""
    return np.asarray(xyz) @ recon_basis(theta_b).T


def lab_to_probe(xyz: np.ndarray, theta_b: float) -> np.ndarray:
    """Lab coordinates ``(..., 3)`` to probe coordinates ``(p1, p2, p3)``."""
    return np.asarray(xyz) @ probe_basis(theta_b).T


def recon_to_probe(r123: np.ndarray, theta_b: float) -> np.ndarray:
    """``(r1, r2, r3)`` coordinates ``(..., 3)`` to probe coordinates ``(p1, p2, p3)``."""
    return lab_to_probe(recon_to_lab(r123, theta_b), theta_b)


@dataclass(frozen=True)
class ExperimentGeometry:
    """One Bragg ptychography experiment: beam, reflection, detector, rocking curve and raster.

    Defaults are the paper's experiment (W (220) at 8 keV, ESRF ID01, Maxipix at 1.4 m).

    Attributes:
        energy_kev: photon energy (keV).
        hkl: Miller indices of the reflection.
        lattice_a_m: cubic lattice parameter (m); ignored when ``d_spacing_m`` is given.
        d_spacing_m: d-spacing (m) for non-cubic crystals; ``None`` derives it from ``lattice_a_m``.
        distance_m: sample-detector distance D (m).
        pixel_size_m: detector pixel pitch p (m), equal along both pixel axes.
        crop: detector crop ``(N1, N2)`` in pixels (N1 along e1, in the scattering plane).
        rocking_step_deg: measured rocking step dtheta (deg).
        n_angles: number of measured rocking angles.
        upsampling: angular up-sampling ratio (reconstruction planes per measured plane).
        raster_step_m: raster step ``(along x, along y)`` (m).
        raster_shape: raster size ``(n_y, n_x)``.
        thickness_m: sample (foil) thickness T (m).
        beam_width_m: beam width W along p1 (m) that the sampling condition must hold (Eq. 12).
        numerical_aperture: KB half-aperture ``(NA along p1 / vertical, NA along p2 / horizontal)``.
        sample_tilt_deg: tilt of the sample's surface normal from Q, ``(about x, then about y)`` in
            degrees, when the user knows it (a specular reflection of a flat foil: (0, 0)); ``None``
            (unknown): the reconstruction assumes a specular reflection and says so.
        rocking_exposure: ``"point"`` when each frame is taken at one rocking angle (step and
            count, the sample at rest); ``"step"`` when it integrates its whole rocking step
            (a continuous / fly rocking scan); see :mod:`bp_plugin.recon.exposure`.
    """

    energy_kev: float = 8.0
    hkl: tuple[int, int, int] = (2, 2, 0)
    lattice_a_m: float = 3.165e-10
    d_spacing_m: float | None = None
    distance_m: float = 1.4
    pixel_size_m: float = 55e-6
    crop: tuple[int, int] = (200, 160)
    rocking_step_deg: float = 0.005
    n_angles: int = 42
    upsampling: int = 1
    raster_step_m: tuple[float, float] = (100e-9, 100e-9)
    raster_shape: tuple[int, int] = (20, 20)
    thickness_m: float = 0.5e-6
    beam_width_m: float = 1.7e-6
    numerical_aperture: tuple[float, float] = (3.7e-4, 1.9e-4)
    sample_tilt_deg: tuple[float, float] | None = None
    rocking_exposure: str = "point"

    def __post_init__(self) -> None:
        checks = {
            "energy_kev": self.energy_kev > 0,
            "distance_m": self.distance_m > 0,
            "pixel_size_m": self.pixel_size_m > 0,
            "rocking_step_deg": 0 < self.rocking_step_deg < 5,
            "n_angles": int(self.n_angles) >= 1,
            "upsampling": int(self.upsampling) >= 1,
            "thickness_m": self.thickness_m > 0,
            "beam_width_m": self.beam_width_m > 0,
            "crop": len(self.crop) == 2 and min(self.crop) >= 2,
            "numerical_aperture": len(self.numerical_aperture) == 2 and min(self.numerical_aperture) > 0,
            "sample_tilt_deg": self.sample_tilt_deg is None or (
                len(self.sample_tilt_deg) == 2 and all(math.isfinite(t) and abs(t) < 45 for t in self.sample_tilt_deg)),
            "rocking_exposure": self.rocking_exposure in EXPOSURES,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid experiment geometry field(s) {bad}: got " +
                             ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))
        bragg_angle_rad(self.wavelength_m, self.d_m)  # unreachable reflection -> clear error now

    # --- beam and reflection -------------------------------------------------------------
    @property
    def wavelength_m(self) -> float:
        return wavelength_m(self.energy_kev)

    @property
    def energy_j(self) -> float:
        return self.energy_kev * 1e3 * EV_TO_J

    @property
    def d_m(self) -> float:
        return self.d_spacing_m if self.d_spacing_m else cubic_d_spacing_m(self.lattice_a_m, self.hkl)

    @property
    def theta_bragg_rad(self) -> float:
        return bragg_angle_rad(self.wavelength_m, self.d_m)

    @property
    def q_bragg_inv_m(self) -> float:
        return q_bragg_inv_m(self.wavelength_m, self.theta_bragg_rad)

    # --- sampling ------------------------------------------------------------------------
    @property
    def rocking_step_rad(self) -> float:
        return math.radians(self.rocking_step_deg)

    @property
    def rocking_step_eff_rad(self) -> float:
        """Rocking step of the reconstruction grid, ``dtheta / upsampling`` (rad)."""
        return self.rocking_step_rad / self.upsampling

    @property
    def n_planes(self) -> int:
        """N3: planes along the rocking direction in the reconstruction (measured x up-sampling)."""
        return int(self.n_angles) * int(self.upsampling)

    @property
    def box_shape(self) -> tuple[int, int, int]:
        """Reconstruction box shape in axis order ``(3, 1, 2)``: ``(N3, N1, N2)``."""
        return (self.n_planes, int(self.crop[0]), int(self.crop[1]))

    @property
    def q_step_inv_m(self) -> tuple[float, float, float]:
        """``(dq1, dq2, dq3)`` in 1/m; dq3 is along the (non-orthogonal) rocking direction."""
        dq = 2 * math.pi * self.pixel_size_m / (self.wavelength_m * self.distance_m)
        return (dq, dq, self.q_bragg_inv_m * self.rocking_step_eff_rad)

    @property
    def voxel_size_m(self) -> tuple[float, float, float]:
        """``(dr1, dr2, dr3)`` in metres, in the orthogonal reconstruction frame."""
        lam, tb = self.wavelength_m, self.theta_bragg_rad
        n1, n2 = self.crop
        dr1 = lam * self.distance_m / (n1 * self.pixel_size_m)
        dr2 = lam * self.distance_m / (n2 * self.pixel_size_m)
        dr3 = lam / (2 * self.n_planes * self.rocking_step_eff_rad * math.sin(tb) * math.cos(tb))
        return (dr1, dr2, dr3)

    @property
    def window_m(self) -> tuple[float, float, float]:
        """Real-space window of the reconstruction box ``(N1 dr1, N2 dr2, N3 dr3)`` in metres."""
        dr = self.voxel_size_m
        return (dr[0] * self.crop[0], dr[1] * self.crop[1], dr[2] * self.n_planes)

    # --- sampling condition and beam -----------------------------------------------------
    @property
    def window_w_m(self) -> float:
        """Eq. 2 at the measured rocking step (m)."""
        return window_w_m(self.wavelength_m, self.theta_bragg_rad, self.rocking_step_rad, self.thickness_m)

    @property
    def window_w_upsampled_m(self) -> float:
        """Eq. 2 at the up-sampled step ``dtheta / upsampling`` (m)."""
        return window_w_m(self.wavelength_m, self.theta_bragg_rad, self.rocking_step_eff_rad, self.thickness_m)

    @property
    def rocking_step_max_deg(self) -> float:
        """Eq. 12 for ``beam_width_m`` (deg)."""
        return math.degrees(rocking_step_max_rad(self.wavelength_m, self.theta_bragg_rad,
                                                 self.thickness_m, self.beam_width_m))

    def upsampling_needed(self, beam_width_m: float | None = None) -> int:
        """Smallest up-sampling ratio whose effective step satisfies Eq. 12 for the beam width."""
        w = self.beam_width_m if beam_width_m is None else beam_width_m
        step_max = rocking_step_max_rad(self.wavelength_m, self.theta_bragg_rad, self.thickness_m, w)
        return max(1, math.ceil(self.rocking_step_rad / step_max - 1e-12))

    @property
    def widest_sampled_beam_m(self) -> float:
        """The widest beam (m, along p1) whose exit wave the detector's pixels sample without
        aliasing: ``lambda D / p - 2 cos(tB) T`` (the r1 window less the foil's share)."""
        return self.window_m[0] - 2 * math.cos(self.theta_bragg_rad) * self.thickness_m

    def upsampling_default(self) -> int:
        """The up-sampling ratio a reconstruction uses unless told otherwise: the largest of the
        geometry's own, the one the stated beam width needs (Eq. 12) and the one a beam filling the
        detector's window needs (:attr:`widest_sampled_beam_m`). A probe's tails are rarely known
        and reach well past its stated width; the pixels bound what can be sampled at all, so the
        last ratio holds whatever the tails, up to the pixel sampling condition."""
        return max(int(self.upsampling), self.upsampling_needed(),
                   self.upsampling_needed(max(self.widest_sampled_beam_m, self.beam_width_m)))

    @property
    def intersection_length_m(self) -> float:
        return intersection_length_m(self.theta_bragg_rad, self.thickness_m, self.beam_width_m)

    @property
    def exit_wave_extent_r1_m(self) -> float:
        """``W + 2 cos(tB) T`` (m): must not exceed the r1 window ``N1 dr1 = lambda D / p``."""
        return exit_wave_extent_r1_m(self.theta_bragg_rad, self.thickness_m, self.beam_width_m)

    @property
    def focus_fwhm_m(self) -> tuple[float, float]:
        """Intensity FWHM of the focus ``(along p1 / vertical, along p2 / horizontal)`` (m)."""
        return tuple(focus_fwhm_m(self.wavelength_m, na) for na in self.numerical_aperture)

    @property
    def depth_of_focus_m(self) -> tuple[float, float]:
        return tuple(depth_of_focus_m(self.wavelength_m, na) for na in self.numerical_aperture)

    @property
    def footprint_m(self) -> tuple[float, float]:
        """Footprint FWHM of the focus on the sample ``(along x, along y)`` (m).

        Along x it is the horizontal focus; along y the vertical focus is stretched by
        ``1 / sin tB`` (200 nm -> 288 nm for W (220) at 8 keV).
        """
        fv, fh = self.focus_fwhm_m
        return (fh, fv / math.sin(self.theta_bragg_rad))

    @property
    def overlap(self) -> tuple[float, float]:
        """Linear probe overlap ``1 - step / footprint`` along ``(x, y)`` (fraction)."""
        fx, fy = self.footprint_m
        sx, sy = self.raster_step_m
        return (1.0 - sx / fx, 1.0 - sy / fy)

    def summary(self) -> dict:
        """Every derived quantity, SI units, JSON-ready (keys are stable: the CLI prints them)."""
        dr = self.voxel_size_m
        out = {
            "wavelength_m": self.wavelength_m,
            "d_spacing_m": self.d_m,
            "theta_bragg_deg": math.degrees(self.theta_bragg_rad),
            "q_bragg_inv_m": self.q_bragg_inv_m,
            "q_step_inv_m": list(self.q_step_inv_m),
            "voxel_size_m": list(dr),
            "voxel_size_r1_projected_m": dr[0] * math.sin(self.theta_bragg_rad),
            "box_shape": list(self.box_shape),
            "window_m": list(self.window_m),
            "window_w_m": self.window_w_m,
            "window_w_upsampled_m": self.window_w_upsampled_m,
            "rocking_step_max_deg": self.rocking_step_max_deg,
            "upsampling_needed": self.upsampling_needed(),
            "widest_sampled_beam_m": self.widest_sampled_beam_m,
            "upsampling_default": self.upsampling_default(),
            "intersection_length_m": self.intersection_length_m,
            "exit_wave_extent_r1_m": self.exit_wave_extent_r1_m,
            "pixel_sampling_ok": self.exit_wave_extent_r1_m <= self.window_m[0],
            "focus_fwhm_m": list(self.focus_fwhm_m),
            "depth_of_focus_m": list(self.depth_of_focus_m),
            "footprint_m": list(self.footprint_m),
            "overlap": list(self.overlap),
        }
        return out

    def to_dict(self) -> dict:
        """Constructor fields as plain JSON types (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentGeometry":
        """Build from :meth:`to_dict` output; unknown keys are an error that names them."""
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown geometry field(s) {sorted(unknown)}; known: {sorted(names)}")
        kw = {k: (tuple(v) if isinstance(v, (list, np.ndarray)) else v) for k, v in d.items()}
        if kw.get("d_spacing_m") in (0, 0.0):
            kw["d_spacing_m"] = None
        return cls(**kw)
