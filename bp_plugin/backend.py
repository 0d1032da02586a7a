"""Array backend: NumPy (+ scipy.fft with worker threads) or CuPy, chosen once.

Array code in the project is written once against ``xp`` (the array module) and
``fft`` (an object with scipy.fft-style functions). CuPy is optional: it is used only when
``device="gpu"`` is asked for, or ``"auto"`` finds a working GPU.

On the CPU the FFT library is scipy.fft; ``BP_FFT=mkl`` or ``BP_FFT=pyfftw`` takes mkl_fft or
pyFFTW where installed (neither is a dependency: mkl_fft needs an x86 CPU, pyFFTW binds the GPL
FFTW). Alone, on contiguous boxes, both beat scipy (benchmarks/bench_engine.py prints each one's
floor); inside the engine, whose transforms run along strided axes beside numba's threads, scipy
was the fastest of the three on the 2-core CI machine (3.6 against 5.8 and 15 ms per position at
``small``), hence the default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # ImportError, or a CUDA driver error on a machine without a GPU
        return False


@dataclass(frozen=True)
class Backend:
    """The array module ``xp``, its FFT functions, and the device name ("cpu" or "gpu")."""

    xp: ModuleType
    fft: ModuleType
    device: str
    workers: int | None = None
    #: builds a CSR matrix on this backend from a scipy.sparse one (None: scipy's own, on the host)
    sparse: Callable | None = None

    def fft_kwargs(self) -> dict:
        """Extra keyword arguments for FFT calls (threads for scipy.fft, none for CuPy)."""
        return {"workers": self.workers} if self.workers else {}

    def csr(self, m):
        """A scipy.sparse matrix ``m`` as a CSR matrix of this backend (``@`` with its arrays)."""
        return m if self.sparse is None else self.sparse(m)

    def asnumpy(self, a) -> np.ndarray:
        """Host copy of an array of either backend."""
        return a.get() if hasattr(a, "get") else np.array(a)      # a copy: the engine updates in place


FFT_LIBRARIES = ("scipy", "mkl", "pyfftw")


class _FFTFunctions:
    """scipy.fft's interface with the transforms of another library (shifts and frequencies: scipy's)."""

    def __init__(self, name: str, transforms):
        import scipy.fft as sfft

        self.name = name
        for f in ("fft", "ifft", "fft2", "ifft2", "fftn", "ifftn"):
            setattr(self, f, getattr(transforms, f))
        for f in ("fftshift", "ifftshift", "fftfreq"):
            setattr(self, f, getattr(sfft, f))


def cpu_fft(name: str | None = None):
    """The FFT functions of library ``name`` (default: ``BP_FFT``, else "scipy"), its name as ``.name``.

    A library that is not installed raises ``RuntimeError`` with the command that installs it.
    """
    import scipy.fft as sfft

    name = name or os.environ.get("BP_FFT", "scipy")
    if name not in FFT_LIBRARIES:
        raise ValueError(f"BP_FFT must be one of {FFT_LIBRARIES}, got {name!r}")
    try:
        if name == "mkl":
            import mkl_fft.interfaces.scipy_fft as transforms
        elif name == "pyfftw":
            import pyfftw.interfaces.cache
            import pyfftw.interfaces.scipy_fft as transforms

            pyfftw.interfaces.cache.enable()            # plans kept between calls of one shape
            pyfftw.interfaces.cache.set_keepalive_time(300)
        else:
            transforms = sfft
    except ImportError:
        pkg = {"mkl": "mkl_fft mkl-service", "pyfftw": "pyfftw"}[name]
        raise RuntimeError(f"BP_FFT={name} but it is not installed: pip install {pkg} (or unset BP_FFT)") from None
    return _FFTFunctions(name, transforms)


def get_backend(device: str = "auto") -> Backend:
    """Return the backend for ``device`` in {"auto", "cpu", "gpu"}.

    "gpu" raises a ``RuntimeError`` that says how to install CuPy when no GPU is usable.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" or (device == "auto" and gpu_available()):
        if not gpu_available():
            raise RuntimeError(
                "device='gpu' asked for but no CUDA GPU is usable through CuPy: install the "
                "'gpu' extra (pip install 'bp-plugin[gpu]') on a machine with a GPU, or use --device cpu"
            )
        import cupy
        import cupyx.scipy.fft as cufft

        import cupyx.scipy.sparse as csp

        return Backend(xp=cupy, fft=cufft, device="gpu", sparse=csp.csr_matrix)
    workers = int(os.environ.get("BP_FFT_WORKERS", os.cpu_count() or 1))
    return Backend(xp=np, fft=cpu_fft(), device="cpu", workers=workers)
