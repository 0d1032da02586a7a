"""An ophyd-async ``StandardDetector`` whose frames are the simulator's, written as its HDF writers do.

Built from ophyd-async's own parts, the way its areaDetector drivers are (a trigger logic, an
acquire logic, a data logic): ``prepare`` opens an HDF5 file (one dataset ``(n, rows, cols)``,
chunked by frame, SWMR) and describes a frame per event as ``(1, rows, cols)``; each ``trigger``
computes the frame at the motors' readbacks (the simulated beamline's frame source), appends it
and counts it on ``frames_written``; ``collect_asset_docs`` announces the file and the frames by
StreamResource / StreamDatum (ophyd-async's ``StreamResourceDataProvider``). No frame hook: a
streamer reads its frames back from the file, as from any real file-writing detector.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

import numpy as np
from ophyd_async.core import (DetectorAcquireLogic, DetectorDataLogic, DetectorTriggerLogic, StandardDetector,
                              StreamResourceDataProvider, StreamResourceInfo, soft_signal_r_and_setter)

from sim_devices.detector_file import DATASET, DetectorFile


class _Trigger(DetectorTriggerLogic):
    def __init__(self, det: "SimFrameDetector"):
        self.det = det

    async def prepare_internal(self, num: int, livetime: float, deadtime: float):
        if livetime > 0:                     # TriggerInfo's livetime is the exposure; 0: keep the detector's
            self.det.count_time_s = float(livetime)


class _Acquire(DetectorAcquireLogic):
    def __init__(self, det: "SimFrameDetector"):
        self.det = det

    async def start_acquiring(self):
        d = self.det
        d.file.append(d.frame_source(d.count_time_s))
        d.set_written(d.file.n_frames)

    async def wait_for_idle(self):
        return None

    async def ensure_stopped(self):
        return None


class _Data(DetectorDataLogic):
    def __init__(self, det: "SimFrameDetector"):
        self.det = det

    async def prepare_unbounded(self, datakey_name: str):
        d = self.det
        d.close_file()
        path = d.write_dir / f"{d.name}_{uuid.uuid4().hex[:8]}.h5"
        d.file = DetectorFile(path, d.frame_shape, pixel_size_m=d.pixel_size_m, count_time_s=d.count_time_s,
                              dtype=d.dtype)
        d.file_history.append(path)
        d.set_written(0)
        info = StreamResourceInfo(data_key=datakey_name, shape=d.frame_shape, chunk_shape=(1, *d.frame_shape),
                                  dtype_numpy=d.dtype.str, parameters={"dataset": DATASET})
        return StreamResourceDataProvider(uri=d.file.uri, resources=[info], mimetype="application/x-hdf5",
                                          collections_written_signal=d.frames_written)

    async def stop(self):
        self.det.close_file()

    def get_hinted_fields(self, datakey_name: str):
        return [datakey_name]


class SimFrameDetector(StandardDetector):
    """Args: ``frame_source(count_time_s) -> (rows, cols)`` of ``dtype`` (a simulated beamline's or
    microscope's ``detector.frame_source``), ``frame_shape``, ``write_dir``, ``pixel_size_m``,
    ``count_time_s`` (the exposure when a TriggerInfo's livetime is 0), ``name``."""

    def __init__(self, frame_source: Callable[[float], np.ndarray], frame_shape, write_dir, *,
                 pixel_size_m: float, count_time_s: float = 0.2, dtype=np.uint32, name: str = ""):
        self.frame_source = frame_source
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.write_dir = Path(write_dir)
        self.pixel_size_m = float(pixel_size_m)
        self.count_time_s = float(count_time_s)
        self.dtype = np.dtype(dtype)
        self.file: DetectorFile | None = None
        self.file_history: list[Path] = []
        self.frames_written, self.set_written = soft_signal_r_and_setter(int, 0)
        self.add_detector_logics(_Trigger(self), _Acquire(self), _Data(self))
        super().__init__(name=name)

    def close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
