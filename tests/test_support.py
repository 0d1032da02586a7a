"""Shrink-wrap on the smoothed amplitude: a foil two voxels thick keeps its partial-volume surface
voxels, and an isolated bright voxel away from it leaves the support (a raw threshold does the
opposite of both)."""
import numpy as np
import pytest
from scipy import ndimage

from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.support import gaussian_smooth, shrinkwrap


def test_the_smoothing_is_scipys_gaussian_with_zeros_outside():
    a = np.random.default_rng(0).random((9, 10, 11)).astype(np.float32)
    for sigma in (0.7, 1.0, 1.6):
        ref = ndimage.gaussian_filter(a, sigma, mode="constant", truncate=3.0)
        np.testing.assert_allclose(gaussian_smooth(a, sigma, np), ref, atol=2e-6)
    assert gaussian_smooth(a, 0, np) is a


def _thin_foil():
    obj = np.zeros((12, 16, 16), np.complex64)
    obj[5:7] = 1.0                                   # two full voxels through the foil
    obj[4] = obj[7] = 0.12                           # the surfaces' partial-volume voxels
    obj[10, 2, 2] = 0.3                              # an isolated bright voxel off the foil
    return obj


def test_smoothed_shrinkwrap_keeps_a_thin_foils_surfaces_and_drops_an_isolated_voxel():
    obj = _thin_foil()
    full = np.ones(obj.shape, bool)
    smooth = shrinkwrap(full, obj, 0.15, 1.0, np)
    assert smooth[4:8, 4:12, 4:12].all()             # the foil with both surface layers
    assert not smooth[10, 2, 2]
    raw = shrinkwrap(full, obj, 0.15, 0.0, np)
    assert not raw[4].any() and not raw[7].any() and raw[10, 2, 2]
    # a voxel once out stays out, even where the threshold alone would now keep it
    assert not shrinkwrap(smooth, obj, 0.15, 0.0, np)[10, 2, 2]
    assert not shrinkwrap(np.zeros_like(full), obj, 0.15, 1.0, np).any()


def test_a_negative_width_is_refused():
    with pytest.raises(ValueError, match="shrinkwrap_sigma must be >= 0 voxels"):
        ReconConfig(shrinkwrap_sigma=-1)
