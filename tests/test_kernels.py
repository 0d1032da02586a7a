"""The engine's fast path against its reference: far fields on the frames' planes only, and the
fused CPU kernels (numba), give the reconstruction of the plain equations to float32 rounding."""
from dataclasses import replace

import numpy as np
import pytest

from bp_plugin.backend import get_backend
from bp_plugin.recon import cpu_kernels
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.exposure import plane_index
from bp_plugin.recon.ml import ml_refine
from bp_plugin.sheared_fft import ShearedFFT


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_pruned_transforms_equal_the_full_ones_on_their_planes():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 12, 10, 8)) + 1j * rng.normal(size=(2, 12, 10, 8))).astype(np.complex64)
    f = ShearedFFT((12, 10, 8), 0.41, layout="modulated")
    for planes in (slice(1, 12, 3), np.array([0, 5, 6, 11])):
        full = f.forward(x)
        assert np.allclose(f.forward(x, planes), full[:, planes], rtol=0, atol=1e-6)
        dp = full[:, planes]
        dfull = np.zeros_like(full)
        dfull[:, planes] = dp
        assert np.allclose(f.adjoint(dp, planes), f.adjoint(dfull), rtol=0, atol=1e-6)


def test_plane_index_is_a_view_for_progressions():
    assert plane_index(np.array([2, 5, 8]), np) == slice(2, 9, 3)
    assert plane_index(np.array([4]), np) == slice(4, 5, 1)
    assert isinstance(plane_index(np.array([0, 1, 3]), np), np.ndarray)


@pytest.mark.skipif(not cpu_kernels.available, reason="numba is not installed")
def test_fused_object_update_is_the_numpy_expression():
    rng = np.random.default_rng(1)
    shape = (6, 8, 10)

    def c64():
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)

    big = c64()
    obj, probe, d = big[1:5, 2:7], c64()[1:5, 2:7], c64()[1:5, 2:7]     # strided views, as in the engine
    sup = (rng.random(obj.shape) > 0.5).astype(np.float32)
    pmax, beta, mu = np.float32((np.abs(probe) ** 2).max()), 0.5, 0.02
    reg = (1 - sup) * (mu * pmax)
    expect = (d * np.conj(probe) - reg * obj) / ((probe.real ** 2 + probe.imag ** 2) * np.float32(1 - beta)
                                                  + reg + beta * pmax) + obj
    rest = big.copy()
    cpu_kernels.object_update(obj, probe, d, sup, pmax, beta, mu)
    # float32 rounding only (NumPy's SIMD complex product fuses a multiply-add that this does not)
    assert np.abs(obj - expect).max() <= 4e-7 * np.abs(expect).max()
    untouched = np.ones(shape, bool)
    untouched[1:5, 2:7] = False
    assert np.array_equal(big[untouched], rest[untouched])            # only the view was written


@pytest.mark.parametrize("mode,exposure,up", [("sequential", "point", None), ("batched", "point", None),
                                              ("sequential", "step", 3), ("sequential", "step", 2)])
def test_fast_and_reference_kernels_reconstruct_alike(tiny_dataset, mode, exposure, up):
    ds, _ = tiny_dataset
    geo = replace(ds.geometry, rocking_exposure=exposure)
    out = {}
    for kernels in ("reference", "fast"):
        cfg = ReconConfig(mode=mode, upsampling=up, kernels=kernels).scaled(6)
        rec = Reconstructor(geo, ds.frames, ds.translations_m, ds.mask, config=cfg, backend=get_backend("cpu"))
        for _ in range(4):
            rec.step()
        ml_refine(rec, 2)
        out[kernels] = rec
    ref, fast = out["reference"], out["fast"]
    # measured: at most 6e-7 (object), 4e-7 (background) after 4 joint and 3 ML iterations
    assert rel(fast.object, ref.object) < 1e-5
    assert rel(fast.probe2d, ref.probe2d) < 1e-5
    assert rel(fast.background, ref.background) < 1e-5
    for h_fast, h_ref in zip(fast.history, ref.history):
        assert abs(h_fast["error"] - h_ref["error"]) <= 1e-5 * h_ref["error"]
