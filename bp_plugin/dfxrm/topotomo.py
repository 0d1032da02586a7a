"""Topo-tomography: a grain's shape from integrated-intensity projections taken while it turns about Q.

Turning the sample by ``omega`` about the scattering vector Q keeps it in Bragg; the camera, along
the diffracted beam, records at each omega a projection of the grain's diffracting volume (summed
over a rocking curve, background removed: :func:`integrated_projections`). The diffracted beam is
at ``90 deg - theta`` from Q, not normal to it: in the frame that turns with the sample (``w`` along
Q; ``a`` along the image columns, normal to the scattering plane; ``b = Q x a`` completing it, the
diffracted beam's direction in the plane normal to Q at omega = 0), a point ``(w, b, a)`` at
``omega = 0`` lands on

    column ``c_c + a / p``,    row ``r_c + (w cos theta - b sin theta) / p``,

and at omega on the same formula with ``(a, b)`` turned by ``omega`` about w (``p``: the image pixel).

**Reconstruction.** Each slice ``w`` is reconstructed from the image rows at ``r_c + w cos theta / p``
as a parallel-beam sinogram over omega, by filtered back-projection (scikit-image's ``iradon``,
ramp filter); the shape is the volume above its Otsu threshold (scikit-image's ``threshold_otsu``).
The ``-b sin theta`` term is what this leaves out: a point at depth ``b`` appears ``b tan theta``
away from its slice, with the sign of b, which turns over a full omega turn, so a 360 deg series
blurs the shape along Q by up to ``R tan theta`` for a grain of radius R rather than shearing it
(the measured overlap with the simulated truth is in docs/dfxrm.md).

Why scikit-image: tomopy has no wheel on PyPI; the ASTRA toolbox installs (2.5.0) but its 3D
vector geometries, which would take the tilted rays exactly, run only on CUDA, and its CPU
algorithms are 2D like scikit-image's, which is pure Python over NumPy/SciPy and installs wherever
the project does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import ImagingGeometry


@dataclass(frozen=True)
class TopoGeometry(ImagingGeometry):
    """The imaging geometry of a topo-tomography series (``tth_deg``, ``pixel_size_m``: the
    volume's voxel is this cube, ``frame_shape``: see :class:`~bp_plugin.dfxrm.geometry.ImagingGeometry`);
    theta is the angle between the diffracted beam and the plane normal to Q."""

    what = "topo-tomography"

    @property
    def theta_rad(self) -> float:
        return math.radians(self.tth_deg / 2)

    @property
    def n_side(self) -> int:
        """Voxels across a slice: the image's width (the rotation axis at its centre)."""
        return int(self.frame_shape[1])

    def axes_m(self) -> dict:
        """The volume's voxel centres (m): ``w`` (slices along Q, covering the image's rows), ``b``
        and ``a`` (the slice's rows and columns: scikit-image's grid, centre at index n // 2)."""
        p, n = self.pixel_size_m, self.n_side
        half_w = (self.frame_shape[0] - 1) / 2 * p / math.cos(self.theta_rad)
        n_w = 2 * int(math.floor(half_w / p)) + 1
        side = (np.arange(n) - n // 2) * p
        return {"w": (np.arange(n_w) - n_w // 2) * p, "b": side.copy(), "a": side}

    def sinogram(self, projections, w_m: float) -> np.ndarray:
        """The slice at ``w_m``'s sinogram ``(n_side, n_omega)`` from projections ``(n_omega, rows,
        cols)``: the image row ``r_c + w cos theta / p`` (linear between rows), its columns
        resampled so the rotation axis (the image's centre column) falls on index ``n // 2``."""
        from scipy.ndimage import map_coordinates

        proj = np.asarray(projections, float)
        rows, cols = self.frame_shape
        r = (rows - 1) / 2 + w_m * math.cos(self.theta_rad) / self.pixel_size_m
        c = (cols - 1) / 2 + np.arange(self.n_side) - self.n_side // 2
        rr, cc = np.broadcast_arrays(r, c)
        return np.stack([map_coordinates(p, [rr, cc], order=1, mode="constant") for p in proj], 1)


#: the fewest projections a shape is reconstructed from
MIN_PROJECTIONS = 8


def coverage_problem(omegas_deg) -> str | None:
    """Why these omegas (deg) cannot give a shape (None when they can): fewer than
    :data:`MIN_PROJECTIONS`, or less than 180 deg covered (their span plus one median step). The
    plan, the stream's start check and the reconstruction all ask this."""
    om = np.asarray(omegas_deg, float).ravel()
    if om.size < MIN_PROJECTIONS or not np.all(np.isfinite(om)):
        return f"{om.size} projections: a shape needs {MIN_PROJECTIONS} or more, at finite omegas"
    srt = np.sort(om)
    covered = float(srt[-1] - srt[0] + np.median(np.diff(srt)))
    if covered < 180 - 1e-6:
        return f"the omegas cover {covered:.0f} deg (span plus one step): a shape needs 180 deg, a full turn is best"
    return None


def integrated_projections(sums, counts, background: float) -> np.ndarray:
    """Integrated-intensity projections ``(n_omega, rows, cols)`` float32 from the sum of each
    omega's rocking frames ``sums`` (same shape, counts) and how many frames each holds
    (``counts`` ``(n_omega,)``): the background of every frame removed, never negative. An omega
    with no frame is NaN."""
    s = np.asarray(sums, float)
    n = np.asarray(counts, float).reshape(-1, 1, 1)
    out = np.maximum(s - n * float(background), 0.0)
    return np.where(n > 0, out, np.nan).astype(np.float32)


def reconstruct_shape(projections, omegas_deg, geometry: TopoGeometry, *, progress: bool = False) -> dict:
    """The grain's diffracting volume and shape from integrated projections.

    Args:
        projections: ``(n_omega, rows, cols)`` (:func:`integrated_projections`; NaN rows, omegas
            never measured, are left out).
        omegas_deg: the sample's rotation about Q of each projection (deg); a full turn is best
            (see the module docstring), 180 deg is the least.
        geometry: :class:`TopoGeometry`.

    Returns: ``volume`` ``(n_w, n, n)`` float32 (``(w, b, a)``: counts per voxel and frame sum,
    the filtered back-projection), ``shape`` uint8 (1 inside the grain), ``threshold``,
    ``grain_volume_m3``, ``axes_m`` (``w``, ``b``, ``a``), ``voxel_m``, ``n_projections``.

    Raises:
        ValueError: the measured projections' omegas cannot give a shape (:func:`coverage_problem`).
    """
    from skimage.filters import threshold_otsu
    from skimage.transform import iradon
    from tqdm import tqdm

    proj = np.asarray(projections, float)
    om = np.asarray(omegas_deg, float).ravel()
    if proj.ndim != 3 or proj.shape[0] != om.size or proj.shape[1:] != tuple(geometry.frame_shape):
        raise ValueError(f"projections of shape {proj.shape} for {om.size} omegas; expected "
                         f"({om.size}, {geometry.frame_shape[0]}, {geometry.frame_shape[1]})")
    ok = np.isfinite(proj).all(axis=(1, 2))
    proj, om = proj[ok], om[ok]
    why = coverage_problem(om)
    if why:
        raise ValueError(why)
    ax = geometry.axes_m()
    n = geometry.n_side
    vol = np.zeros((ax["w"].size, n, n), np.float32)
    for j, w in enumerate(tqdm(ax["w"], desc="slices", unit="slice", disable=not progress)):
        vol[j] = iradon(geometry.sinogram(proj, float(w)), theta=om, output_size=n, filter_name="ramp",
                        circle=True)
    thr = float(threshold_otsu(vol))
    shape = (vol > thr).astype(np.uint8)
    p = geometry.pixel_size_m
    return {"volume": vol, "shape": shape, "threshold": thr, "grain_volume_m3": float(shape.sum()) * p ** 3,
            "axes_m": ax, "voxel_m": (p, p, p), "n_projections": int(om.size)}


def shape_overlap(found, truth) -> dict:
    """``dice`` (2 |A and B| / (|A| + |B|)) and ``volume_error`` ((|A| - |B|) / |B|) of a found
    shape against the true one (bool arrays of one shape)."""
    a, b = np.asarray(found, bool), np.asarray(truth, bool)
    nb = int(b.sum())
    return {"dice": 2.0 * float((a & b).sum()) / max(int(a.sum()) + nb, 1),
            "volume_error": (float(a.sum()) - nb) / max(nb, 1)}
