"""Strain and tilts from the reconstructed density (physics.md section 4, Eqs. 14-15).

``rho`` is mapped from the reconstruction frame ``(r3, r1, r2)`` to an orthogonal lab grid
``(z, y, x)`` with equal voxels (trilinear interpolation of the complex field), then

    eps_zz  = |Q|^-1 dphi/dz,  omega_x = arcsin(|Q|^-1 dphi/dy),  omega_y = arcsin(|Q|^-1 dphi/dx),

with the derivative taken without unwrapping, as central differences:
``dphi/da = arg(rho(r + a) conj(rho(r - a))) / (2 |a|)`` (Eq. 15 uses the one-sided difference;
the central one is its symmetric, second-order version).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import lab_to_recon


def lab_grid(origin_m, voxel_m: float, shape) -> np.ndarray:
    """Lab points ``(x, y, z)`` of a grid with axis order (z, y, x): ``shape + (3,)`` float64."""
    nz, ny, nx = shape
    x = origin_m[0] + voxel_m * np.arange(nx)
    y = origin_m[1] + voxel_m * np.arange(ny)
    z = origin_m[2] + voxel_m * np.arange(nz)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    return np.stack([xx, yy, zz], axis=-1)


def object_to_lab(obj: np.ndarray, layout, origin_m, voxel_m: float, shape) -> np.ndarray:
    """Complex object ``(N3o, N1o, N2o)`` of a :class:`ScanLayout` resampled on a lab grid.

    Args:
        obj: object on the layout's grid (host array), axis order (3, 1, 2).
        layout: the :class:`bp_plugin.recon.layout.ScanLayout` it was reconstructed on.
        origin_m: lab ``(x, y, z)`` of lab voxel ``[0, 0, 0]`` (m), sample frame.
        voxel_m: lab voxel edge (m).
        shape: ``(nz, ny, nx)``.

    Returns:
        complex64 ``(nz, ny, nx)``; 0 outside the object grid.
    """
    pts = lab_grid(origin_m, voxel_m, shape)
    r = lab_to_recon(pts, layout.geometry.theta_bragg_rad)[..., [2, 0, 1]]     # (3, 1, 2) order
    idx = r / np.asarray(layout.voxel_m) - np.asarray(layout.object_origin)
    coords = np.moveaxis(idx, -1, 0)
    re = ndimage.map_coordinates(np.real(obj).astype(np.float32), coords, order=1, cval=0.0)
    im = ndimage.map_coordinates(np.imag(obj).astype(np.float32), coords, order=1, cval=0.0)
    return (re + 1j * im).astype(np.complex64)


def phase_gradient(rho: np.ndarray, voxel_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dphi/dz, dphi/dy, dphi/dx)`` (rad/m) of a complex field on a (z, y, x) grid, unwrapping-free.

    Central differences inside, one-sided on the first and last planes; float32 each.
    """
    out = []
    for axis in range(3):
        g = np.zeros(rho.shape, np.float32)
        n = rho.shape[axis]
        sl = lambda a, b: tuple(slice(a, b) if k == axis else slice(None) for k in range(3))  # noqa: E731
        if n >= 3:
            g[sl(1, n - 1)] = np.angle(rho[sl(2, n)] * np.conj(rho[sl(0, n - 2)])) / (2 * voxel_m)
        if n >= 2:
            g[sl(0, 1)] = np.angle(rho[sl(1, 2)] * np.conj(rho[sl(0, 1)])) / voxel_m
            g[sl(n - 1, n)] = np.angle(rho[sl(n - 1, n)] * np.conj(rho[sl(n - 2, n - 1)])) / voxel_m
        out.append(g)
    return tuple(out)


def strain_maps(rho: np.ndarray, voxel_m: float, q_bragg_inv_m: float) -> dict[str, np.ndarray]:
    """``eps_zz``, ``omega_x``, ``omega_y`` (rad) of a complex density on a lab (z, y, x) grid."""
    dz, dy, dx = phase_gradient(rho, voxel_m)
    return {"eps_zz": dz / q_bragg_inv_m,
            "omega_x": np.arcsin(np.clip(dy / q_bragg_inv_m, -1, 1)).astype(np.float32),
            "omega_y": np.arcsin(np.clip(dx / q_bragg_inv_m, -1, 1)).astype(np.float32)}


def crystal_mask(amplitude: np.ndarray, threshold: float = 0.3, erode_voxels: int = 1) -> np.ndarray:
    """Voxels of the crystal: amplitude above ``threshold`` x its 99th percentile, eroded.

    Erosion by ``erode_voxels`` keeps derivatives away from surfaces, where they mix the
    crystal with empty space.
    """
    a = np.abs(amplitude)
    ref = np.percentile(a[a > 0], 99) if (a > 0).any() else 1.0
    m = a > threshold * ref
    if erode_voxels > 0:
        m = ndimage.binary_erosion(m, iterations=erode_voxels)
    return m


def find_vortices(rho: np.ndarray, axis: int = 0, min_amplitude: float = 0.0) -> list[dict]:
    """Phase vortices (dislocation lines) crossing planes perpendicular to ``axis``.

    For every plaquette of 2 x 2 voxels in each plane, the winding is the sum of the wrapped
    phase differences around it (a multiple of 2 pi). Returns one dict per non-zero plaquette:
    ``plane``, ``row``, ``col`` (the plaquette's lower corner) and ``winding`` (rad).
    """
    r = np.moveaxis(rho, axis, 0)
    ph = np.angle(r)
    d = lambda a, b: np.angle(np.exp(1j * (b - a)))  # noqa: E731
    w = (d(ph[:, :-1, :-1], ph[:, :-1, 1:]) + d(ph[:, :-1, 1:], ph[:, 1:, 1:])
         + d(ph[:, 1:, 1:], ph[:, 1:, :-1]) + d(ph[:, 1:, :-1], ph[:, :-1, :-1]))
    n = np.rint(w / (2 * np.pi)).astype(int)
    if min_amplitude > 0:
        amp = np.abs(r)
        ring = np.minimum.reduce([amp[:, :-1, :-1], amp[:, :-1, 1:], amp[:, 1:, 1:], amp[:, 1:, :-1]])
        n[ring < min_amplitude] = 0
    return [{"plane": int(p), "row": int(i), "col": int(j), "winding": float(2 * np.pi * n[p, i, j])}
            for p, i, j in zip(*np.nonzero(n))]
