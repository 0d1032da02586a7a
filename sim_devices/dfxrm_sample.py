"""A DF-XRM sample with known tilt and strain fields, and the images a dark-field microscope records of it.

The sample is one grain (an ellipse in the field of view) of a cubic metal (default Al (111)):

- **sub-grains**: Voronoi cells, each with its own tilt (phi, chi) drawn so that neighbouring cells
  differ by about ``subgrain_tilt_deg`` (0.05 deg, the annealed-aluminium case of the seed);
- **ferroelastic-like domains**: in one sub-grain, stripes whose chi tilt alternates by
  ``domain_tilt_deg`` (0.01 deg);
- **dislocations**: straight screw dislocations threading the imaged layer along Q (Burgers vector
  ``+-b`` along z), whose displacement ``u_z = b atan2(y, x) / 2 pi`` tilts the lattice around
  them (``beta_zx = -b y / 2 pi r^2``, ``beta_zy = b x / 2 pi r^2``, core radius one pixel);
- **axial strain**: a smooth gradient plus an offset per sub-grain.

Every pixel diffracts as a Gaussian in phi, chi and 2theta centred on its local tilt and strain,
whose width is the intrinsic mosaic spread convolved with the instrument's resolution; images are
Poisson counts on a flat background (uint16, saturating). The ground-truth maps (what the moments
should recover) are the fields at the pixel centres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bp_plugin.dfxrm.geometry import DfxrmGeometry


@dataclass
class DfxrmSampleConfig:
    """The simulated grain and microscope response.

    Attributes:
        shape: image (rows, cols).
        n_subgrains: Voronoi cells (1: a single crystal, no boundaries).
        subgrain_tilt_deg: typical tilt difference between neighbouring sub-grains (deg).
        domain_tilt_deg: chi tilt alternation of the domain stripes (deg; 0: none).
        domain_period_px: stripe period (pixels).
        dislocations: ``[(row, col, b_m), ...]`` screw dislocations (b along Q, signed, m); None: a
            default set of up to four in the largest sub-grain (fewer where the grain is small).
        burgers_m: |b| of the default dislocations (Al: a / sqrt(2) = 0.286 nm).
        strain_gradient: axial strain change across the field of view (1).
        subgrain_strain: standard deviation of the per-sub-grain strain offset (1).
        mosaic_sigma_deg: intrinsic mosaic spread (Gaussian sigma, deg) in phi and chi.
        resolution_deg: instrumental resolution (sigma, deg) in phi, chi, 2theta.
        peak_counts_per_s: counts per pixel per second at the peak of a perfect pixel's rocking curve.
        background_counts_per_s: flat background (counts per pixel per second).
        seed: seed of the sample layout.
    """

    shape: tuple[int, int] = (64, 64)
    n_subgrains: int = 5
    subgrain_tilt_deg: float = 0.05
    domain_tilt_deg: float = 0.01
    domain_period_px: int = 8
    dislocations: list | None = None
    burgers_m: float = 2.86e-10
    strain_gradient: float = 2e-4
    subgrain_strain: float = 5e-5
    mosaic_sigma_deg: float = 0.003
    resolution_deg: dict = field(default_factory=lambda: {"phi": 0.004, "chi": 0.008, "tth": 0.004})
    peak_counts_per_s: float = 4000.0
    background_counts_per_s: float = 5.0
    seed: int = 0


@dataclass
class DfxrmSample:
    """Ground truth of the simulated grain (all ``(rows, cols)``; tilts in deg)."""

    config: DfxrmSampleConfig
    geometry: DfxrmGeometry
    mask: np.ndarray
    labels: np.ndarray
    tilt_phi_deg: np.ndarray
    tilt_chi_deg: np.ndarray
    strain: np.ndarray
    dislocations: list

    def sigma_deg(self, axis: str) -> float:
        """Width (sigma, deg) of a pixel's curve along ``axis``: intrinsic mosaic with the resolution."""
        res = float(self.config.resolution_deg.get(axis, 0.0))
        mos = self.config.mosaic_sigma_deg if axis in ("phi", "chi") else 0.0
        return math.hypot(res, mos)

    def expected(self, phi_deg: float, chi_deg: float, tth_deg: float, count_time_s: float) -> np.ndarray:
        """Expected counts ``(rows, cols)`` float64 with the motors at (phi, chi, 2theta) (deg)."""
        g, c = self.geometry, self.config
        sp, sc, st = self.sigma_deg("phi"), self.sigma_deg("chi"), self.sigma_deg("tth")
        dphi = phi_deg - g.phi0_deg - self.tilt_phi_deg
        dchi = chi_deg - g.chi0_deg - self.tilt_chi_deg
        dtth = tth_deg - g.tth_from_strain(self.strain)
        # one exp instead of three: the Gaussians are separable
        arg = (dphi / sp) ** 2 + (dchi / sc) ** 2 + (dtth / st) ** 2
        img = np.exp(-0.5 * arg) * (c.peak_counts_per_s * count_time_s)
        img *= self.mask
        img += c.background_counts_per_s * count_time_s
        return img

    def frame(self, phi_deg: float, chi_deg: float, tth_deg: float, count_time_s: float,
              rng: np.random.Generator | None) -> np.ndarray:
        """A detector image, uint16 ``(rows, cols)``: Poisson counts (expected counts rounded when
        ``rng`` is None), saturating at 65535."""
        lam = self.expected(phi_deg, chi_deg, tth_deg, count_time_s)
        counts = rng.poisson(lam) if rng is not None else np.rint(lam)
        return np.minimum(counts, 65535).astype(np.uint16)

    def background_counts(self, count_time_s: float) -> float:
        """Mean background per pixel and frame (what a dark / flat measurement gives)."""
        return self.config.background_counts_per_s * count_time_s

    def truth_maps(self) -> dict:
        """Ground-truth maps (NaN outside the grain): tilts (deg), strain, and the Nye density of the
        dislocations as a list (they are line singularities: compare integrals, not pixels)."""
        nan = np.where(self.mask, 1.0, np.nan)
        return {"tilt_phi": self.tilt_phi_deg * nan, "tilt_chi": self.tilt_chi_deg * nan,
                "strain": self.strain * nan, "mask": self.mask.astype(np.uint8), "labels": self.labels}


def _default_dislocations(cfg: DfxrmSampleConfig, labels: np.ndarray, mask: np.ndarray, rng) -> list:
    """Up to four screws (alternating signs) inside the largest sub-grain, away from its boundaries."""
    from scipy.ndimage import distance_transform_edt

    largest = np.bincount(labels[mask].ravel()).argmax()
    inside = (labels == largest) & mask
    dist = distance_transform_edt(inside)
    out = []
    taken = np.zeros_like(inside)
    rows, cols = np.indices(inside.shape)
    for sign in (1, -1, 1, -1):
        cand = np.argwhere((dist >= 6) & ~taken)
        if not len(cand):
            break
        r, c = cand[rng.integers(len(cand))]
        out.append((float(r) + 0.5, float(c) + 0.5, sign * cfg.burgers_m))
        taken |= (rows - r) ** 2 + (cols - c) ** 2 < 11 ** 2
    return out


def build_sample(cfg: DfxrmSampleConfig | None = None, geometry: DfxrmGeometry | None = None) -> DfxrmSample:
    """The grain of ``cfg`` seen with ``geometry`` (the pixel size sets the dislocation fields' scale)."""
    cfg = cfg or DfxrmSampleConfig()
    geo = geometry or DfxrmGeometry()
    rng = np.random.default_rng(cfg.seed)
    ny, nx = cfg.shape
    rows, cols = np.indices((ny, nx), dtype=float)
    # the grain: an ellipse filling most of the field of view
    mask = ((rows - ny / 2 + 0.5) / (0.46 * ny)) ** 2 + ((cols - nx / 2 + 0.5) / (0.46 * nx)) ** 2 < 1
    # sub-grains: Voronoi cells with tilts about subgrain_tilt_deg apart
    n = max(1, int(cfg.n_subgrains))
    seeds = np.column_stack([rng.uniform(0.15, 0.85, n) * ny, rng.uniform(0.15, 0.85, n) * nx])
    d2 = (rows[None] - seeds[:, 0, None, None]) ** 2 + (cols[None] - seeds[:, 1, None, None]) ** 2
    labels = np.argmin(d2, axis=0) if n > 1 else np.zeros((ny, nx), int)
    ang = rng.uniform(0, 2 * np.pi, n)
    rad = cfg.subgrain_tilt_deg * np.sqrt(rng.uniform(0.3, 1.0, n)) if n > 1 else np.zeros(1)
    sg_phi, sg_chi = rad * np.cos(ang), rad * np.sin(ang)
    sg_phi, sg_chi = sg_phi - sg_phi.mean(), sg_chi - sg_chi.mean()
    tilt_phi = sg_phi[labels].astype(float)
    tilt_chi = sg_chi[labels].astype(float)
    # domain stripes (diagonal) in the smallest sub-grain (the largest holds the dislocations)
    if cfg.domain_tilt_deg and n > 1:
        host = np.bincount(labels[mask].ravel(), minlength=n)
        host = int(np.argmin(np.where(host > 0, host, host.max() + 1)))
        stripes = (((rows + cols) // max(1, cfg.domain_period_px // 2)) % 2) * 2 - 1
        tilt_chi = tilt_chi + np.where(labels == host, 0.5 * cfg.domain_tilt_deg * stripes, 0.0)
    # axial strain: gradient along x plus a per-sub-grain offset
    strain = cfg.strain_gradient * (cols / max(nx - 1, 1) - 0.5) + rng.normal(0, cfg.subgrain_strain, n)[labels]
    dislocations = list(cfg.dislocations) if cfg.dislocations is not None else \
        _default_dislocations(cfg, labels, mask, rng)
    px = geo.pixel_size_m
    for r0, c0, b in dislocations:
        y, x = (rows + 0.5 - r0) * px, (cols + 0.5 - c0) * px
        r2 = x * x + y * y + px * px          # core radius one pixel
        tilt_phi = tilt_phi + np.degrees(-b * y / (2 * np.pi * r2))     # beta_zx
        tilt_chi = tilt_chi + np.degrees(b * x / (2 * np.pi * r2))      # beta_zy
    return DfxrmSample(cfg, geo, mask, labels, tilt_phi, tilt_chi, strain, dislocations)
