"""Array backend: NumPy (+ scipy.fft with worker threads) or CuPy, chosen once.

Array code in the project is written once against ``xp`` (the array module) and
``fft`` (an object with scipy.fft-style functions). CuPy is optional: it is used only when
``device="gpu"`` is asked for, or ``"auto"`` finds a working GPU.
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
        return a.get() if hasattr(a, "get") else np.asarray(a)


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
    import scipy.fft as sfft

    workers = int(os.environ.get("BP_FFT_WORKERS", os.cpu_count() or 1))
    return Backend(xp=np, fft=sfft, device="cpu", workers=workers)
