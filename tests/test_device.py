"""The engine on a device: no host arrays mixed in, no host waits inside the position loop, and the
same numbers as on the CPU.

Without a GPU (CI) the device is :mod:`emulated_device`: NumPy behind CuPy's rules, counting every
host sync and upload. With one (``pytest -m gpu`` on the GPU machine, benchmarks/gpu_check.sh) the
same tests run on CuPy too and compare with the CPU to float32 precision.
"""
import numpy as np
import pytest

from bp_plugin.backend import get_backend, gpu_available
from bp_plugin.recon.config import ReconConfig
from bp_plugin.recon.engine import Reconstructor
from bp_plugin.recon.ml import ml_refine
from bp_plugin.sheared_fft import ShearedFFT

import emulated_device as emu

pytestmark = pytest.mark.gpu

DEVICES = ["emulated", pytest.param("gpu", marks=pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU"))]


def device_backend(name):
    return emu.emulated_backend() if name == "emulated" else get_backend("gpu")


def make(ds, backend, mode="sequential", iterations=6):
    cfg = ReconConfig(mode=mode, upsampling=2).scaled(iterations)
    return Reconstructor.from_scan(ds, config=cfg, backend=backend)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- the emulated device itself ----------------------------------------------------------------
def test_emulated_device_refuses_what_cupy_refuses():
    xp = emu.emulated_backend().xp
    d = xp.ones(4, np.float32)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(d)
    with pytest.raises(TypeError, match="host numpy array"):
        d + np.ones(4, np.float32)
    emu.reset_counts()
    float(d.sum())
    xp.asarray(np.zeros(3))
    assert emu.COUNTS == {"sync": 1, "upload": 1}


# --- rules of the hot path -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_an_iteration_waits_for_the_device_once_whatever_the_positions(tiny_dataset, mode):
    ds, _ = tiny_dataset
    rec = make(ds, emu.emulated_backend(), mode)
    rec.step()                                             # first iteration: slab upload, schedule
    emu.reset_counts()
    rec.step()
    n_pos = len(rec.active_positions())
    assert n_pos >= 20
    # the cost and the data norm, read once; nothing uploaded but the measured mask when it changes
    assert emu.COUNTS["sync"] <= 2, dict(emu.COUNTS)
    assert emu.COUNTS["upload"] <= 1, dict(emu.COUNTS)


def test_ml_iterations_wait_a_few_times_not_per_position(tiny_dataset):
    ds, _ = tiny_dataset
    rec = make(ds, emu.emulated_backend())
    rec.step()
    emu.reset_counts()
    ml_refine(rec, 2)
    # per iteration: the cost and penalty, the line search's slope, trial and check costs, beta
    assert emu.COUNTS["sync"] <= 2 * 8, dict(emu.COUNTS)
    assert emu.COUNTS["upload"] <= 2, dict(emu.COUNTS)


def test_a_streamed_frame_reaches_the_device_weights(tiny_dataset):
    ds, _ = tiny_dataset
    measured = np.ones(ds.frames.shape[:2], bool)
    measured[:, 3] = False
    rec = Reconstructor(ds.geometry, ds.frames, ds.translations_m, ds.mask, measured,
                        config=ReconConfig(upsampling=2), backend=emu.emulated_backend())
    assert float(rec.weights(3).sum()) == 0
    rec.set_frame(2, 3, ds.frames[2, 3])
    assert float(rec.weights(3)[2].sum()) == float(ds.mask.sum())


# --- the same numbers as the CPU -----------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_sheared_fft_agrees_with_the_cpu(device):
    backend = device_backend(device)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 8, 12, 10)) + 1j * rng.normal(size=(3, 8, 12, 10))).astype(np.complex64)
    cpu, dev = ShearedFFT((8, 12, 10), 0.37), ShearedFFT((8, 12, 10), 0.37, backend)
    y = dev.forward(backend.xp.asarray(x))
    assert rel(backend.asnumpy(y), cpu.forward(x)) < 1e-5
    assert rel(backend.asnumpy(dev.adjoint(y)), x) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_iterations_agree_with_the_cpu(tiny_dataset, device, mode):
    ds, _ = tiny_dataset
    backend = device_backend(device)
    cpu, dev = make(ds, get_backend("cpu"), mode), make(ds, backend, mode)
    for _ in range(3):
        e_cpu, e_dev = cpu.step(), dev.step()
        assert abs(e_dev - e_cpu) <= 1e-4 * e_cpu
    ml_refine(cpu, 2)
    ml_refine(dev, 2)
    a = backend.asnumpy
    assert rel(a(dev.object), cpu.object) < (1e-6 if device == "emulated" else 1e-3)
    assert rel(a(dev.probe2d), cpu.probe2d) < (1e-6 if device == "emulated" else 1e-3)
    assert rel(a(dev.background), cpu.background) < (1e-6 if device == "emulated" else 1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_the_simulator_on_a_device_agrees_with_the_cpu(device):
    from sim_devices.diffraction import BraggSimulator
    from sim_devices.experiment import build_experiment

    exp = build_experiment("tiny", seed=0)
    cpu = exp.simulator
    backend = device_backend(device)
    dev = BraggSimulator(cpu.geometry, cpu.sample, cpu.probe, cpu.detector, oversampling=cpu.f, box=cpu.box,
                         backend=backend)
    emu.reset_counts()
    for t in exp.translations_m[[0, 12]]:
        a_cpu, a_dev = cpu.amplitudes(t, exp.deltas_rad), dev.amplitudes(t, exp.deltas_rad)
        assert isinstance(a_dev, np.ndarray)                   # frames come back to the host
        assert np.abs(a_dev - a_cpu).max() <= 2e-6 * np.abs(a_cpu).max()
    if device == "emulated":
        assert emu.COUNTS["sync"] == 2                         # one read per position, at the end
