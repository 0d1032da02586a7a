"""The detector's own HDF5 file: frames appended one by one, readable while the scan runs.

Layout (what real detector file writers do, and what the StreamResource documents point to):

- ``/entry/data/data``: uint32 (uint16 for DF-XRM cameras) ``(n_frames, rows, cols)``, one chunk per frame, bitshuffle-LZ4
  compressed (hdf5plugin), growing along axis 0;
- ``/entry/instrument/detector/{x_pixel_size, y_pixel_size, count_time}`` and ``.../pixel_mask``
  (uint32, NeXus convention: 0 = good pixel).

The file is opened in SWMR mode (single writer, multiple readers) and flushed after each frame:
a reader opening it with ``swmr=True`` (the Tiled server does, see ``bp_plugin.tiled_server``) sees
every frame written so far, and a scan aborted at any point leaves a valid file holding every frame
acquired before the abort.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from bp_plugin.h5filters import frame_compression

DATASET = "/entry/data/data"


class DetectorFile:
    """Append-only frame file.

    Args:
        path: file to create (must not exist: a detector never overwrites data).
        frame_shape: (rows, cols) of one frame.
        pixel_size_m: pixel pitch (m).
        count_time_s: exposure per frame (s), recorded as an attribute.
        mask: valid-pixel mask, bool ``(rows, cols)`` (True = good), stored as a NeXus pixel_mask.
        dtype: frame dtype (uint32 for photon counters, uint16 for sCMOS cameras).
    """

    def __init__(self, path, frame_shape: tuple[int, int], *, pixel_size_m: float, count_time_s: float,
                 mask: np.ndarray | None = None, dtype=np.uint32):
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"detector file {self.path} already exists; a detector never overwrites data")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.dtype = np.dtype(dtype)
        self._f = h5py.File(self.path, "w", libver="latest")
        det = self._f.create_group("entry/instrument/detector")
        det.create_dataset("x_pixel_size", data=pixel_size_m).attrs["units"] = "m"
        det.create_dataset("y_pixel_size", data=pixel_size_m).attrs["units"] = "m"
        det.create_dataset("count_time", data=count_time_s).attrs["units"] = "s"
        if mask is not None:
            det.create_dataset("pixel_mask", data=(~np.asarray(mask, bool)).astype(np.uint32))
        self._ds = self._f.create_dataset(
            DATASET, shape=(0, *self.frame_shape), maxshape=(None, *self.frame_shape), dtype=self.dtype,
            chunks=(1, *self.frame_shape), **frame_compression())
        self._ds.attrs["units"] = "counts"
        self._f.swmr_mode = True
        self.n_frames = 0

    def append(self, frame: np.ndarray) -> int:
        """Write one ``(rows, cols)`` frame of the file's dtype, flush it to disk, return its index."""
        if frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise ValueError(f"frame of shape {frame.shape} and dtype {frame.dtype}; expected "
                             f"{self.frame_shape} {self.dtype}")
        i = self.n_frames
        self._ds.resize(i + 1, axis=0)
        self._ds[i] = frame
        self._ds.flush()
        self.n_frames = i + 1
        return i

    def close(self):
        if self._f:
            self._f.close()
            self._f = None

    @property
    def uri(self) -> str:
        """``file://localhost/ABSOLUTE/PATH``, as StreamResource documents carry it."""
        return "file://localhost" + os.path.abspath(self.path)


def read_detector_file(path, index=slice(None)) -> np.ndarray:
    """Frames of a detector file (also while it is being written), ``(n, rows, cols)`` of its dtype."""
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        return f[DATASET][index]
