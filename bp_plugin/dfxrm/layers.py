"""Layer-by-layer DF-XRM: where an image pixel is in the sample, and the volumes stacked from layer maps.

A line beam, thin along the beam-normal axis ``h`` (the sample's ``z`` motor), illuminates one
layer; the objective images it along the diffracted beam, at ``2theta`` from the incident beam in
the (y, h) plane. As in the 2D maps (docs/dfxrm.md), **x** runs along the image columns (here:
horizontal, normal to the scattering plane) and **y** along the rows (here: along the incident
beam, in the layer). Projected along the diffracted beam, a sample point ``(x, y, h)`` lands on

    column ``c = c_c + x / p``,   row ``r = r_c + (h cos 2theta - y sin 2theta) / p``,

with ``p`` the image pixel in the object plane (normal to the diffracted beam; ``geometry.pixel_size_m``)
and ``(r_c, c_c)`` the image centre (pixel-centre
indices). So inside a layer y is foreshortened by ``sin 2theta`` (a row is ``p / sin 2theta`` of
sample), and raising the layer by ``dh`` moves its image by ``dh cos 2theta / p`` rows: a volume
stacked without undoing that shift shears every boundary that crosses the layers.
:meth:`LayerGeometry.stack` resamples each layer's map onto a common y grid (step
``p / sin 2theta``) by linear interpolation along the rows: volumes ``(layers, ny, cols)`` =
``(h, y, x)`` with voxels ``(layer step, p / sin 2theta, p)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import ImagingGeometry
from .maps import nye_components


@dataclass(frozen=True)
class LayerGeometry(ImagingGeometry):
    """The imaging geometry of the layers (``tth_deg``, ``pixel_size_m``, ``frame_shape``: see
    :class:`~bp_plugin.dfxrm.geometry.ImagingGeometry`)."""

    what = "layer geometry"

    @property
    def _sc(self) -> tuple[float, float]:
        t = math.radians(self.tth_deg)
        return math.sin(t), math.cos(t)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.frame_shape[0] - 1) / 2.0, (self.frame_shape[1] - 1) / 2.0

    @property
    def voxel_m(self) -> tuple[float, float]:
        """The in-layer voxel (y, x) of the stacked volumes (m): ``(p / sin 2theta, p)``."""
        return self.pixel_size_m / self._sc[0], self.pixel_size_m

    @staticmethod
    def layer_step_m(heights_m) -> float | None:
        """The volumes' voxel along h (m): the median spacing of the heights (None for one layer)."""
        h = np.asarray(heights_m, float)
        return float(np.median(np.abs(np.diff(h)))) if h.size > 1 else None

    def volume_voxel_m(self, heights_m) -> tuple:
        """The stacked volumes' voxel (h, y, x) in m (h None for one layer)."""
        return (self.layer_step_m(heights_m), *self.voxel_m)

    def sample_yx(self, h_m):
        """``(y, x)`` in the sample (m) of every pixel for a layer at height ``h_m`` (scalar or an
        array broadcasting against ``(rows, cols)``); y ``(..., rows, cols)``, x ``(rows, cols)``."""
        s, c = self._sc
        rc, cc = self.centre
        rows, cols = np.indices(self.frame_shape, dtype=float)
        y = (np.asarray(h_m, float) * c - (rows - rc) * self.pixel_size_m) / s
        return y, (cols - cc) * self.pixel_size_m

    def row_of(self, y_m, h_m):
        """The (fractional) image row of sample ``y`` in a layer at height ``h``."""
        s, c = self._sc
        return self.centre[0] + (np.asarray(h_m, float) * c - np.asarray(y_m, float) * s) / self.pixel_size_m

    def y_grid(self, heights_m) -> np.ndarray:
        """The volumes' y (m): step ``p / sin 2theta``, covering every layer's image."""
        s, c = self._sc
        h = np.asarray(heights_m, float)
        half = self.centre[0] * self.pixel_size_m
        lo, hi = ((h * c).min() - half) / s, ((h * c).max() + half) / s   # cos 2theta < 0 past 90 deg
        dy = self.voxel_m[0]
        n = int(math.floor((hi - lo) / dy + 1e-9)) + 1
        return lo + dy * np.arange(n)

    def volume_grid(self, heights_m):
        """``(h, y, x)`` of the volume's voxel centres, each ``(layers, ny, cols)`` (m)."""
        y = self.y_grid(heights_m)
        x = (np.arange(self.frame_shape[1]) - self.centre[1]) * self.pixel_size_m
        h = np.asarray(heights_m, float)
        return tuple(np.broadcast_arrays(h[:, None, None], y[None, :, None], x[None, None, :]))

    def stack(self, layer_maps, heights_m) -> np.ndarray:
        """A volume ``(layers, ny, cols)`` float32 from maps ``(layers, rows, cols)`` (NaN: no data).

        Each layer is resampled along its rows at the rows of the common y grid (linear; where one
        of the two neighbours is NaN, the other is kept when it is the nearer, else NaN)."""
        maps = np.asarray(layer_maps, float)
        h = np.asarray(heights_m, float)
        if maps.ndim != 3 or maps.shape[1:] != tuple(self.frame_shape) or len(h) != maps.shape[0]:
            raise ValueError(f"layer maps of shape {maps.shape} for {len(h)} heights; expected "
                             f"({len(h)}, {self.frame_shape[0]}, {self.frame_shape[1]})")
        y = self.y_grid(h)
        out = np.full((len(h), len(y), maps.shape[2]), np.nan)
        n_rows = maps.shape[1]
        for k in range(len(h)):
            r = self.row_of(y, h[k])
            r0 = np.clip(np.floor(r).astype(int), 0, max(n_rows - 2, 0))     # the last row: r0 + 1, f = 1
            f = (r - r0)[:, None]
            ok = (r >= 0) & (r <= n_rows - 1)
            lo = np.where(ok[:, None], maps[k, np.clip(r0, 0, n_rows - 1)], np.nan)
            hi = np.where(ok[:, None], maps[k, np.clip(r0 + 1, 0, n_rows - 1)], np.nan)
            v = lo * (1 - f) + hi * f
            v = np.where(np.isnan(lo) & ~np.isnan(hi) & (f >= 0.5), hi, v)
            v = np.where(np.isnan(hi) & ~np.isnan(lo) & (f < 0.5), lo, v)
            out[k] = v
        return out.astype(np.float32)


#: the maps a layer scan stacks into volumes
VOLUME_MAPS = ("intensity", "tilt_phi", "tilt_chi", "fwhm_phi", "fwhm_chi", "cov_phi_chi", "strain", "fwhm_tth")


def fullest_layer(per_layer) -> int:
    """Index of the layer whose maps hold the most crystal pixels (its ``mask``; None: not measured)."""
    return int(np.argmax([0 if m is None else int(np.asarray(m["mask"]).sum()) for m in per_layer]))


def stack_layer_maps(per_layer, heights_m, geometry: LayerGeometry) -> dict:
    """Volumes from each layer's maps (:func:`bp_plugin.dfxrm.maps.compute_maps` output, or None
    for a layer not measured yet: NaN there): each of :data:`VOLUME_MAPS` the layers have, NaN
    outside each layer's crystal mask, ``mask`` (uint8, 1 where a layer's crystal maps to) and
    the in-layer Nye components ``nye_xy``, ``nye_yx``, ``nye_zz`` (1/um) of the tilt volumes, all
    ``(layers, ny, cols)``; the batch path and the live service both stack through here."""
    shape = tuple(geometry.frame_shape)
    nan = np.full(shape, np.nan)
    ref = next((m for m in per_layer if m is not None), None)
    names = [k for k in VOLUME_MAPS if ref is not None and k in ref]

    def layer(m, name):
        if m is None:
            return nan
        return np.where(np.asarray(m["mask"]).astype(bool), m[name] if name != "mask" else 1.0, np.nan)

    out = {k: geometry.stack([layer(m, k) for m in per_layer], heights_m) for k in names}
    out["mask"] = np.isfinite(geometry.stack([layer(m, "mask") for m in per_layer], heights_m)).astype(np.uint8)
    # the Nye components of each layer on the volume's own grid (rows of an image are p / sin 2theta
    # of sample apart and run against y: the image's Nye maps would have the y gradients that much
    # too steep, and of the wrong sign)
    nye = nye_components(out.get("tilt_phi"), out.get("tilt_chi"), geometry.voxel_m)
    out.update({k: v.astype(np.float32) for k, v in nye.items()})
    return out
