"""DF-XRM maps against a known ground truth (simulated microscope): numbers a test can bound."""
from __future__ import annotations

import numpy as np

from .maps import boundary_map


def truth_boundaries(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels on either side of a sub-grain boundary (label change between 4-neighbours), inside ``mask``."""
    out = np.zeros(labels.shape, bool)
    dr = labels[1:] != labels[:-1]
    dc = labels[:, 1:] != labels[:, :-1]
    out[1:] |= dr
    out[:-1] |= dr
    out[:, 1:] |= dc
    out[:, :-1] |= dc
    return out & mask


def _dilate(a: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation
    return binary_dilation(a, iterations=r) if r > 0 else a


def burgers_integrals(nye_zz: np.ndarray, positions_px, pixel_size_m: float, radius_px: float = 5.0) -> np.ndarray:
    """``nye_zz`` (1/um) integrated over a disc around each (row, col) position: the net Burgers vector
    along Q inside (m). NaN pixels count as zero."""
    rows, cols = np.indices(nye_zz.shape)
    area_um2 = (pixel_size_m * 1e6) ** 2
    out = []
    for r0, c0 in positions_px:
        disc = (rows + 0.5 - r0) ** 2 + (cols + 0.5 - c0) ** 2 < radius_px ** 2
        out.append(np.nansum(nye_zz[disc]) * area_um2 * 1e-6)
    return np.array(out)


def map_errors(maps: dict, truth: dict, *, pixel_size_m: float, dislocations=(), boundary_threshold_deg=0.02,
               exclude_core_px: float = 3.0) -> dict:
    """Errors of the measured maps against the truth, inside the grain (both masks).

    Args:
        maps: :func:`~bp_plugin.dfxrm.maps.compute_maps` output.
        truth: ``tilt_phi``, ``tilt_chi`` (deg), ``strain``, ``mask``, ``labels`` (sub-grain ids).
        dislocations: ``[(row, col, b_m), ...]``; their cores (where tilts diverge) are left out
            of the tilt errors within ``exclude_core_px``.

    Returns: ``tilt_phi_rms_error_deg``, ``tilt_chi_rms_error_deg``, ``strain_rms_error``,
    ``boundary_recall`` / ``boundary_precision`` (1-pixel tolerance; the true boundaries are the
    sub-grain changes whose misorientation exceeds ``boundary_threshold_deg``), ``burgers_measured_m`` /
    ``burgers_true_m`` / ``burgers_relative_error`` per dislocation, ``pixels`` compared.
    """
    m = maps["mask"].astype(bool) & truth["mask"].astype(bool)
    rows, cols = np.indices(m.shape)
    core = np.zeros_like(m)
    for r0, c0, _ in dislocations:
        core |= (rows + 0.5 - r0) ** 2 + (cols + 0.5 - c0) ** 2 < exclude_core_px ** 2
    ok = m & ~core
    out: dict = {"pixels": int(ok.sum())}
    for name in ("tilt_phi", "tilt_chi"):
        if name in maps:
            e = (maps[name] - truth[name])[ok]
            out[f"{name}_rms_error_deg"] = float(np.sqrt(np.nanmean(e ** 2)))
    if "strain" in maps:
        e = (maps["strain"] - truth["strain"])[ok]
        out["strain_rms_error"] = float(np.sqrt(np.nanmean(e ** 2)))
    if "tilt_phi" in maps and "tilt_chi" in maps and "labels" in truth:
        interior = _dilate(~truth["mask"].astype(bool), 2)       # the grain's own edge is not a boundary
        found = boundary_map(maps["tilt_phi"], maps["tilt_chi"], boundary_threshold_deg) & m & ~interior & ~core
        # boundaries the threshold can see: a sub-grain change whose true misorientation exceeds it
        true_b = (truth_boundaries(truth["labels"], truth["mask"].astype(bool)) & ~interior & ~core
                  & boundary_map(truth["tilt_phi"], truth["tilt_chi"], boundary_threshold_deg))
        if true_b.any():
            out["boundary_recall"] = float((_dilate(found, 1) & true_b).sum() / true_b.sum())
        if found.any():
            out["boundary_precision"] = float((_dilate(true_b, 1) & found).sum() / found.sum())
    if "nye_zz" in maps and len(dislocations):
        b_true = np.array([b for *_, b in dislocations])
        b_meas = burgers_integrals(maps["nye_zz"], [(r, c) for r, c, _ in dislocations], pixel_size_m)
        out["burgers_true_m"] = b_true.tolist()
        out["burgers_measured_m"] = b_meas.tolist()
        out["burgers_relative_error"] = (np.abs(b_meas - b_true) / np.abs(b_true)).tolist()
    return out
