"""Topo-tomography of the simulated 3D grain: full-field projections while the sample turns about Q.

The beams (docs/dfxrm.md, "Projections around Q"), in the layer frame of :mod:`sim_devices.dfxrm_volume`
(x normal to the scattering plane, y along the incident beam, h the beam normal): the incident
beam runs along ``k_in = (0, 1, 0)``, the diffracted one along ``k_out = (0, cos 2theta, sin 2theta)``,
so the scattering vector is ``Q = (0, -sin theta, cos theta)``. Turning the sample by ``omega``
about Q keeps every part of the grain at its Bragg angle, and a near-field camera (no objective:
it takes the whole diffracted fan, whatever a sub-grain's chi tilt or strain) records the
diffracted intensity projected along ``k_out``: the pixel ``(row, col)`` sums the grain along the
ray through the lab point ``u e_x + v e_v`` (``u = (col - c_c) p``, ``v = (row - r_c) p``,
``e_v = (0, -sin 2theta, cos 2theta)``).

What still selects is the rocking angle phi: a voxel diffracts as a Gaussian in phi around its
tilt, and its tilt turns with the sample. The grain's ``(tilt_phi, tilt_chi)`` at ``omega`` are, in
the instrument's axes, ``tilt_phi cos omega - tilt_chi sin omega`` (phi) and ``tilt_phi sin omega +
tilt_chi cos omega`` (chi): a phi rocking at each omega that spans the grain's tilts gives the
integrated intensity, proportional to the crystal's thickness along the ray.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bp_plugin.dfxrm.topotomo import TopoGeometry
from bp_plugin.truth import write_truth_file

from .dfxrm_volume import Grain3D, Grain3DConfig


def rotation_about(axis, angle_rad: float) -> np.ndarray:
    """The 3 x 3 matrix turning vectors by ``angle_rad`` about the unit ``axis`` (right hand)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * kx + (1 - math.cos(angle_rad)) * kx @ kx


class GrainProjector:
    """Projections of a :class:`Grain3D` turned by omega about Q, as a near-field camera sees them.

    Args:
        grain: the grain (its geometry gives 2theta and the pixel; its ``layers.frame_shape`` the image).
        step_m: the ray's sampling step (default: half a pixel).
    """

    def __init__(self, grain: Grain3D, step_m: float | None = None):
        self.grain = grain
        t2 = math.radians(grain.geometry.tth_ref_deg)
        th = t2 / 2
        self.k_out = np.array([0.0, math.cos(t2), math.sin(t2)])
        self.e_v = np.array([0.0, -math.sin(t2), math.cos(t2)])
        self.q_hat = np.array([0.0, -math.sin(th), math.cos(th)])
        p = grain.geometry.pixel_size_m
        self.step_m = float(step_m or p / 2)
        # the rays cross the whole grain, wherever it sits
        reach = (float(np.max(grain.config.semi_axes_m)) + float(np.linalg.norm(grain.centre))) * 1.02
        n = int(math.ceil(2 * reach / self.step_m))
        self._s = (np.arange(n) - (n - 1) / 2) * self.step_m
        self._cache: tuple | None = None

    def _ray_fields(self, omega_deg: float):
        """The crystal's samples along every pixel's ray with the sample at ``omega_deg``: the
        flat pixel index of each sample inside the grain (int32) and its instrument-frame phi tilt
        (deg, float32), rows taken a block at a time (a ray crosses hundreds of samples at 256 x
        256 and more); the last omega's (at the grain's temperature) are kept, since a rocking
        curve reuses them."""
        key = (omega_deg, self.grain.temperature_K)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1:]
        g = self.grain
        p = g.geometry.pixel_size_m
        n_rows, n_cols = g.layers.frame_shape
        om = math.radians(omega_deg)
        # the sample turned by +omega: its own coordinates of a lab point come from turning back
        back = rotation_about(self.q_hat, -om)
        u = (np.arange(n_cols) - (n_cols - 1) / 2) * p
        ray = self._s[:, None] * (back @ self.k_out)                        # (n_s, 3)
        block = max(1, int(4_000_000 // (n_cols * len(self._s))))
        pix, tilt = [], []
        for r0 in range(0, n_rows, block):
            v = (np.arange(r0, min(n_rows, r0 + block)) - (n_rows - 1) / 2) * p
            base = u[None, :, None] * (back @ [1.0, 0, 0]) + v[:, None, None] * (back @ self.e_v)   # (rows, cols, 3)
            r = base[:, :, None, :] + ray                                                          # (rows, cols, n_s, 3)
            inside = g.inside(r[..., 0], r[..., 1], r[..., 2])
            rr, cc, _ = np.nonzero(inside)
            q = r[inside]
            f = g.fields(q[:, 0], q[:, 1], q[:, 2])
            pix.append(((rr + r0) * n_cols + cc).astype(np.int32))
            tilt.append((f["tilt_phi"] * math.cos(om) - f["tilt_chi"] * math.sin(om)).astype(np.float32))
        self._cache = (key, np.concatenate(pix), np.concatenate(tilt))
        return self._cache[1:]

    def expected(self, phi_deg: float, omega_deg: float, count_time_s: float) -> np.ndarray:
        """Expected counts ``(rows, cols)``: the grain's diffraction at rocking angle ``phi_deg``
        summed along each ray (``peak_counts_per_s`` per pixel of crystal thickness), plus the
        background."""
        g, c = self.grain, self.grain.config
        pix, tilt = self._ray_fields(float(omega_deg))
        arg = ((phi_deg - g.geometry.phi0_deg - tilt) / g.sigma_deg("phi")) ** 2
        n_rows, n_cols = g.layers.frame_shape
        thick = np.bincount(pix, weights=np.exp(-0.5 * arg), minlength=n_rows * n_cols).reshape(n_rows, n_cols)
        thick *= self.step_m / g.geometry.pixel_size_m
        return (thick * c.peak_counts_per_s + c.background_counts_per_s) * count_time_s

    def frame(self, phi_deg, omega_deg, count_time_s, rng) -> np.ndarray:
        """uint16 ``(rows, cols)``: Poisson counts (rounded expected counts when ``rng`` is None)."""
        lam = self.expected(phi_deg, omega_deg, count_time_s)
        counts = rng.poisson(lam) if rng is not None else np.rint(lam)
        return np.minimum(counts, 65535).astype(np.uint16)

    def truth_shape(self, w_m, b_m, a_m) -> np.ndarray:
        """The grain's ``inside`` at points given in the reconstruction's frame (bool, the inputs'
        broadcast shape): ``w`` along Q, ``a`` along x, ``b`` along ``q_hat x e_x = (0, cos theta,
        sin theta)``, the diffracted beam's direction in the plane normal to Q at omega = 0."""
        e_b = np.cross(self.q_hat, [1.0, 0, 0])
        w, b, a = np.broadcast_arrays(*(np.asarray(q, float) for q in (w_m, b_m, a_m)))
        r = w[..., None] * self.q_hat + b[..., None] * e_b + a[..., None] * np.array([1.0, 0, 0])
        return self.grain.inside(r[..., 0], r[..., 1], r[..., 2])


def topo_grain(frame_shape, pixel_size_m: float, *, seed: int = 0) -> Grain3DConfig:
    """A 3D grain that stays in the field of view at every omega (its semi-axes 0.45-0.62 of the
    half field, its centre off the rotation axis by a tenth of it), so a projection never
    truncates it; the other fields are :class:`Grain3DConfig`'s defaults."""
    half = min(frame_shape) * pixel_size_m / 2
    return Grain3DConfig(semi_axes_m=(0.55 * half, 0.62 * half, 0.45 * half),
                         centre_m=(0.08 * half, -0.06 * half, 0.04 * half), seed=seed)


def write_topo_truth(projector: GrainProjector, frame_shape, path) -> Path:
    """The grain's shape (uint8 ``(n_w, n, n)``, 1 inside) on the grid a topo-tomography of
    ``frame_shape`` images reconstructs onto (:meth:`TopoGeometry.axes_m`), as a truth file."""
    geo = projector.grain.geometry
    ax = TopoGeometry(tth_deg=geo.tth_ref_deg, pixel_size_m=geo.pixel_size_m, frame_shape=tuple(frame_shape)).axes_m()
    b, a = np.meshgrid(ax["b"], ax["a"], indexing="ij")
    shape = np.stack([projector.truth_shape(w, b, a) for w in ax["w"]]).astype(np.uint8)   # a slice at a time
    return write_truth_file(path, {"shape": shape}, {"dims": "w, b, a (bp_plugin.dfxrm.topotomo)"})
