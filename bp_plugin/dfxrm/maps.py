"""DF-XRM maps from the running moments: tilts, mosaicity, axial strain, Nye tensor, boundaries.

Conventions (docs/dfxrm.md): image rows are sample y, columns sample x, z is along the nominal Q.
A pixel's centre of mass in phi / chi, minus the reference orientation, is its lattice tilt; its
centre of mass in 2theta gives the axial strain ``eps = -cot(theta_B) (2theta_com - 2theta_ref) / 2``.
Together they are the measured row of the elastic distortion ``beta_zj = du_z / dx_j``:
``beta_zx = tilt_phi``, ``beta_zy = tilt_chi`` (rad), ``beta_zz = eps``.

The Nye tensor ``alpha_ij = e_jkl d_k beta_il`` (``alpha = sum b (x) t`` per unit area for straight
dislocations) has three components that in-plane gradients of these maps give:

- ``alpha_zz = d_x beta_zy - d_y beta_zx``: exact (the Burgers vector component along Q of the
  dislocation lines threading the layer);
- ``alpha_xy = d_x beta_zx`` and ``alpha_yx = -d_y beta_zy``: neglecting ``d_z eps_xx - 2 d_x eps_xz``
  and ``2 d_y eps_yz - d_z eps_yy`` (out-of-plane gradients of in-plane strains and shear-strain
  gradients, which one layer does not measure: the usual assumption of Nye-tensor maps from
  orientation data; docs/dfxrm.md has the full expressions).

The strain map's gradients enter only ``alpha_zx`` and ``alpha_zy``, together with out-of-plane
gradients (``d_z``) a single layer does not measure: they are not reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .geometry import DfxrmGeometry
from .moments import MomentAccumulator

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# below it the floor's truncation factor (2 axes: 0.31 at 2, 0.45 at 3) cannot be undone reliably
MIN_PEAK_OVER_FLOOR = 3.0

MAP_UNITS = {
    "intensity": "counts (background subtracted, summed over the scan)", "mask": "1 = crystal pixel",
    "tilt_phi": "deg", "tilt_chi": "deg", "fwhm_phi": "deg", "fwhm_chi": "deg", "cov_phi_chi": "deg^2",
    "com_tth": "deg", "fwhm_tth": "deg", "strain": "1 (axial strain eps_zz)",
    "skew_phi": "1", "skew_chi": "1", "skew_tth": "1", "kurt_phi": "1 (excess)", "kurt_chi": "1 (excess)",
    "kurt_tth": "1 (excess)", "nye_xy": "1/um", "nye_yx": "1/um", "nye_zz": "1/um",
    # topo-tomography (bp_plugin.dfxrm.topotomo)
    "volume": "counts per voxel (filtered back-projection of the integrated projections)",
    "shape": "1 = inside the grain", "projections": "counts (background subtracted, summed over the rocking)",
    "w_m": "m (along Q)", "b_m": "m", "a_m": "m",
}


@dataclass
class MapOptions:
    """How maps are made from the moments.

    Attributes:
        threshold_rel: a pixel is crystal when its integrated intensity exceeds this fraction of the
            99th percentile of the integrated intensity (background pixels would give noise maps).
        threshold_counts: and exceeds this many integrated counts.
        resolution_deg: instrumental resolution (Gaussian sigma, deg) per axis, removed in quadrature
            from the widths: ``fwhm = 2.355 sqrt(var - sigma_res^2)``.
        floor_correction: undo the noise floor's truncation of the tails in the widths and the
            covariance (:func:`truncation_factor`); only when the moments were taken with a floor.
    """

    threshold_rel: float = 0.1
    threshold_counts: float = 0.0
    resolution_deg: dict = field(default_factory=dict)
    floor_correction: bool = True


def _np(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def crystal_mask(intensity: np.ndarray, opts: MapOptions) -> np.ndarray:
    """Pixels whose integrated intensity passes both thresholds, bool ``(rows, cols)``.

    The reference level is the 99th percentile over the pixels that received any intensity, so a
    crystal covering under 1 % of the field of view still sets its own level."""
    lit = intensity[np.isfinite(intensity) & (intensity > 0)]
    ref = float(np.percentile(lit, 99)) if lit.size else 0.0
    level = max(opts.threshold_rel * ref, opts.threshold_counts, 0.0)
    return np.isfinite(intensity) & (intensity > level) & (ref > 0)


def truncation_factor(peak_over_floor, n_axes: int):
    """Fraction of a Gaussian rocking curve's (co)variance left after the noise floor, per pixel.

    With a floor ``F`` a frame value ``A g(u)`` (``A`` the peak counts, ``g`` a Gaussian in the ``n``
    scanned angles with covariance ``Sigma``) survives where ``u^T Sigma^-1 u < T^2 = 2 ln(A / F)``: an
    ellipsoid of the curve's own shape, so the measured covariance is ``c Sigma`` with
    ``c = P(chi2_{n+2} < T^2) / P(chi2_n < T^2)`` (the truncated second moment of a normal vector),
    whatever ``Sigma`` is; the centre of mass is unbiased. ``peak_over_floor``: ``A / F`` (array);
    returns ``c`` in (0, 1], NaN where ``A / F < MIN_PEAK_OVER_FLOOR``: a curve that barely clears
    the floor has lost most of its width (``c`` -> 0), and dividing by ``c`` would only amplify noise.
    """
    from scipy.stats import chi2

    a = np.asarray(peak_over_floor, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = 2.0 * np.log(np.where(a >= MIN_PEAK_OVER_FLOOR, a, np.nan))
        return chi2.cdf(t2, n_axes + 2) / chi2.cdf(t2, n_axes)


def compute_maps(acc: MomentAccumulator, geometry: DfxrmGeometry, opts: MapOptions | None = None) -> dict:
    """All maps the scan's axes allow, float32 ``(rows, cols)``, NaN outside the crystal mask.

    Returns a dict with ``intensity``, ``mask`` (uint8) and, per scanned axis, ``com_<axis>`` (deg),
    ``fwhm_<axis>`` (deg; the floor's truncation undone, then the resolution removed), at order 4 ``skew_<axis>`` and ``kurt_<axis>``; ``tilt_phi`` /
    ``tilt_chi`` (deg, offsets from the reference orientation), ``cov_phi_chi`` (deg^2), ``strain``
    (when 2theta is scanned) and the Nye components ``nye_xy``, ``nye_yx``, ``nye_zz`` (1/um) that
    the scanned tilts allow.
    """
    opts = opts or MapOptions()
    s0 = _np(acc.moment(()))
    mask = crystal_mask(s0, opts)
    centre = acc.centre if acc.centre is not None else np.zeros(len(acc.axes))
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(mask, 1.0 / np.where(mask, s0, 1.0), np.nan)
        # widths and covariance: undo the floor's truncation (1 where no floor was applied)
        c = (truncation_factor(_np(acc.peak) / acc.floor, len(acc.axes)).reshape(acc.shape)
             if acc.peak is not None and opts.floor_correction else 1.0)
        out: dict[str, np.ndarray] = {"intensity": s0, "mask": mask.astype(np.uint8)}
        mean = {}
        for a, name in enumerate(acc.axes):
            m = _np(acc.moment((a,))) * w
            mean[name] = m
            var = _np(acc.moment((a, a))) * w - m * m
            out[f"com_{name}"] = centre[a] + m
            res = float(opts.resolution_deg.get(name, 0.0))
            out[f"fwhm_{name}"] = FWHM_PER_SIGMA * np.sqrt(np.clip(var / c - res * res, 0.0, None))
            if acc.order == 4:
                e3, e4 = _np(acc.moment((a,) * 3)) * w, _np(acc.moment((a,) * 4)) * w
                e2 = var + m * m
                mu3 = e3 - 3 * m * e2 + 2 * m ** 3
                mu4 = e4 - 4 * m * e3 + 6 * m * m * e2 - 3 * m ** 4
                out[f"skew_{name}"] = mu3 / np.where(var > 0, var, np.nan) ** 1.5
                out[f"kurt_{name}"] = mu4 / np.where(var > 0, var, np.nan) ** 2 - 3.0
        if "phi" in acc.axes:
            out["tilt_phi"] = out["com_phi"] - geometry.phi0_deg
        if "chi" in acc.axes:
            out["tilt_chi"] = out["com_chi"] - geometry.chi0_deg
        if "phi" in acc.axes and "chi" in acc.axes:
            a, b = acc.axes.index("phi"), acc.axes.index("chi")
            out["cov_phi_chi"] = (_np(acc.moment((a, b))) * w - mean["phi"] * mean["chi"]) / c
        if "tth" in acc.axes:
            out["strain"] = geometry.strain_from_tth(out["com_tth"])
    out.update(nye_components(out.get("tilt_phi"), out.get("tilt_chi"), geometry.pixel_size_m))
    return {k: (v if k == "mask" else np.asarray(v, np.float32)) for k, v in out.items()}


def nye_components(tilt_phi_deg, tilt_chi_deg, pixel_size_m) -> dict:
    """Nye tensor components from tilt maps (deg, ``(..., rows, cols)``: a map, or a volume of
    layers; either may be None), in 1/um.

    ``nye_xy = d_x beta_zx``, ``nye_yx = -d_y beta_zy``, ``nye_zz = d_x beta_zy - d_y beta_zx`` with
    ``beta_zx``, ``beta_zy`` the tilts in rad and central differences on the grid (x = the last
    axis, y = the one before; ``pixel_size_m`` the step of both, or ``(step_y, step_x)``).
    Integrated over an area (um^2) ``nye_zz`` gives the net Burgers vector along Q (um) of the
    dislocations threading it; integrated across a boundary ``nye_xy`` gives its tilt (rad).
    """
    out = {}
    step_y, step_x = (pixel_size_m, pixel_size_m) if np.ndim(pixel_size_m) == 0 else pixel_size_m
    per_um_y, per_um_x = 1.0 / (step_y * 1e6), 1.0 / (step_x * 1e6)
    bx = None if tilt_phi_deg is None else np.radians(np.asarray(tilt_phi_deg, float))
    by = None if tilt_chi_deg is None else np.radians(np.asarray(tilt_chi_deg, float))

    def d(a, axis):           # NaN along an axis of one pixel: no gradient to take there
        return np.gradient(a, axis=axis) if a.shape[axis] > 1 else np.full(a.shape, np.nan)

    if bx is not None:
        out["nye_xy"] = d(bx, -1) * per_um_x
    if by is not None:
        out["nye_yx"] = -d(by, -2) * per_um_y
    if bx is not None and by is not None:
        out["nye_zz"] = d(by, -1) * per_um_x - d(bx, -2) * per_um_y
    return out


def boundary_map(tilt_phi_deg, tilt_chi_deg, threshold_deg: float) -> np.ndarray:
    """Pixels (or voxels: maps of any dimension) where the misorientation to a face neighbour
    exceeds ``threshold_deg`` (sub-grain and domain boundaries), bool of the maps' shape; both
    sides of a jump are marked."""
    t = np.stack([np.asarray(tilt_phi_deg, float), np.asarray(tilt_chi_deg, float)])
    out = np.zeros(t.shape[1:], bool)
    for axis in range(out.ndim):
        d = np.sqrt((np.diff(t, axis=axis + 1) ** 2).sum(0))
        jump = np.nan_to_num(d, nan=0.0) > threshold_deg
        head = [slice(None)] * out.ndim
        tail = [slice(None)] * out.ndim
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        out[tuple(head)] |= jump
        out[tuple(tail)] |= jump
    return out


def tilt_colour_wheel(tilt_phi_deg, tilt_chi_deg, radius_deg: float | None = None) -> np.ndarray:
    """RGB image ``(rows, cols, 3)`` in [0, 1]: hue = tilt direction, saturation = tilt magnitude
    relative to ``radius_deg`` (default: the 98th percentile of the magnitude), black outside the
    crystal (NaN). The rendering DF-XRM users read mosaicity maps in."""
    import matplotlib.colors as mcolors

    p, c = np.asarray(tilt_phi_deg, float), np.asarray(tilt_chi_deg, float)
    ok = np.isfinite(p) & np.isfinite(c)
    pc, cc = p - np.nanmedian(p), c - np.nanmedian(c)
    mag = np.hypot(pc, cc)
    r = radius_deg or (float(np.percentile(mag[ok], 98)) if ok.any() else 1.0) or 1.0
    hsv = np.zeros(p.shape + (3,))
    hsv[..., 0] = (np.arctan2(cc, pc) / (2 * np.pi)) % 1.0
    hsv[..., 1] = np.clip(mag / r, 0, 1)
    hsv[..., 2] = 1.0
    rgb = mcolors.hsv_to_rgb(np.nan_to_num(hsv))
    rgb[~ok] = 0.0
    return rgb
