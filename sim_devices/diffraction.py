"""Diffraction frames of a simulated Bragg ptychography experiment.

How the frames are computed (and why this is not the reconstructor's own discretisation, so a
reconstruction tested on them does not commit the "inverse crime"):

1. The exit wave ``psi(r) = P2(p1(r), p2(r)) rho(r - s)`` is evaluated *analytically* (sample model
   of :mod:`sim_devices.sample`, probe of :mod:`sim_devices.probe` by quadrature over the KB
   aperture) on a grid ``oversampling`` times finer than the reconstruction grid along r1, r2 and
   r3, over a box large enough to hold the whole illuminated volume (beam tails included), not
   the reconstruction window. The sample is translated by ``s`` exactly (no voxel rounding, no
   Fourier shift).
2. Each rocking angle ``delta`` (any value, not only grid angles) is a direct sum along r3 with the
   exact phase ``exp(-i |Q| delta (cos tB r3 + sin tB r1))`` (one complex matrix product for all
   angles), then the field is folded with the detector's real-space period ``lambda D / p`` along
   r1 and r2 (what point sampling of the far field at the pixel pitch means) and Fourier
   transformed; the central ``N1 x N2`` pixels are kept.
3. Counts: ``Poisson(scale |Psi|^2 + b)`` with the scale calibrated so that the brightest pixel of
   the central position's rocking curve expects ``peak_rate_cps * count_time_s`` counts; then module
   gaps and dead pixels read 0 and hot pixels read a large constant (all three masked).

Limits of the model (stated so nobody over-trusts it): kinematic scattering, linearised
(small-angle) rocking and detector geometry (the Ewald sphere's curvature, about 0.2 pixel at the
edge of a 200-pixel crop, is neglected), point sampling of the detector pixels, a fully coherent
probe.
"""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from bp_plugin.geometry import ExperimentGeometry, lab_to_probe, lab_to_recon, probe_basis, recon_basis

from .probe import ProbeModel
from .sample import CrystalSample


@dataclass(frozen=True)
class DetectorModel:
    """Counting detector (Maxipix-like): flux, exposure, background and bad pixels.

    Attributes:
        peak_rate_cps: expected count rate (1/s) of the brightest pixel over the rocking curve at
            the central raster position.
        count_time_s: exposure per frame (s); counts scale linearly with it.
        background_cps: mean incoherent background per pixel (1/s): flat plus a broad bump.
        gap_rows, gap_cols: crop-relative n1 (rows) and n2 (columns) indices of module gaps.
        n_hot, n_dead: number of hot and dead pixels, placed at random (seeded).
        hot_value: what a hot pixel reads.
        seed: seed of the bad-pixel layout (the noise has its own generator).
    """

    peak_rate_cps: float = 1e5
    count_time_s: float = 0.2
    background_cps: float = 0.5
    gap_rows: tuple[int, ...] = ()
    gap_cols: tuple[int, ...] = ()
    n_hot: int = 2
    n_dead: int = 3
    hot_value: int = 1 << 20
    seed: int = 1234

    def bad_pixels(self, shape):
        """Flat indices ``(hot, dead)`` of the bad pixels of a ``shape`` frame (fixed by ``seed``)."""
        rng = np.random.default_rng(self.seed)
        idx = rng.choice(shape[0] * shape[1], size=self.n_hot + self.n_dead, replace=False)
        return idx[: self.n_hot], idx[self.n_hot:]

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Valid-pixel mask, bool ``(n1, n2)``: False on gaps, hot and dead pixels."""
        m = np.ones(shape, bool)
        m[list(self.gap_rows), :] = False
        m[:, list(self.gap_cols)] = False
        hot, dead = self.bad_pixels(shape)
        m.flat[np.concatenate([hot, dead])] = False
        return m

    def background(self, shape: tuple[int, int]) -> np.ndarray:
        """Expected background counts per pixel for one exposure, float64 ``(n1, n2)``."""
        y = (np.arange(shape[0]) - shape[0] / 2) / shape[0]
        x = (np.arange(shape[1]) - shape[1] / 2) / shape[1]
        bump = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / 0.18)
        return self.background_cps * self.count_time_s * (0.5 + bump)

    def acquire(self, expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Counts for expected signal ``(..., n1, n2)`` (counts): Poisson noise, gaps, bad pixels; uint32."""
        shape = expected.shape[-2:]
        counts = rng.poisson(expected + self.background(shape)).astype(np.uint32)
        counts[..., list(self.gap_rows), :] = 0
        counts[..., :, list(self.gap_cols)] = 0
        hot, dead = self.bad_pixels(shape)
        flat = counts.reshape(counts.shape[:-2] + (-1,))
        flat[..., dead] = 0
        flat[..., hot] = self.hot_value
        return counts


def raster_translations(geometry: ExperimentGeometry, *, snake: bool = False, jitter_m: float = 0.0,
                        seed: int = 0) -> np.ndarray:
    """Sample translations (m), lab ``(x, y, z)``, shape ``(n_y * n_x, 3)``, centred on 0.

    Row-major order (y outer, x inner); ``snake`` reverses every other row; ``jitter_m`` adds a
    Gaussian error (standard deviation, per axis in x and y) as a real stage's readback would show.
    """
    ny, nx = geometry.raster_shape
    sx, sy = geometry.raster_step_m
    rows = []
    for iy in range(ny):
        ix = np.arange(nx)[::-1] if (snake and iy % 2) else np.arange(nx)
        rows.append(np.stack([(ix - (nx - 1) / 2) * sx, np.full(nx, (iy - (ny - 1) / 2) * sy), np.zeros(nx)], 1))
    t = np.concatenate(rows)
    if jitter_m:
        t[:, :2] += np.random.default_rng(seed).normal(scale=jitter_m, size=(len(t), 2))
    return t


def measured_rocking_offsets_rad(geometry: ExperimentGeometry) -> np.ndarray:
    """Rocking offsets ``delta`` (rad) from theta_B of the measured angles, centred: index ``n // 2`` is 0."""
    return (np.arange(geometry.n_angles) - geometry.n_angles // 2) * geometry.rocking_step_rad


class BraggSimulator:
    """Far-field amplitudes and counting frames for any translation and rocking angle.

    Args:
        geometry: the experiment (uses energy, reflection, detector, crop, rocking step).
        sample: analytic crystal.
        probe: KB focus model.
        detector: counting-detector model.
        oversampling: fine-grid factor along r1, r2, r3 (>= 1; 2 by default).
        translation_range_m: ``((xmin, xmax), (ymin, ymax))`` of the translations to be simulated,
            so the box covers the foil wherever it moves (default: +-1 um).
        box: explicit fine-index ranges ``((m3a, m3b), (m1a, m1b), (m2a, m2b))`` (tests only).
        chunk_voxels: voxels evaluated at once (bounds memory).
        backend: where the exit waves, the sums over r3 and the FFTs run (default: the CPU, with
            NumPy's FFT as always); frames come back to the host.
    """

    def __init__(self, geometry: ExperimentGeometry, sample: CrystalSample, probe: ProbeModel,
                 detector: DetectorModel | None = None, *, oversampling: int = 2,
                 translation_range_m=((-1e-6, 1e-6), (-1e-6, 1e-6)), box=None, chunk_voxels: int = 4_000_000,
                 backend=None):
        from bp_plugin.backend import get_backend

        self.backend = backend or get_backend("cpu")
        self.xp = self.backend.xp
        self.geometry, self.sample, self.probe = geometry, sample, probe
        self.detector = detector or DetectorModel()
        self.f = int(oversampling)
        self.chunk_voxels = int(chunk_voxels)
        tb = geometry.theta_bragg_rad
        self.theta_b, self.q = tb, geometry.q_bragg_inv_m
        n1, n2 = geometry.crop
        dr1, dr2 = geometry.voxel_size_m[:2]
        dr3 = geometry.wavelength_m / (2 * geometry.n_angles * geometry.rocking_step_rad * math.sin(tb) * math.cos(tb))
        self.step = np.array([dr3, dr1, dr2]) / self.f          # fine voxel (m), axis order (3, 1, 2)
        self.period = (self.f * n1, self.f * n2)                  # fold period along r1, r2 (fine voxels)
        self.box = tuple(tuple(int(v) for v in b) for b in (box or self._bounding_box(translation_range_m)))
        self._axes = [np.arange(a, b) * s for (a, b), s in zip(self.box, self.step)]  # r3, r1, r2 (m)
        self._probe_box = self._probe_on_box()
        self._scale = None
        #: each frame is the mean intensity over this many rocking angles spread evenly over its
        #: step (a continuous or finite rocking exposure); 1 = a point at the nominal angle
        self.rocking_substeps = 1
        #: budget (bytes) for whole exit waves cached per translation (0: none). A detector that
        #: computes one rocking angle per frame reuses them: the exit wave, not the sum, dominates.
        self.cache_bytes = 0
        self._cache: OrderedDict = OrderedDict()

    # --- the box -----------------------------------------------------------------------------
    def _bounding_box(self, trange):
        """Fine-index ranges holding the intersection of the tapered beam and the foil."""
        tb, s = self.theta_b, self.sample
        pb = probe_basis(tb)
        n = s.normal
        corners = [np.array([x, y, 0.0]) for x, y in itertools.product(*trange)]
        zeta_shift = [c @ n for c in corners]
        half_t = s.thickness_m / 2 + 4 * s.edge_m
        pts = []
        for a, b, c in itertools.product((-1, 1), (-1, 1), (-1, 1)):
            zeta = (half_t + max(zeta_shift)) if c > 0 else (-half_t + min(zeta_shift))
            rhs = np.array([a * self.probe.extent_m[0] / 2, b * self.probe.extent_m[1] / 2, zeta])
            pts.append(np.linalg.solve(np.stack([pb[0], pb[1], n]), rhs))
        r = lab_to_recon(np.array(pts), tb)[:, [2, 0, 1]]        # axis order (3, 1, 2)
        lo = np.floor(r.min(0) / self.step).astype(int) - 1
        hi = np.ceil(r.max(0) / self.step).astype(int) + 2
        box = [(lo[0], hi[0])]
        for k, per in ((1, self.period[0]), (2, self.period[1])):
            length = int(math.ceil((hi[k] - lo[k]) / per)) * per   # whole periods, so folding is exact
            start = (lo[k] + hi[k] - length) // 2
            box.append((start, start + length))
        return box

    @property
    def box_shape(self) -> tuple[int, int, int]:
        """Fine box shape ``(n3, n1, n2)``."""
        return tuple(b - a for a, b in self.box)

    def _lab(self, r3, r1, r2, xp=np):
        e = xp.asarray(recon_basis(self.theta_b))
        return r1[..., None] * e[0] + r2[..., None] * e[1] + r3[..., None] * e[2]

    def _probe_on_box(self):
        """Probe on the box as two factors: ``fv`` of (r3, r1) and ``fh`` of r2 (separable KB focus)."""
        r3, r1, r2 = self._axes
        lab31 = self._lab(r3[:, None], r1[None, :], np.zeros(1))
        p = lab_to_probe(lab31, self.theta_b)
        fv = self.probe.field_1d(p[..., 0], self.geometry.wavelength_m, 0)
        p2 = lab_to_probe(self._lab(np.zeros(1), np.zeros(1), r2), self.theta_b)[..., 1]
        fh = self.probe.field_1d(p2, self.geometry.wavelength_m, 1)
        return fv.astype(np.complex64), fh.astype(np.complex64)

    # --- amplitudes --------------------------------------------------------------------------
    def exit_wave_chunk(self, translation_m, i3a: int, i3b: int) -> np.ndarray:
        """Exit wave on fine planes ``i3a:i3b`` of the box, complex64 ``(i3b - i3a, n1_box, n2_box)``."""
        r3, r1, r2 = self._axes
        fv, fh = self._probe_box
        fv = fv[i3a:i3b]
        r3c = r3[i3a:i3b]
        xp = self.xp
        shape = (len(r3c), len(r1), len(r2))
        # rows (r3, r1) that cross the illuminated foil: the foil's normal is nearly
        # perpendicular to r2, so a 2D test with a margin for the r2 extent selects them cheaply
        e = recon_basis(self.theta_b)
        n = self.sample.normal
        t = np.asarray(translation_m, float)
        zeta = r3c[:, None] * (e[2] @ n) + r1[None, :] * (e[0] @ n) - t @ n
        half = self.sample.thickness_m / 2 + 4 * self.sample.edge_m + abs(e[1] @ n) * np.abs(r2).max()
        i3, i1 = np.nonzero((np.abs(zeta) < half) & (np.abs(fv) > 0))
        cols = np.nonzero(np.abs(fh) > 0)[0]
        out = xp.zeros(shape, np.complex64)
        if i3.size and cols.size:
            up = xp.asarray
            xyz = self._lab(up(r3c[i3])[:, None], up(r1[i1])[:, None], up(r2[cols])[None, :], xp) - up(t)
            psi = self.sample.density(xyz, xp) * up(fv[i3, i1][:, None]) * up(fh[cols][None, :])
            i3, i1, cols = up(i3), up(i1), up(cols)
            out[i3[:, None], i1[:, None], cols[None, :]] = psi
        return out

    def _cached_exit_wave(self, translation_m):
        """The whole box's exit wave for a translation, from the LRU cache when it fits the budget."""
        key = tuple(np.round(np.asarray(translation_m, float) * 1e12).astype(np.int64))  # picometres
        psi = self._cache.get(key)
        if psi is None:
            psi = self.exit_wave_chunk(translation_m, 0, len(self._axes[0]))
            self._cache[key] = psi
            while self._cache and sum(v.nbytes for v in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return psi

    def amplitudes(self, translation_m, deltas_rad) -> np.ndarray:
        """Far-field amplitude ``Psi`` at rocking offsets ``deltas_rad`` (rad from theta_B).

        Args:
            translation_m: sample translation (m), lab ``(x, y, z)``, shape (3,).
            deltas_rad: rocking offsets, shape (n,).

        Returns:
            complex64 ``(n, N1, N2)`` on the detector crop, centred pixel indices
            (pixel ``N // 2`` is q = 0), unnormalised (see :meth:`expected_counts`).
        """
        deltas = np.atleast_1d(np.asarray(deltas_rad, float))
        r3, r1, r2 = self._axes
        c, s = math.cos(self.theta_b), math.sin(self.theta_b)
        xp = self.xp
        acc = xp.zeros((len(deltas), len(r1) * len(r2)), np.complex64)
        planes = max(1, self.chunk_voxels // (len(r1) * len(r2)))
        whole = None
        if self.cache_bytes and 8 * len(r3) * len(r1) * len(r2) <= self.cache_bytes:
            whole, planes = self._cached_exit_wave(translation_m), len(r3)
        for i3a in range(0, len(r3), planes):
            i3b = min(len(r3), i3a + planes)
            psi = whole if whole is not None else self.exit_wave_chunk(translation_m, i3a, i3b)
            phase3 = np.exp(-1j * self.q * c * np.multiply.outer(deltas, r3[i3a:i3b])).astype(np.complex64)
            acc += xp.asarray(phase3) @ psi.reshape(i3b - i3a, -1)
        acc = acc.reshape(len(deltas), len(r1), len(r2))
        acc *= xp.asarray(np.exp(-1j * self.q * s * np.multiply.outer(deltas, r1)).astype(np.complex64)[:, :, None])
        folded = self._fold(acc)
        # the CPU keeps NumPy's FFT (double precision inside), so its frames stay what they were;
        # a device transforms in single precision (its frames agree to float32 rounding)
        fft = np.fft if self.backend.device == "cpu" else self.backend.fft
        big = fft.fftshift(fft.fft2(folded, axes=(-2, -1)), axes=(-2, -1))
        n1, n2 = self.geometry.crop
        c1, c2 = self.period[0] // 2, self.period[1] // 2
        crop = big[:, c1 - n1 // 2: c1 - n1 // 2 + n1, c2 - n2 // 2: c2 - n2 // 2 + n2].astype(np.complex64)
        return self.backend.asnumpy(crop)

    def _fold(self, a):
        """Sum ``(n, L1, L2)`` over whole detector periods into ``(n, P1, P2)`` in FFT order of the index."""
        (m1a, _), (m2a, _) = self.box[1], self.box[2]
        p1, p2 = self.period
        n = a.shape[0]
        b = a.reshape(n, -1, p1, a.shape[2]).sum(1)
        b = b.reshape(n, p1, -1, p2).sum(2)
        return self.xp.roll(b, (m1a % p1, m2a % p2), axis=(1, 2))

    # --- counts ------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Counts per unit ``|Psi|^2``, from the detector's peak rate at the central position."""
        if self._scale is None:
            ref = np.abs(self.amplitudes(np.zeros(3), measured_rocking_offsets_rad(self.geometry))) ** 2
            self._scale = self.detector.peak_rate_cps * self.detector.count_time_s / float(ref.max())
        return self._scale

    def expected_counts(self, translation_m, deltas_rad) -> np.ndarray:
        """Noise-free expected photon counts (no background), float32 ``(n, N1, N2)``: the mean over
        ``rocking_substeps`` angles at the centres of equal parts of each frame's rocking step."""
        deltas = np.atleast_1d(np.asarray(deltas_rad, float))
        k = max(1, int(self.rocking_substeps))
        sub = ((np.arange(k) + 0.5) / k - 0.5) * self.geometry.rocking_step_rad
        amp = self.amplitudes(translation_m, (deltas[:, None] + sub[None, :]).ravel())
        inten = (np.abs(amp) ** 2).reshape(len(deltas), k, *amp.shape[1:]).mean(1)
        return (self.scale * inten).astype(np.float32)

    def frames(self, translation_m, deltas_rad, rng: np.random.Generator) -> np.ndarray:
        """Noisy counting frames, uint32 ``(n, N1, N2)``."""
        return self.detector.acquire(self.expected_counts(translation_m, deltas_rad), rng)

    def probe_section(self, pixel_m, shape):
        """Ground-truth probe section on a centred (p1, p2) grid: ``(complex64 (n1, n2), p1, p2)``."""
        return self.probe.section(pixel_m, shape, self.geometry.wavelength_m)
