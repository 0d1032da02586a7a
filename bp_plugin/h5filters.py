"""The HDF5 filter of the frames: bitshuffle/LZ4 through ``hdf5plugin`` when it is installed.

Importing this module registers the filter with h5py, so files written by the detectors and the
simulator read back. Where ``hdf5plugin`` is absent (the GPU machine carries numpy, scipy, h5py
and CuPy only), frames are written uncompressed, which every HDF5 reader opens, and reading a
compressed file says what to install.
"""
from __future__ import annotations

try:
    import hdf5plugin
except ImportError:                     # the engine and the simulator work without it
    hdf5plugin = None

#: what a frame file that h5py cannot decode is missing
MISSING = ("its frames are bitshuffle/LZ4-compressed and hdf5plugin is not installed: "
           "pip install hdf5plugin (a dependency of bp-plugin)")


def frame_compression() -> dict:
    """``h5py.create_dataset`` keyword arguments for frame data: bitshuffle/LZ4, or none."""
    return dict(hdf5plugin.Bitshuffle(cname="lz4")) if hdf5plugin is not None else {}
