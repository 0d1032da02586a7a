"""Reconstruction quality against a known ground truth, after removing the ambiguities.

The ambiguities of Bragg ptychography (physics.md section 3): a global complex factor (which also
absorbs the scale exchanged between probe and object) and a constant phase gradient (a shift of
the reciprocal-space origin, exchanged between probe and object). Two translations add to them:
translating probe and object together leaves every exit wave translated and every intensity
unchanged (only the initial probe pins it, and a refined probe drifts), and, because the probe is
invariant along the beam, so does translating the object alone along ``k_i``. The factor, the
ramp and a 3D (2D for the probe) translation are fitted and removed before any error is computed.
"""
from __future__ import annotations

import numpy as np



def fourier_shift(a: np.ndarray, shift_voxels) -> np.ndarray:
    """``a`` translated by ``shift_voxels`` (one value per axis, fractional allowed), periodic."""
    ph = 0
    for axis, (n, t) in enumerate(zip(a.shape, shift_voxels)):
        f = np.fft.fftfreq(n).reshape([-1 if k == axis else 1 for k in range(a.ndim)])
        ph = ph + f * t
    return np.fft.ifftn(np.fft.fftn(a) * np.exp(-2j * np.pi * ph)).astype(a.dtype)


def remove_ambiguities(rec: np.ndarray, ref: np.ndarray, mask: np.ndarray, shift_search: bool = False,
                       free_direction=None):
    """``rec`` aligned to ``ref`` inside ``mask``.

    With ``shift_search``, first translated by the (sub-voxel) shift that best matches ``ref``:
    the integer peak of the amplitude cross-correlation (or no shift, or, with ``free_direction``,
    the best whole-voxel step along that direction) is refined by Nelder-Mead on the final error.
    ``free_direction`` (one component per axis, in voxels) is a direction along which the
    reconstruction can slide at no cost (the object along ``k_i``, where the probe is invariant):
    the amplitude of a flat foil hardly changes along it, so the cross-correlation does not find
    that shift, and a local search from 0 stops at the first minimum.
    Then the linear phase ramp is removed (the mean,
    over the mask, of the unwrapping-free phase gradient of ``rec * conj(ref)`` along each axis)
    and the least-squares complex factor ``c`` of ``c rec = ref`` applied. 2D or 3D arrays.
    Returns ``(aligned, {"ramp_rad_per_voxel", "factor", "shift_voxels"})``.
    """
    if shift_search:
        from scipy.optimize import minimize

        def err(t):
            al, _ = remove_ambiguities(fourier_shift(rec, t), ref, mask)
            return relative_error(al, ref, mask)

        cc = np.fft.ifftn(np.fft.fftn(np.abs(rec) * mask) * np.conj(np.fft.fftn(np.abs(ref) * mask))).real
        peak = np.array(np.unravel_index(np.argmax(cc), cc.shape), float)
        peak = np.where(peak > np.array(cc.shape) / 2, peak - np.array(cc.shape), peak)
        starts = [np.zeros(rec.ndim), -peak]
        if free_direction is not None:
            u = np.asarray(free_direction, float)
            u = u / np.abs(u).max()                          # one voxel along its longest axis
            reach = int(min(24, np.min([n / 4 / max(abs(c), 1e-9) for n, c in zip(rec.shape, u)])))
            steps = [m * u for m in range(-reach, reach + 1) if m]
            if steps:
                starts.append(min(steps, key=err))
        best = None
        for x0 in starts:
            simplex = np.vstack([x0] + [x0 + 0.5 * np.eye(rec.ndim)[k] for k in range(rec.ndim)])
            res = minimize(err, x0, method="Nelder-Mead",
                           options={"initial_simplex": simplex, "xatol": 0.02, "fatol": 1e-5, "maxiter": 200})
            if best is None or res.fun < best.fun:
                best = res
        aligned, info = remove_ambiguities(fourier_shift(rec, best.x), ref, mask)
        info["shift_voxels"] = [float(v) for v in best.x]
        return aligned, info
    prod = rec * np.conj(ref)
    grads = []
    for axis in range(rec.ndim):
        a = np.take(prod, range(1, rec.shape[axis]), axis=axis)
        b = np.take(prod, range(0, rec.shape[axis] - 1), axis=axis)
        m = np.take(mask, range(1, rec.shape[axis]), axis=axis) & np.take(mask, range(0, rec.shape[axis] - 1), axis=axis)
        s = np.sum((a * np.conj(b))[m])
        grads.append(float(np.angle(s)) if abs(s) > 0 else 0.0)
    idx = np.indices(rec.shape, dtype=np.float64)
    ramp = sum(g * i for g, i in zip(grads, idx))
    aligned = rec * np.exp(-1j * ramp)
    den = np.sum(np.abs(aligned[mask]) ** 2)
    c = np.sum(np.conj(aligned[mask]) * ref[mask]) / den if den > 0 else 1.0
    return (c * aligned).astype(np.complex64), {"ramp_rad_per_voxel": grads, "factor": complex(c),
                                                "shift_voxels": [0.0] * rec.ndim}


def relative_error(rec: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """``||rec - ref|| / ||ref||`` over ``mask``."""
    den = np.linalg.norm(ref[mask])
    return float(np.linalg.norm((rec - ref)[mask]) / den) if den > 0 else float("nan")


def fwhm_1d(profile: np.ndarray, step: float) -> float:
    """Full width at half maximum of the central lobe of an intensity profile (linear interpolation)."""
    p = np.asarray(profile, float)
    i = int(np.argmax(p))
    half = p[i] / 2
    lo = i
    while lo > 0 and p[lo - 1] > half:
        lo -= 1
    hi = i
    while hi < len(p) - 1 and p[hi + 1] > half:
        hi += 1
    left = lo - 1 + (half - p[lo - 1]) / (p[lo] - p[lo - 1]) if lo > 0 else float(lo)
    right = hi + (p[hi] - half) / (p[hi] - p[hi + 1]) if hi < len(p) - 1 else float(hi)
    return float((right - left) * step)


def probe_quality(probe2d: np.ndarray, p1_m: np.ndarray, r2_m: np.ndarray, gt_probe: np.ndarray,
                  gt_p1_m: np.ndarray, gt_p2_m: np.ndarray, coverage: np.ndarray | None = None) -> dict:
    """Probe error and central-lobe FWHM along p1 and p2 of the reconstruction and of the truth.

    Both errors are relative, after ambiguities, where the true amplitude exceeds 1 % of its peak:

    * ``probe_error``: weighted by ``coverage`` (:func:`bp_plugin.recon.probe_ops.crystal_coverage`
      of the true object, ``(np1, N2)``), i.e. the error of the field the probe puts on the crystal
      over the scan. A part of the beam that never meets diffracting crystal (beyond a grain
      boundary, past the foil's edge, outside every position's box) leaves no trace in the data:
      no reconstruction can know it, so it weighs nothing. Without ``coverage``, the same as:
    * ``probe_error_section``: the whole section, unweighted (the beam as a knife-edge scan
      would see it, including what the data cannot constrain).
    """
    from scipy.interpolate import RegularGridInterpolator

    # the section's second axis is r2 = -p2: flip the truth onto (p1, r2)
    re = RegularGridInterpolator((gt_p1_m, -gt_p2_m[::-1]), np.real(gt_probe)[:, ::-1], bounds_error=False, fill_value=0)
    im = RegularGridInterpolator((gt_p1_m, -gt_p2_m[::-1]), np.imag(gt_probe)[:, ::-1], bounds_error=False, fill_value=0)
    pts = np.stack(np.meshgrid(p1_m, r2_m, indexing="ij"), -1)
    truth = (re(pts) + 1j * im(pts)).astype(np.complex64)
    region = np.abs(truth) > 0.01 * np.abs(truth).max()
    aligned, _ = remove_ambiguities(probe2d, truth, region, shift_search=True)
    section = relative_error(aligned, truth, region)
    error = section
    if coverage is not None:
        w = np.where(region, np.asarray(coverage, np.float64), 0.0)
        lit = w > 0.01 * w.max() if w.max() > 0 else region
        aligned_w, _ = remove_ambiguities(probe2d, truth, lit, shift_search=True)
        den = np.sum(w * np.abs(truth) ** 2)
        error = float(np.sqrt(np.sum(w * np.abs(aligned_w - truth) ** 2) / den)) if den > 0 else float("nan")
    dp1, dr2 = p1_m[1] - p1_m[0], r2_m[1] - r2_m[0]

    def widths(p):
        i = np.abs(p) ** 2
        k1, k2 = np.unravel_index(np.argmax(i), i.shape)
        return fwhm_1d(i[:, k2], dp1), fwhm_1d(i[k1, :], dr2)

    (w1, w2), (t1, t2) = widths(aligned), widths(truth)
    return {"probe_error": error, "probe_error_section": section, "fwhm_m": [w1, w2], "fwhm_true_m": [t1, t2],
            "fwhm_rel_error": [abs(w1 - t1) / t1, abs(w2 - t2) / t2], "aligned": aligned, "truth": truth}


def ground_truth_at_resolution(gt_density: np.ndarray, origin_m, voxel_m: float, layout, sub: int = 3) -> np.ndarray:
    """The ground-truth density averaged over the voxels of a reconstruction grid, on that grid.

    A reconstruction voxel holds the average of the sample over its volume, so this is what a
    perfect reconstruction at that resolution would hold: each voxel is the mean of ``sub**3``
    trilinear samples of the (finer) ground-truth lab grid inside it. Returns complex64 of
    ``layout.object_shape``.
    """
    from scipy import ndimage

    from .geometry import recon_basis

    e = recon_basis(layout.geometry.theta_bragg_rad)
    base = layout.object_lab_points()
    acc = np.zeros(layout.object_shape, np.complex128)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    re, im = np.real(gt_density).astype(np.float32), np.imag(gt_density).astype(np.float32)
    for a in offs:
        for b in offs:
            for c in offs:
                pts = base + a * layout.voxel_m[0] * e[2] + b * layout.voxel_m[1] * e[0] + c * layout.voxel_m[2] * e[1]
                idx = (pts - np.asarray(origin_m)) / voxel_m                 # (x, y, z) fractional
                coords = np.moveaxis(idx[..., ::-1], -1, 0)                   # (z, y, x)
                acc += ndimage.map_coordinates(re, coords, order=1) + 1j * ndimage.map_coordinates(im, coords, order=1)
    return (acc / sub ** 3).astype(np.complex64)


def fourier_shell_correlation(a: np.ndarray, b: np.ndarray, voxel_m, n_shells: int | None = None):
    """Fourier shell correlation of two complex maps on the same grid (2D or 3D).

    ``voxel_m``: one spacing or one per axis (m); shells of ``|f|`` run to the lowest Nyquist
    frequency. Returns ``(shell-centre spatial frequencies (1/m), FSC per shell)`` with
    ``FSC = Re sum A B* / sqrt(sum |A|^2 sum |B|^2)``.
    """
    spacing = np.broadcast_to(np.asarray(voxel_m, float), (a.ndim,))
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    freqs = np.meshgrid(*(np.fft.fftfreq(n, d) for n, d in zip(a.shape, spacing)), indexing="ij")
    f = np.sqrt(sum(g ** 2 for g in freqs))
    fmax = 0.5 / spacing.max()
    n = n_shells or max(4, min(a.shape) // 2)
    edges = np.linspace(0, fmax, n + 1)
    idx = np.digitize(f.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < n)
    num = np.bincount(idx[ok], (fa * np.conj(fb)).ravel()[ok].real, n)
    pa = np.bincount(idx[ok], (np.abs(fa) ** 2).ravel()[ok], n)
    pb = np.bincount(idx[ok], (np.abs(fb) ** 2).ravel()[ok], n)
    return (edges[:-1] + edges[1:]) / 2, num / np.sqrt(np.maximum(pa * pb, 1e-30))


def fsc_resolution(freq: np.ndarray, fsc: np.ndarray, threshold: float = 1 / 7) -> float:
    """Half-period resolution (m), ``1 / (2 f)`` at the first frequency where the FSC falls below
    ``threshold`` (linear interpolation between shells); the last shell's if it never does (the
    grid, not the data, then limits the resolution)."""
    below = np.nonzero(fsc < threshold)[0]
    below = below[below > 0]
    if not below.size:
        return float(1 / (2 * freq[-1]))
    k = int(below[0])
    f0, f1, c0, c1 = freq[k - 1], freq[k], fsc[k - 1], fsc[k]
    fcut = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
    return float(1 / (2 * fcut))


def soft_mask(mask: np.ndarray, sigma_voxels: float = 1.5) -> np.ndarray:
    """A binary mask smoothed by a Gaussian (float32): no hard edge for an FSC to correlate."""
    from scipy import ndimage

    return ndimage.gaussian_filter(mask.astype(np.float32), sigma_voxels)


def split_counts(frames: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two independent half-dose scans from one (binomial thinning of every count)."""
    rng = np.random.default_rng(seed)
    half = rng.binomial(np.asarray(frames, np.int64), 0.5)
    return half.astype(frames.dtype), (frames - half).astype(frames.dtype)
