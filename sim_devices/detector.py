"""A simulated area detector (Maxipix-like) that a RunEngine drives exactly like hardware.

``SimAreaDetector`` is an ophyd ``Device``:

- ``stage()`` opens a new HDF5 file in its write directory (:class:`DetectorFile`, SWMR, one chunk per
  frame, appended and flushed per frame); ``unstage()`` closes it. Nothing is kept only in memory.
- ``trigger()`` computes a frame from the *current readbacks* of the motors (through the
  ``frame_source`` callable that the beamline factory supplies), writes it, and returns a status
  that finishes when the frame is on disk; with ``realtime=True`` it also lasts ``count_time``.
- ``describe()`` declares ``{name}_image`` as external ``STREAM:`` data (uint32 or uint16, with
  ``dtype_numpy``, so the Tiled writer keeps uint32) and ``{name}_total`` (the sum of valid pixels,
  in each event, for live rocking curves and maps without opening the file).
- ``frame_listeners``: callables ``f(file_uri, index, frame)`` called in the trigger thread after
  each frame is written (the detector-side hook a frame streamer taps, see ``streaming.sender``);
- ``collect_asset_docs()`` yields one StreamResource per file (mimetype ``application/x-hdf5``,
  dataset ``/entry/data/data``) and one StreamDatum per frame, as bluesky's ``WritesStreamAssets``
  protocol asks.
"""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
from event_model import compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from .detector_file import DATASET, DetectorFile


class SimAreaDetector(Device):
    """Counting area detector whose frames come from a simulator.

    Args:
        name: ophyd name.
        frame_source: ``f(count_time_s) -> (rows, cols)`` of ``dtype``: the frame for the current
            motor positions and exposure.
        frame_shape: (rows, cols).
        pixel_size_m: pixel pitch (m), as binned.
        mask: valid-pixel mask, bool ``(rows, cols)``.
        write_dir: directory of the HDF5 files (must be readable by the Tiled server to browse).
        count_time_s: initial exposure (s).
        realtime: make each trigger last ``count_time`` like a real exposure.
        dtype: frame dtype (uint32 photon counter; uint16 for a DF-XRM sCMOS camera).
    """

    count_time = Cpt(Signal, value=0.2, kind="config")
    total = Cpt(Signal, value=0, kind="hinted")

    def __init__(self, *, name: str, frame_source: Callable[[float], np.ndarray], frame_shape: tuple[int, int],
                 pixel_size_m: float, mask: np.ndarray, write_dir, count_time_s: float = 0.2,
                 realtime: bool = False, dtype=np.uint32, **kwargs):
        super().__init__(name=name, **kwargs)
        self.frame_source = frame_source
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.pixel_size_m = float(pixel_size_m)
        self.mask = np.asarray(mask, bool)
        self.write_dir = Path(write_dir)
        self.realtime = realtime
        self.dtype = np.dtype(dtype)
        self.count_time.put(float(count_time_s))
        self._file: DetectorFile | None = None
        self._bundle = None
        self._n_announced = 0
        self.file_history: list[Path] = []
        # detector-side frame hooks, like a real detector's stream interface (Eiger's ZeroMQ
        # stream): f(file_uri, index_in_file, frame) after the frame is safely on disk
        self.frame_listeners: list[Callable[[str, int, np.ndarray], None]] = []

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    @property
    def file(self) -> DetectorFile | None:
        """The open detector file (None when not staged)."""
        return self._file

    # --- staging ------------------------------------------------------------------------------
    def stage(self):
        path = self.write_dir / f"{self.name}_{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:8]}.h5"
        self._file = DetectorFile(path, self.frame_shape, pixel_size_m=self.pixel_size_m,
                                  count_time_s=float(self.count_time.get()), mask=self.mask, dtype=self.dtype)
        self.file_history.append(path)
        self._bundle = None
        self._n_announced = 0
        return super().stage()

    def unstage(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        return super().unstage()

    # --- acquisition --------------------------------------------------------------------------
    def trigger(self):
        if self._file is None:
            raise RuntimeError(f"{self.name} is not staged: run it inside a plan that stages it "
                               "(bluesky's stage_decorator, or any standard plan), so it has a file to write to")
        status = DeviceStatus(self)
        count_time = float(self.count_time.get())
        if not count_time > 0:
            raise ValueError(f"{self.name}.count_time is {count_time} s; set a positive exposure")

        def work():
            try:
                t0 = time.monotonic()
                frame = self.frame_source(count_time)
                index = self._file.append(frame)
                for listener in list(self.frame_listeners):
                    listener(self._file.uri, index, frame)
                self.total.put(int(frame[self.mask].sum(dtype=np.uint64)))
                if self.realtime:
                    time.sleep(max(0.0, count_time - (time.monotonic() - t0)))
            except Exception as exc:  # the RunEngine reports it and aborts the plan
                status.set_exception(exc)
            else:
                status.set_finished()

        threading.Thread(target=work, daemon=True, name=f"{self.name}-trigger").start()
        return status

    def describe(self):
        d = super().describe()
        d[self.image_key] = {
            "source": f"SIM:{self.name}:image", "dtype": "array", "dtype_numpy": self.dtype.str,
            "shape": list(self.frame_shape), "dims": ["n1", "n2"], "units": "counts", "external": "STREAM:",
        }
        return d

    def describe_configuration(self):
        d = super().describe_configuration()
        d[f"{self.name}_count_time"]["units"] = "s"
        return d

    # --- bluesky WritesStreamAssets -----------------------------------------------------------
    def get_index(self) -> int:
        """Frames written to the current file."""
        return 0 if self._file is None else self._file.n_frames

    def collect_asset_docs(self, index: int | None = None):
        """StreamResource (once per file) and StreamDatum documents for frames not yet announced."""
        if self._file is None:
            return
        n = self._file.n_frames if index is None else min(int(index), self._file.n_frames)
        if n <= self._n_announced:
            return
        if self._bundle is None:
            self._bundle = compose_stream_resource(
                mimetype="application/x-hdf5", uri=self._file.uri, data_key=self.image_key,
                parameters={"dataset": DATASET, "chunk_shape": (1, *self.frame_shape)})
            yield "stream_resource", self._bundle.stream_resource_doc
        yield "stream_datum", self._bundle.compose_stream_datum(indices={"start": self._n_announced, "stop": n})
        self._n_announced = n
