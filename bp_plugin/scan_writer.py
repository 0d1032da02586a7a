"""Writing scan files: :class:`DatasetWriter` (frame by frame, a valid partial scan after every
frame: detector plans, the simulator, the streaming spool), :func:`write_dataset` (a whole
:class:`~bp_plugin.dataset.ScanDataset`) and the ground-truth group they share with truth files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .geometry import ExperimentGeometry
from .h5filters import frame_compression
from .scan_format import (CONVENTIONS_DOC, ENTRY, FORMAT_NAME, FORMAT_VERSION, P_ANGLE, P_COUNT_TIME, P_DATA,
                          P_DISTANCE, P_ENERGY, P_GROUND_TRUTH, P_MASK, P_MEASURED, P_TRANSLATION, P_X_PIXEL,
                          P_Y_PIXEL, Conventions, DatasetError, attr_value, check_arrays, check_extras,
                          json_default, report)

if TYPE_CHECKING:
    from .dataset import ScanDataset


def _dataset(f: h5py.File, path: str, units: str, **kw) -> h5py.Dataset:
    d = f.create_dataset(path, **kw)
    d.attrs["units"] = units
    return d


def write_truth_group(f: h5py.File, arrays: dict, attrs: dict, *, where: str) -> None:
    """Add ground-truth ``arrays`` (gzip-compressed, complex stored natively; ``units`` from
    ``attrs["<name>_units"]``, else ``"arb"``) and group ``attrs`` under ``P_GROUND_TRUTH`` of an
    open file (a scan file or a truth file, :mod:`bp_plugin.truth`); :class:`DatasetError` naming
    ``where`` for a bad name, value or an array already there."""
    problems = check_extras(arrays, attrs, {})
    g = f.require_group(P_GROUND_TRUTH)
    problems += [f"ground_truth[{n!r}] ({P_GROUND_TRUTH}/{n}): already written; fix: use another name"
                 for n in arrays if isinstance(n, str) and n in g]
    if problems:
        raise DatasetError(report(where, problems))
    for k, v in attrs.items():
        g.attrs[k] = attr_value(v)
    for name, arr in arrays.items():
        a = np.asarray(arr)
        kw = dict(compression="gzip", compression_opts=4, shuffle=True) if a.size > 1 else {}
        units = attrs.get(f"{name}_units", g.attrs.get(f"{name}_units", "arb"))
        _dataset(f, f"{P_GROUND_TRUTH}/{name}", str(units), data=a, **kw)


class DatasetWriter:
    """Create a scan file and append frames one by one (detector plans, simulator, streaming reconstructor).

    Every required dataset is created in ``__init__`` (frames are zeros, ``measured`` all 0); each
    :meth:`write_frame` writes one chunk, sets ``measured[i, j] = 1`` and flushes, so the file on
    disk is a valid partial scan after every call: a scan that aborts loses nothing written before,
    and ``read_dataset(path, allow_partial=True)`` reads it. Writing a frame twice replaces it.
    An existing file is refused unless ``overwrite=True`` (it could be a measured scan).

    Args:
        path: output file (``.h5`` or ``.cxi``).
        geometry: the experiment; fixes ``n_angles`` and the frame shape ``crop = (n1, n2)``.
        translations_m: ``[n_positions, 3]`` lab ``(x, y, z)`` sample translations (m).
        angles_deg: ``[n_angles]`` strictly monotonic rocking angles (deg).
        mask: ``[n1, n2]`` bool, True = valid pixel.
        count_time_s: exposure per frame (s).
        conventions: orientation of the frames / angles / translations as given (default all +1).
        metadata: free-form JSON-serialisable dict.
        dtype: frame dtype on disk: an unsigned int (default uint32) or float32.
    """

    def __init__(self, path, geometry: ExperimentGeometry, translations_m, angles_deg, mask, *,
                 count_time_s: float | None = None, conventions: Conventions | None = None,
                 metadata: dict | None = None, dtype=np.uint32, overwrite: bool = False):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        conventions = Conventions() if conventions is None else conventions
        metadata = {} if metadata is None else metadata
        translations = np.asarray(translations_m)
        if translations.dtype.kind in "iuf":
            translations = translations.astype(np.float64)
        angles = np.asarray(angles_deg, dtype=np.float64)
        mask = np.asarray(mask)
        if not isinstance(geometry, ExperimentGeometry):
            raise DatasetError(report("DatasetWriter", check_arrays(geometry, (), None, 0, 0, 0, 0, 0, None)))
        n_p = math.prod(int(r) for r in geometry.raster_shape)
        shape = (int(geometry.n_angles), n_p, int(geometry.crop[0]), int(geometry.crop[1]))
        problems = check_arrays(geometry, shape, self.dtype, translations, angles, mask,
                                 np.zeros(shape[:2], bool), conventions, count_time_s)
        problems += check_extras({}, {}, metadata)
        if problems:
            raise DatasetError(report(f"DatasetWriter({str(self.path)!r})", problems))
        if self.path.exists() and not overwrite:
            raise DatasetError(f"{self.path}: file exists (it may hold a measured scan); fix: choose a new "
                               "file name or pass overwrite=True")
        self.shape = shape
        f = self._file = h5py.File(self.path, "w")
        f.attrs["bp_plugin_format"] = FORMAT_NAME
        f.attrs["bp_plugin_format_version"] = FORMAT_VERSION
        e = f.create_group(ENTRY)
        e.attrs["geometry_json"] = json.dumps(geometry.to_dict())
        e.attrs["hkl"] = np.asarray(geometry.hkl, dtype=np.int64)
        e.attrs["theta_bragg_deg"] = math.degrees(geometry.theta_bragg_rad)
        for k, v in conventions.as_dict().items():
            e.attrs[f"convention_{k}"] = v
        e.attrs["q0_pixel"] = np.asarray(conventions.q0(shape[2:]), dtype=np.int64)
        e.attrs["conventions"] = CONVENTIONS_DOC
        e.attrs["metadata_json"] = json.dumps(metadata, default=json_default)
        self._data = _dataset(f, P_DATA, "counts", shape=shape, dtype=self.dtype, chunks=(1, 1, *shape[2:]),
                              fillvalue=0, **frame_compression())
        self._measured = _dataset(f, P_MEASURED, "1", data=np.zeros(shape[:2], np.uint8))
        _dataset(f, P_TRANSLATION, "m", data=translations)
        _dataset(f, P_ANGLE, "deg", data=angles)
        _dataset(f, P_ENERGY, "J", data=np.float64(geometry.energy_j))
        _dataset(f, P_DISTANCE, "m", data=np.float64(geometry.distance_m))
        _dataset(f, P_X_PIXEL, "m", data=np.float64(geometry.pixel_size_m))
        _dataset(f, P_Y_PIXEL, "m", data=np.float64(geometry.pixel_size_m))
        _dataset(f, P_MASK, "1", data=mask.astype(np.uint8))
        if count_time_s is not None:
            _dataset(f, P_COUNT_TIME, "s", data=np.float64(count_time_s))
        self.n_measured = 0
        f.flush()

    def _check_open(self) -> None:
        if self._file is None or not self._file.id.valid:
            raise DatasetError(f"{self.path}: writer is closed; fix: open a new DatasetWriter")

    def _check_frame(self, i: int, j: int, frame: np.ndarray) -> None:
        n_a, n_p, n1, n2 = self.shape
        where = f"frame (angle {i}, position {j}) for {P_DATA} in {self.path}"
        if not (0 <= i < n_a and 0 <= j < n_p):
            raise DatasetError(f"{where}: expected 0 <= angle < {n_a} and 0 <= position < {n_p}, got ({i}, {j})")
        if frame.shape != (n1, n2):
            raise DatasetError(f"{where}: expected shape (n1, n2) = ({n1}, {n2}) (geometry.crop), got "
                               f"{frame.shape}; fix: crop the detector image to geometry.crop")
        if frame.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: expected real counts (int or float), got dtype {frame.dtype}")
        if frame.dtype.kind == "f" and not np.all(np.isfinite(frame)):
            raise DatasetError(f"{where}: expected finite counts, got {int(np.sum(~np.isfinite(frame)))} NaN/inf "
                               "pixel(s); fix: zero them and mask the pixels")
        if frame.size and frame.min() < 0:
            raise DatasetError(f"{where}: expected non-negative counts, got minimum {frame.min()}; fix: clip at 0")
        if self.dtype.kind == "u":
            if frame.dtype.kind == "f" and np.any(frame != np.round(frame)):
                raise DatasetError(f"{where}: expected integer counts for dtype {self.dtype}, got fractional values; "
                                   "fix: round them, or create the writer with dtype=np.float32")
            if frame.size and frame.max() > np.iinfo(self.dtype).max:
                raise DatasetError(f"{where}: expected counts <= {np.iinfo(self.dtype).max} ({self.dtype}), got "
                                   f"{frame.max()}; fix: create the writer with a wider dtype")

    def write_frame(self, angle_index: int, position_index: int, frame: np.ndarray, *, flush: bool = True) -> None:
        """Write frame ``[n1, n2]`` at (angle, position), mark it measured, flush to disk.

        Values must be real, finite and non-negative (integral for an integer dtype); raises
        :class:`DatasetError` naming the frame otherwise.
        """
        self._check_open()
        i, j, frame = int(angle_index), int(position_index), np.asarray(frame)
        self._check_frame(i, j, frame)
        self._data[i, j] = frame.astype(self.dtype, copy=False)
        if not self._measured[i, j]:
            self.n_measured += 1
        self._measured[i, j] = 1  # after the frame: a crash in between leaves the frame unmeasured
        if flush:
            self._file.flush()

    def write_ground_truth(self, arrays: dict, attrs: dict | None = None) -> None:
        """Add simulated truth arrays (gzip-compressed, complex stored natively) and group attributes."""
        self._check_open()
        attrs = {} if attrs is None else attrs
        write_truth_group(self._file, arrays, attrs, where=f"write_ground_truth({str(self.path)!r})")
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._file is not None and self._file.id.valid:
            self._file.flush()
            self._file.close()
        self._file = None

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_dataset(path, ds: "ScanDataset", *, overwrite: bool = True) -> None:
    """Validate ``ds`` and write it to ``path`` (replacing an existing file unless ``overwrite=False``).

    Only frames with ``measured`` True are written; the others read back as zeros.
    """
    ds.validate()
    if ds.frames is None:
        raise DatasetError("frames: expected an array [n_angles, n_positions, n1, n2], got None "
                           "(read with load_frames=False); fix: read_dataset(path, load_frames=True)")
    frames, measured = np.asarray(ds.frames), np.asarray(ds.measured, bool)
    with DatasetWriter(path, ds.geometry, ds.translations_m, ds.angles_deg, ds.mask,
                       count_time_s=ds.count_time_s, conventions=ds.conventions, metadata=ds.metadata,
                       dtype=frames.dtype, overwrite=overwrite) as w:
        for i in range(frames.shape[0]):
            if measured[i].all():
                w._data[i] = frames[i]
            else:
                for j in np.flatnonzero(measured[i]):
                    w._data[i, j] = frames[i, j]
        w._measured[...] = measured.astype(np.uint8)
        w.n_measured = int(measured.sum())
        if ds.ground_truth or ds.ground_truth_attrs:
            w.write_ground_truth(ds.ground_truth, ds.ground_truth_attrs)
