"""A realistic simulated crystal foil (physics.md section 5), defined analytically in the lab frame.

The complex crystalline density is ``rho(r) = a(r) exp(i |Q| u_z(r))`` where ``a`` is the
amplitude (1 inside the crystal) and ``u_z`` the displacement along ``Q`` (= ``z``). Every feature
is an analytic function of position, so the simulator can evaluate the sample at any point
(no grid, no interpolation), and the ground truth ``eps_zz = du_z/dz``,
``omega_x = arcsin(du_z/dy)``, ``omega_y = arcsin(du_z/dx)`` comes from the analytic gradient.

Features (all optional, sized by parameters; lengths in metres, sample coordinates = lab
coordinates of the sample at zero translation):

* foil: slab of thickness ``thickness_m`` around the plane through the origin whose normal is
  ``z`` rotated by ``tilt_x_deg`` about x then ``tilt_y_deg`` about y; edges smoothed over
  ``edge_m`` (error function) so the analytic sample is band-limited enough to sample;
* grain boundary: the crystal ends at ``y = grain_boundary_y_m`` (plane inclined by
  ``grain_boundary_tilt_deg`` about z); beyond it the other grain does not diffract;
* implanted layer: ``eps_zz = implanted_strain`` for ``x < implanted_edge_x_m`` (the implanted
  depth seen in the lamella), reduced to ``denuded_strain`` within ``denuded_width_m`` of the
  grain boundary (the partially denuded zone); ``u_z = eps(x, y) z`` so the layer bends where its
  strain changes (tilts at its edges);
* FIB-damaged surface layers: ``fib_top_strain`` over ``fib_top_m`` below the top surface and
  ``fib_bottom_strain`` over ``fib_bottom_m`` above the bottom surface;
* dislocations: straight lines with a phase vortex of winding ``Q.b`` (4 pi, or a dissociated pair
  of 2 pi partials) and a pipe of missing density of radius ``core_radius_m``;
* voids: spheres of zero density.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf


@dataclass(frozen=True)
class Dislocation:
    """Straight dislocation line through ``point_m`` along ``direction`` with phase winding ``winding_rad``."""

    point_m: tuple[float, float, float]
    direction: tuple[float, float, float] = (0.0, 0.0, 1.0)
    winding_rad: float = 4 * math.pi
    core_radius_m: float = 15e-9


@dataclass(frozen=True)
class Void:
    """Spherical void of radius ``radius_m`` centred at ``centre_m``."""

    centre_m: tuple[float, float, float]
    radius_m: float


@dataclass(frozen=True)
class CrystalSample:
    """Analytic crystal foil; see the module docstring for every feature. ``q_bragg_inv_m`` = |Q|."""

    q_bragg_inv_m: float
    thickness_m: float = 0.45e-6
    tilt_x_deg: float = 0.0
    tilt_y_deg: float = 0.0
    edge_m: float = 4e-9
    grain_boundary_y_m: float | None = None
    grain_boundary_tilt_deg: float = 10.0
    implanted_strain: float = 0.0
    implanted_edge_x_m: float = math.inf
    implanted_edge_width_m: float = 30e-9
    denuded_strain: float = 2.07e-4
    denuded_width_m: float = 72e-9
    fib_top_strain: float = 0.0
    fib_top_m: float = 0.0
    fib_bottom_strain: float = 0.0
    fib_bottom_m: float = 0.0
    dislocations: tuple[Dislocation, ...] = field(default_factory=tuple)
    voids: tuple[Void, ...] = field(default_factory=tuple)

    # --- geometry helpers ---------------------------------------------------------------
    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the foil in the lab frame, shape (3,)."""
        ax, ay = math.radians(self.tilt_x_deg), math.radians(self.tilt_y_deg)
        n = np.array([0.0, -math.sin(ax), math.cos(ax)])  # z rotated about x
        return np.array([n[0] * math.cos(ay) + n[2] * math.sin(ay), n[1], -n[0] * math.sin(ay) + n[2] * math.cos(ay)])

    @property
    def _gb_normal(self) -> np.ndarray:
        a = math.radians(self.grain_boundary_tilt_deg)
        return np.array([math.sin(a), math.cos(a), 0.0])

    def slab_coordinate(self, xyz: np.ndarray, xp=np) -> np.ndarray:
        """Signed distance ``zeta`` (m) from the foil's mid-plane, shape ``xyz.shape[:-1]``."""
        return xyz @ xp.asarray(self.normal)

    # --- amplitude ------------------------------------------------------------------------
    def amplitude(self, xyz: np.ndarray, xp=np) -> np.ndarray:
        """Density amplitude in [0, 1] at sample points ``xyz`` (..., 3) in metres (``xp``: NumPy or CuPy)."""
        w = self.edge_m
        zeta = self.slab_coordinate(xyz, xp)
        a = _step(self.thickness_m / 2 - xp.abs(zeta), w)
        if self.grain_boundary_y_m is not None:
            a = a * _step(self.grain_boundary_y_m - xyz @ xp.asarray(self._gb_normal), w)
        for v in self.voids:
            d = xp.sqrt(xp.sum((xyz - xp.asarray(v.centre_m)) ** 2, axis=-1))
            a = a * _step(d - v.radius_m, w)
        for disl in self.dislocations:
            rho_a, rho_b = _line_coords(xyz, disl, xp=xp)
            a = a * _step(xp.hypot(rho_a, rho_b) - disl.core_radius_m, w)
        return a

    # --- displacement and its gradient ---------------------------------------------------
    def displacement(self, xyz: np.ndarray, *, gradient: bool = False, xp=np):
        """``u_z`` (m) at points ``xyz`` (..., 3); with ``gradient`` also ``grad u_z`` (..., 3).

        Dislocation terms are multivalued (``u_z`` jumps by ``b_z`` across a cut); the phase
        ``|Q| u_z`` is continuous modulo 2 pi because the windings are multiples of 2 pi.
        """
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        u = xp.zeros(xyz.shape[:-1])
        g = xp.zeros(xyz.shape) if gradient else None
        if self.implanted_strain:
            eps, deps = self._implanted_strain(x, y, gradient, xp)
            u = u + eps * z
            if gradient:
                g[..., 0] += deps[0] * z
                g[..., 1] += deps[1] * z
                g[..., 2] += eps
        zeta = self.slab_coordinate(xyz, xp)
        n = self.normal
        for strain, depth, sign in ((self.fib_top_strain, self.fib_top_m, 1.0),
                                    (self.fib_bottom_strain, self.fib_bottom_m, -1.0)):
            if strain and depth > 0:
                # layer of eps = strain where sign * zeta > T/2 - depth; u is the integral along the normal
                s = sign * zeta - (self.thickness_m / 2 - depth)
                u = u + sign * strain * _ramp(s, self.edge_m)
                if gradient:
                    g += (strain * _step(s, self.edge_m))[..., None] * xp.asarray(n)
        for disl in self.dislocations:
            rho_a, rho_b, (ea, eb) = _line_coords(xyz, disl, basis=True, xp=xp)
            bz = disl.winding_rad / self.q_bragg_inv_m
            u = u + bz / (2 * math.pi) * xp.arctan2(rho_b, rho_a)
            if gradient:
                r2 = xp.maximum(rho_a ** 2 + rho_b ** 2, (0.1 * self.edge_m) ** 2)
                coef = bz / (2 * math.pi) / r2
                g += (coef * rho_a)[..., None] * xp.asarray(eb) - (coef * rho_b)[..., None] * xp.asarray(ea)
        return (u, g) if gradient else u

    def _implanted_strain(self, x, y, gradient, xp=np):
        w = self.implanted_edge_width_m
        inside = _step(self.implanted_edge_x_m - x, w)
        dinside_dx = -_dstep(self.implanted_edge_x_m - x, w)
        factor, dfactor_dy = xp.ones_like(y), xp.zeros_like(y)
        if self.grain_boundary_y_m is not None and self.denuded_width_m > 0:
            ratio = self.denuded_strain / self.implanted_strain
            s = y - (self.grain_boundary_y_m - self.denuded_width_m)
            factor = 1 - (1 - ratio) * _step(s, self.edge_m)
            dfactor_dy = -(1 - ratio) * _dstep(s, self.edge_m)
        eps = self.implanted_strain * inside * factor
        if not gradient:
            return eps, None
        return eps, (self.implanted_strain * dinside_dx * factor, self.implanted_strain * inside * dfactor_dy)

    # --- what the simulator and the ground truth use ------------------------------------------
    def density(self, xyz: np.ndarray, xp=np) -> np.ndarray:
        """Complex density ``a exp(i |Q| u_z)`` at points ``xyz`` (..., 3), complex128, on ``xp``'s device."""
        return self.amplitude(xyz, xp) * xp.exp(1j * self.q_bragg_inv_m * self.displacement(xyz, xp=xp))

    def ground_truth(self, origin_m, voxel_m: float, shape) -> dict[str, np.ndarray]:
        """Ground truth on an orthogonal lab grid with equal voxels.

        Args:
            origin_m: lab position (x, y, z) of voxel ``[0, 0, 0]`` (m).
            voxel_m: voxel edge (m).
            shape: grid shape ``(nz, ny, nx)`` (axis order z, y, x).

        Returns:
            ``density`` (complex64), ``amplitude``, ``phase`` (rad, wrapped), ``eps_zz``,
            ``omega_x``, ``omega_y`` (rad), float32, all of shape ``(nz, ny, nx)``.
        """
        nz, ny, nx = shape
        ax = [origin_m[i] + voxel_m * np.arange(n) for i, n in enumerate((nx, ny, nz))]
        zz, yy, xx = np.meshgrid(ax[2], ax[1], ax[0], indexing="ij")
        xyz = np.stack([xx, yy, zz], axis=-1)
        amp = self.amplitude(xyz)
        u, grad = self.displacement(xyz, gradient=True)
        phase = np.angle(np.exp(1j * self.q_bragg_inv_m * u))
        clip = lambda v: np.arcsin(np.clip(v, -1, 1))  # noqa: E731
        return {
            "density": (amp * np.exp(1j * phase)).astype(np.complex64),
            "amplitude": amp.astype(np.float32),
            "phase": phase.astype(np.float32),
            "eps_zz": grad[..., 2].astype(np.float32),
            "omega_x": clip(grad[..., 1]).astype(np.float32),
            "omega_y": clip(grad[..., 0]).astype(np.float32),
        }


def _erf(x):
    # scipy's erf is a NumPy ufunc (host arrays, and device arrays that take NumPy ufuncs); CuPy
    # keeps its own in cupyx
    if type(x).__module__.startswith("cupy"):
        from cupyx.scipy.special import erf as cupy_erf

        return cupy_erf(x)
    return erf(x)


def _step(s, w):
    """Smoothed Heaviside of the signed distance ``s`` (m) over width ``w`` (m)."""
    return 0.5 * (1.0 + _erf(s / w))


def _dstep(s, w):
    return np.exp(-(s / w) ** 2) / (w * math.sqrt(math.pi))        # a ufunc: NumPy or CuPy alike


def _ramp(s, w):
    """Integral of :func:`_step`: ``s step(s) + w exp(-s^2/w^2) / (2 sqrt(pi))``."""
    return s * _step(s, w) + w * np.exp(-(s / w) ** 2) / (2 * math.sqrt(math.pi))


def _line_coords(xyz, disl: Dislocation, basis: bool = False, xp=np):
    """Coordinates of points in the plane perpendicular to a dislocation line."""
    t = np.asarray(disl.direction, float)
    t = t / np.linalg.norm(t)
    helper = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    ea = np.cross(t, helper)
    ea /= np.linalg.norm(ea)
    eb = np.cross(t, ea)
    d = xyz - xp.asarray(disl.point_m)
    ra, rb = d @ xp.asarray(ea), d @ xp.asarray(eb)
    return (ra, rb, (ea, eb)) if basis else (ra, rb)
