"""A 3D DF-XRM grain imaged layer by layer with a line beam: continuous fields, the layer geometry.

Coordinates (docs/dfxrm.md, "Layers"): ``h`` is the beam-normal axis the sample's ``z`` motor
steps (the layer normal); as in the 2D maps, ``x`` runs along the image columns (horizontal, normal
to the scattering plane) and ``y`` along the rows (along the incident beam, inside the layer). The
diffracted beam leaves at ``2theta`` in the (y, h) plane and the objective images along it
(:mod:`bp_plugin.dfxrm.layers`): a point ``(x, y, h)`` lands on image column ``c_c + x / p`` and
row ``r_c + (h cos 2theta - y sin 2theta) / p`` (``p`` the pixel in the sample plane). The line beam is Gaussian in ``h`` (sigma ``beam_sigma_m``): a pixel integrates its
ray over the illuminated height (``BEAM_NODES`` Gauss-Hermite points).

The grain (all fields defined at any point, so frames need no interpolation):

- an ellipsoid (semi-axes ``semi_axes_m`` along x, y, h);
- sub-grains: 3D Voronoi cells, each with its own tilt (phi, chi) and an axial-strain offset, on
  a strain gradient along x;
- an inclined domain wall in one sub-grain: the plane ``y = y_w + h tan(wall_angle)``, across
  which the chi tilt changes by ``domain_tilt_deg`` (inclined in the (y, h) plane, where each
  layer's image shifts: a volume stacked without undoing the shift gets its angle wrong);
- screw dislocation lines crossing the layers, inclined (``core(h) = core(0) + h (tx, ty)``), each
  tilting the lattice around its core in every layer as a screw along Q does
  (``phi += -b dy' / 2 pi r^2``, ``chi += b dx' / 2 pi r^2`` in the layer, core radius one
  pixel: the 2D sample's screws, :mod:`sim_devices.dfxrm_sample`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bp_plugin.dfxrm.geometry import DfxrmGeometry
from bp_plugin.dfxrm.layers import LayerGeometry

from .dfxrm_sample import DfxrmSampleConfig

#: Gauss-Hermite nodes over the line beam's height (exact for a field linear or quadratic in h)
BEAM_NODES = 5


@dataclass(frozen=True)
class Grain3DConfig:
    """The simulated 3D grain. Lengths in m, angles in deg.

    Attributes:
        semi_axes_m: the ellipsoid's semi-axes along (x, y, h).
        n_subgrains: Voronoi cells.
        subgrain_tilt_deg: typical tilt difference between neighbouring sub-grains.
        domain_tilt_deg: chi tilt change across the domain wall (0: no wall).
        wall_angle_deg: the wall's inclination from the layer normal, in the (y, h) plane.
        dislocations: ``[(x0_m, y0_m, tx, ty, b_m), ...]``: core at height 0 and its slope per m of h.
        strain_gradient: axial strain change across 2 semi-axes in x.
        subgrain_strain: standard deviation of the per-sub-grain strain offset.
        mosaic_sigma_deg, resolution_deg, peak_counts_per_s, background_counts_per_s: as the 2D
            sample's (:class:`sim_devices.dfxrm_sample.DfxrmSampleConfig`).
        beam_sigma_m: the line beam's height (Gaussian sigma).
        centre_m: the ellipsoid's centre (x, y, h): where the grain sits from the axes the stage
            turns and steps about (its sub-grains move with it; dislocation cores are absolute).
        boundary_drift_m_per_K: how far each sub-grain's Voronoi seed moves per kelvin from
            ``reference_temperature_K`` (each along its own random direction), so the sub-grain
            boundaries migrate as the sample environment heats or cools (0: they stay).
        reference_temperature_K: the temperature of the layout as drawn.
        seed: seed of the layout.
    """

    semi_axes_m: tuple[float, float, float] = (4.0e-6, 6.0e-6, 3.0e-6)
    n_subgrains: int = 4
    subgrain_tilt_deg: float = 0.05
    domain_tilt_deg: float = 0.02
    wall_angle_deg: float = 25.0
    dislocations: tuple = ((1.0e-6, -1.2e-6, -0.1, 0.15, 2.86e-10),)
    # the grain's strain and the microscope's response: the 2D sample's defaults, defined once there
    strain_gradient: float = DfxrmSampleConfig.strain_gradient
    subgrain_strain: float = DfxrmSampleConfig.subgrain_strain
    mosaic_sigma_deg: float = DfxrmSampleConfig.mosaic_sigma_deg
    resolution_deg: dict = field(default_factory=lambda: dict(DfxrmSampleConfig().resolution_deg))
    peak_counts_per_s: float = DfxrmSampleConfig.peak_counts_per_s
    background_counts_per_s: float = DfxrmSampleConfig.background_counts_per_s
    beam_sigma_m: float = 0.1e-6
    centre_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    boundary_drift_m_per_K: float = 0.0
    reference_temperature_K: float = 300.0
    seed: int = 0


class Grain3D:
    """The grain of ``cfg`` (fields at any point) and the frames of its layers.

    Args:
        cfg: the grain.
        geometry: the microscope's :class:`DfxrmGeometry` (2theta, pixel).
        frame_shape: the image (rows, cols).
    """

    def __init__(self, cfg: Grain3DConfig, geometry: DfxrmGeometry, frame_shape: tuple[int, int]):
        self.config, self.geometry = cfg, geometry
        self.layers = LayerGeometry(tth_deg=geometry.tth_ref_deg, pixel_size_m=geometry.pixel_size_m,
                                    frame_shape=tuple(frame_shape))
        rng = np.random.default_rng(cfg.seed)
        n = max(1, int(cfg.n_subgrains))
        a = np.asarray(cfg.semi_axes_m, float)
        self.centre = np.asarray(cfg.centre_m, float)
        self.seeds = rng.uniform(-0.6, 0.6, (n, 3)) * a + self.centre        # (x, y, h) of each cell
        ang = rng.uniform(0, 2 * np.pi, n)
        rad = cfg.subgrain_tilt_deg * np.sqrt(rng.uniform(0.3, 1.0, n)) if n > 1 else np.zeros(1)
        self.sg_phi = rad * np.cos(ang) - (rad * np.cos(ang)).mean()
        self.sg_chi = rad * np.sin(ang) - (rad * np.sin(ang)).mean()
        self.sg_strain = rng.normal(0, cfg.subgrain_strain, n)
        # the wall lives in the cell nearest the grain's centre (the largest, most often)
        self.wall_cell = int(np.argmin(np.linalg.norm((self.seeds - self.centre) / a, axis=1)))
        self.wall_y0 = float(self.seeds[self.wall_cell, 1])
        d = rng.normal(size=(n, 3))                 # drawn last: the layout of a given seed is unchanged
        self._seeds0 = self.seeds.copy()
        self._drift = d / np.linalg.norm(d, axis=1, keepdims=True) * cfg.boundary_drift_m_per_K
        self.temperature_K = cfg.reference_temperature_K

    @property
    def temperature_K(self) -> float:
        """The sample's temperature (K): the sub-grain boundaries sit where it puts them."""
        return self._temperature_K

    @temperature_K.setter
    def temperature_K(self, value: float) -> None:
        self._temperature_K = float(value)
        self.seeds = self._seeds0 + (self._temperature_K - self.config.reference_temperature_K) * self._drift

    # --- fields at points (arrays of any one shape) ------------------------------------------------
    def labels(self, x, y, h) -> np.ndarray:
        d2 = sum((np.asarray(q)[..., None] - self.seeds[:, i]) ** 2 for i, q in enumerate((x, y, h)))
        return np.argmin(d2, axis=-1)

    def inside(self, x, y, h) -> np.ndarray:
        a, c = self.config.semi_axes_m, self.centre
        return (((np.asarray(x) - c[0]) / a[0]) ** 2 + ((np.asarray(y) - c[1]) / a[1]) ** 2
                + ((np.asarray(h) - c[2]) / a[2]) ** 2 < 1)

    def wall_side(self, y, h) -> np.ndarray:
        """+1 / -1 either side of the domain wall plane."""
        return np.where(np.asarray(y) - self.wall_y0 - np.asarray(h) * math.tan(math.radians(
            self.config.wall_angle_deg)) >= 0, 1.0, -1.0)

    def fields(self, x, y, h) -> dict:
        """``inside``, ``labels``, ``tilt_phi``, ``tilt_chi`` (deg), ``strain`` at the points."""
        cfg = self.config
        x, y, h = (np.asarray(q, float) for q in np.broadcast_arrays(x, y, h))
        lab = self.labels(x, y, h)
        phi = self.sg_phi[lab].astype(float)
        chi = self.sg_chi[lab].astype(float)
        if cfg.domain_tilt_deg:
            chi = chi + np.where(lab == self.wall_cell, 0.5 * cfg.domain_tilt_deg * self.wall_side(y, h), 0.0)
        p = self.geometry.pixel_size_m
        for x0, y0, tx, ty, b in cfg.dislocations:
            dx, dy = x - (x0 + h * tx), y - (y0 + h * ty)
            r2 = dx * dx + dy * dy + p * p
            phi = phi + np.degrees(-b * dy / (2 * np.pi * r2))
            chi = chi + np.degrees(b * dx / (2 * np.pi * r2))
        strain = cfg.strain_gradient * (x - self.centre[0]) / (2 * cfg.semi_axes_m[0]) + self.sg_strain[lab]
        return {"inside": self.inside(x, y, h), "labels": lab, "tilt_phi": phi, "tilt_chi": chi, "strain": strain}

    def sigma_deg(self, axis: str) -> float:
        res = float(self.config.resolution_deg.get(axis, 0.0))
        return math.hypot(res, self.config.mosaic_sigma_deg if axis in ("phi", "chi") else 0.0)

    # --- frames ------------------------------------------------------------------------------------
    def _beam_points(self, z_m: float):
        """The illuminated points of every pixel's ray with the beam centred at height ``z_m``:
        ``(x, y, h)`` each ``(BEAM_NODES, rows, cols)`` and the nodes' weights ``(BEAM_NODES,)``."""
        t, w = np.polynomial.hermite_e.hermegauss(BEAM_NODES)
        w = w / w.sum()
        h = (z_m + t * self.config.beam_sigma_m)[:, None, None]
        # each pixel's ray, from the beams' directions (not from the stacking's transform, which
        # this simulator tests): in the (y, h) plane the diffracted beam runs along
        # k = (cos 2theta, sin 2theta); image rows count along e_v = (-sin 2theta, cos 2theta), the
        # object plane's axis in the scattering plane; columns along x
        t2 = math.radians(self.geometry.tth_ref_deg)
        k, e_v = np.array([math.cos(t2), math.sin(t2)]), np.array([-math.sin(t2), math.cos(t2)])
        rows, cols = np.indices(self.layers.frame_shape, dtype=float)
        p = self.geometry.pixel_size_m
        v = (rows - (rows.shape[0] - 1) / 2) * p                 # the pixel's point in the object plane
        s = (h - v * e_v[1]) / k[1]                              # along the ray, up to the height h
        y = v * e_v[0] + s * k[0]
        x = np.broadcast_to((cols - (cols.shape[1] - 1) / 2) * p, y.shape)
        return x, y, np.broadcast_to(h, y.shape), w

    def expected(self, phi_deg: float, chi_deg: float, tth_deg: float, z_m: float, count_time_s: float) -> np.ndarray:
        """Expected counts ``(rows, cols)`` with the motors at (phi, chi, 2theta) and the beam at ``z_m``."""
        g, c = self.geometry, self.config
        x, y, h, w = self._beam_points(z_m)
        f = self.fields(x, y, h)
        arg = (((phi_deg - g.phi0_deg - f["tilt_phi"]) / self.sigma_deg("phi")) ** 2
               + ((chi_deg - g.chi0_deg - f["tilt_chi"]) / self.sigma_deg("chi")) ** 2
               + ((tth_deg - g.tth_from_strain(f["strain"])) / self.sigma_deg("tth")) ** 2)
        img = np.einsum("k,kij->ij", w, np.exp(-0.5 * arg) * f["inside"]) * (c.peak_counts_per_s * count_time_s)
        return img + c.background_counts_per_s * count_time_s

    def frame(self, phi_deg, chi_deg, tth_deg, z_m, count_time_s, rng) -> np.ndarray:
        """uint16 ``(rows, cols)``: Poisson counts (rounded expected counts when ``rng`` is None)."""
        lam = self.expected(phi_deg, chi_deg, tth_deg, z_m, count_time_s)
        counts = rng.poisson(lam) if rng is not None else np.rint(lam)
        return np.minimum(counts, 65535).astype(np.uint16)

    def background_counts(self, count_time_s: float) -> float:
        return self.config.background_counts_per_s * count_time_s

    # --- truth -------------------------------------------------------------------------------------
    def truth_volume(self, heights_m) -> dict:
        """The fields at the voxel centres of :meth:`LayerGeometry.volume_grid` for ``heights_m``,
        each ``(layers, ny, cols)``, and ``clean``: voxels whose measurement footprint (the ray over
        the beam's height, the neighbouring rows the stacking interpolates, the pixel's width)
        holds one sub-grain and one domain, away from dislocation cores (3 pixels): where a
        measurement can match the field at the voxel centre."""
        h, y, x = self.layers.volume_grid(heights_m)
        f = self.fields(x, y, h)
        clean = f["inside"].copy()
        t, _ = np.polynomial.hermite_e.hermegauss(BEAM_NODES)
        vy, vx = self.layers.voxel_m
        for dt in t:                                    # the ray's points over the beam height,
            for dy, dx in ((0, 0), (-vy, 0), (vy, 0), (0, -vx / 2), (0, vx / 2)):   # the rows stacking
                hh = h + dt * self.config.beam_sigma_m                            # mixes, the pixel
                yy = y + dy + dt * self.config.beam_sigma_m / math.tan(math.radians(self.layers.tth_deg))
                g = self.fields(x + dx, yy, hh)
                clean &= (g["labels"] == f["labels"]) & g["inside"]
                clean &= ~((f["labels"] == self.wall_cell) & (self.wall_side(yy, hh) != self.wall_side(y, h)))
        p = self.geometry.pixel_size_m
        for x0, y0, tx, ty, _ in self.config.dislocations:
            clean &= (x - x0 - h * tx) ** 2 + (y - y0 - h * ty) ** 2 > (3 * p) ** 2
        nan = np.where(f["inside"], 1.0, np.nan)
        return {"tilt_phi": f["tilt_phi"] * nan, "tilt_chi": f["tilt_chi"] * nan, "strain": f["strain"] * nan,
                "inside": f["inside"], "labels": f["labels"], "clean": clean}
