"""Where the streamer finds a live detector's frames when its events only reference a file.

Two taps, one interface (``take(uri, index, dataset) -> frame or None``, ``mask``, ``release()`` at
each run's stop, ``detach()``):

- :class:`DetectorFrameTap`: the detector hands each frame over as it writes it (a detector with
  ``frame_listeners``, like the simulated ones: an Eiger's ZeroMQ stream is the hardware analogue);
- :class:`FileFrameTap`: the frame is read back from the detector's HDF5 file when its event arrives,
  the file opened read-only in SWMR mode. That is what any file-writing detector allows, whichever
  ophyd it comes from: ophyd-async's HDF writers and areaDetector's HDF5 plug-in with SWMR on. A file
  that cannot be opened while it is written (no SWMR, a lock) is left to the reconstructor, which
  reads every frame the stop message lists, with one warning per file.

:func:`frame_tap` picks the one a detector allows.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from urllib.parse import urlparse

import h5py
import numpy as np

from bp_plugin import h5filters  # noqa: F401  (registers the frames' compression filter with h5py)

log = logging.getLogger(__name__)

#: the frames' dataset in a detector file when its resource names none (NeXus, areaDetector)
DEFAULT_DATASET = "/entry/data/data"


def uri_path(uri: str) -> str:
    """The local path of a ``file://host/path`` URI (a plain path is returned as it is)."""
    return urlparse(uri).path if uri.startswith("file:") else uri


def as_frame(data) -> np.ndarray:
    """``(rows, cols)`` of one point's data, whose leading axes are 1 (ophyd-async describes a
    frame per event as ``(1, rows, cols)``)."""
    a = np.asarray(data)
    if a.ndim > 2 and int(np.prod(a.shape[:-2])) == 1:
        a = a.reshape(a.shape[-2:])
    return a


class DetectorFrameTap:
    """Detector-side hook: keeps the frames a detector has written until the streamer takes them.

    Args:
        detector: a device with ``frame_listeners`` (``sim_devices.detector.SimAreaDetector``).
        max_bytes: frame bytes held at most; older frames are dropped beyond (the receiver
            recovers them from the file), so a stalled network cannot exhaust memory.
    """

    def __init__(self, detector, *, max_bytes: float = 512e6):
        if not isinstance(getattr(detector, "frame_listeners", None), list):
            raise ValueError(f"detector {getattr(detector, 'name', detector)!r} offers no frame_listeners, so no tap "
                             "can take its frames as they are written: use FileFrameTap() (frames read back from "
                             "its HDF5 files), or stream it without a tap (the reconstructor reads the files at the "
                             "run's stop)")
        self.detector = detector
        self.max_bytes = float(max_bytes)
        self._bytes = 0
        self._frames: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.dropped = 0
        detector.frame_listeners.append(self._on_frame)

    def _on_frame(self, uri: str, index: int, frame: np.ndarray) -> None:
        with self._lock:
            self._frames[(uri, int(index))] = frame
            self._bytes += frame.nbytes
            while self._bytes > self.max_bytes and len(self._frames) > 1:
                self._bytes -= self._frames.popitem(last=False)[1].nbytes
                self.dropped += 1

    def take(self, uri: str, index: int, dataset: str | None = None) -> np.ndarray | None:
        with self._lock:
            f = self._frames.pop((uri, int(index)), None)
            self._bytes -= f.nbytes if f is not None else 0
            return f

    @property
    def mask(self) -> np.ndarray:
        return np.asarray(self.detector.mask, bool)

    def release(self) -> None:
        """End of a run: nothing to close (frames not taken age out)."""

    def detach(self) -> None:
        if self._on_frame in self.detector.frame_listeners:
            self.detector.frame_listeners.remove(self._on_frame)


class FileFrameTap:
    """Reads each file-backed frame from its HDF5 file as its event arrives (SWMR, read-only).

    Args:
        mask: the detector's valid-pixel mask ``(rows, cols)`` (True = good), if known; else the
            streamer's own or none (the reconstructor derives one from the frames).
    """

    def __init__(self, mask: np.ndarray | None = None):
        self.mask = None if mask is None else np.asarray(mask, bool)
        self._files: dict[str, h5py.File] = {}
        self._refused: set[str] = set()
        self.read = 0

    def _open(self, path: str) -> h5py.File | None:
        if path in self._refused:
            return None
        f = self._files.get(path)
        if f is None:
            try:
                f = h5py.File(path, "r", libver="latest", swmr=True)
            except OSError as exc:
                self._refused.add(path)
                log.warning("cannot read %s while it is written (%s); its frames go to the reconstructor from the "
                            "file at the run's stop (turn SWMR on in the detector's file writer to stream them live)",
                            path, str(exc).splitlines()[0])
                return None
            self._files[path] = f
        return f

    def take(self, uri: str, index: int, dataset: str | None = None) -> np.ndarray | None:
        """Frame ``index`` of ``dataset`` in the file at ``uri``, ``(rows, cols)``; None when the file
        cannot be read now (the reconstructor recovers the frame at the stop)."""
        path = uri_path(uri)
        f = self._open(path)
        if f is None:
            return None
        try:
            ds = f[dataset or DEFAULT_DATASET]
            ds.refresh()                        # SWMR: see the frames appended since the last read
            if int(index) >= ds.shape[0]:
                return None
            frame = as_frame(ds[int(index)])
        except (OSError, KeyError, ValueError) as exc:
            log.warning("cannot read frame %d of %s (%s); the reconstructor recovers it at the run's stop",
                        int(index), path, str(exc).splitlines()[0])
            return None
        self.read += 1
        return frame

    def release(self) -> None:
        """Close the files read (at each run's stop: the detector may move or delete them later)."""
        for f in self._files.values():
            try:
                f.close()
            except Exception:      # a file gone under us: nothing left to release
                pass
        self._files.clear()
        self._refused.clear()

    def detach(self) -> None:
        self.release()


def frame_tap(detector, mask: np.ndarray | None = None):
    """The tap ``detector`` allows: its frame hook (:class:`DetectorFrameTap`) where it has one,
    else its files (:class:`FileFrameTap`, with ``mask``)."""
    if isinstance(getattr(detector, "frame_listeners", None), list):
        return DetectorFrameTap(detector)
    return FileFrameTap(mask)
