"""The project's scan file: one CXI-style HDF5 file per scan ("bp-scan" format, version 2; version 1 is read too).

The full specification (every path, shape, dtype, unit and attribute, the orientation
conventions, the versioning policy and a plain-h5py reading snippet) is ``docs/dataset-format.md``.

Layout in short (``n_a`` = n_angles, ``n_p`` = n_positions, ``(n1, n2)`` = detector crop):
frames ``/entry_1/data_1/data`` uint32 ``[n_a, n_p, n1, n2]`` (one bitshuffle/LZ4 chunk per frame),
``/entry_1/data_1/measured`` uint8 ``[n_a, n_p]``, translations ``[n_p, 3]`` (m) and rocking angles
``[n_a]`` (deg) under ``/entry_1/sample_1/geometry_1``, energy (J), distance, pixel sizes (m), mask
and count time (s) under ``/entry_1/instrument_1``, geometry JSON, conventions and the pixel of q = 0
(``q0_pixel``, version 2) as ``/entry_1`` attributes, optional ``/entry_1/ground_truth_1`` for simulated data. The ``P_*`` constants are the paths.
Every dataset has a ``units`` attribute (``"1"`` = dimensionless). The frame filter needs
``hdf5plugin`` (:mod:`bp_plugin.h5filters`, imported here, registers it; without it frames are
written uncompressed).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from .geometry import ExperimentGeometry
from .h5filters import MISSING, frame_compression, hdf5plugin

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Conventions", "DatasetError", "DatasetWriter", "ScanDataset",
           "read_dataset", "write_dataset", "ENTRY", "P_DATA", "P_MEASURED", "P_TRANSLATION", "P_ANGLE",
           "P_ENERGY", "P_DISTANCE", "P_X_PIXEL", "P_Y_PIXEL", "P_MASK", "P_COUNT_TIME", "P_GROUND_TRUTH"]

FORMAT_NAME = "bp-scan"
FORMAT_VERSION = 2

ENTRY = "/entry_1"
P_DATA = "/entry_1/data_1/data"
P_MEASURED = "/entry_1/data_1/measured"
P_TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
P_ANGLE = "/entry_1/sample_1/geometry_1/rocking_angle"
P_ENERGY = "/entry_1/instrument_1/source_1/energy"
P_DISTANCE = "/entry_1/instrument_1/detector_1/distance"
P_X_PIXEL = "/entry_1/instrument_1/detector_1/x_pixel_size"
P_Y_PIXEL = "/entry_1/instrument_1/detector_1/y_pixel_size"
P_MASK = "/entry_1/instrument_1/detector_1/mask"
P_COUNT_TIME = "/entry_1/instrument_1/detector_1/count_time"
P_GROUND_TRUTH = "/entry_1/ground_truth_1"

#: required dataset path -> (units attribute, dtype and shape) ; n_a = n_angles, n_p = n_positions
REQUIRED = {P_DATA: ("counts", "uint32 or float32 [n_a, n_p, n1, n2]"), P_MEASURED: ("1", "uint8 [n_a, n_p]"),
            P_TRANSLATION: ("m", "float64 [n_p, 3]"), P_ANGLE: ("deg", "float64 [n_a]"),
            P_ENERGY: ("J", "float64 scalar"), P_DISTANCE: ("m", "float64 scalar"),
            P_X_PIXEL: ("m", "float64 scalar"), P_Y_PIXEL: ("m", "float64 scalar"), P_MASK: ("1", "uint8 [n1, n2]")}
OPTIONAL = {P_COUNT_TIME: ("s", "float64 scalar")}

CONVENTIONS_DOC = (
    "sign +1 means: increasing n1 index (axis 2 of data) = +q along e1; increasing n2 index "
    "(axis 3) = +q along e2; increasing rocking angle = +q along the rocking direction (+y); "
    "translation = displacement of the sample in the lab frame (x, y, z). -1 means the opposite. "
    "q0_pixel = (n1, n2) index, in the stored frames, of the pixel at q = 0 (the reflection's Bragg peak "
    "for the reference lattice); flips are made about it.")
_WRITER = "bp_plugin.dataset.DatasetWriter / write_dataset (creates every required dataset when the file is opened)"


class DatasetError(ValueError):
    """A scan file or in-memory :class:`ScanDataset` breaks the format; the message says what and how to fix it."""


@dataclass
class Conventions:
    """Orientation of the stored arrays relative to the project frames (each sign +1 or -1, see
    ``CONVENTIONS_DOC``) and ``q0_pixel``: the ``(n1, n2)`` index, in the stored frames, of the
    pixel at q = 0. ``None`` means the centre of the crop, ``(N1 // 2, N2 // 2)``, which is where
    the reconstruction puts q = 0; :func:`read_dataset` returns data with ``q0_pixel`` at the centre.
    """

    n1_sign: int = 1
    n2_sign: int = 1
    angle_sign: int = 1
    translation_sign: int = 1
    q0_pixel: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, int]:
        """The four signs (the ``convention_*`` attributes)."""
        return {"n1_sign": int(self.n1_sign), "n2_sign": int(self.n2_sign),
                "angle_sign": int(self.angle_sign), "translation_sign": int(self.translation_sign)}

    def q0(self, crop) -> tuple[int, int]:
        """``q0_pixel`` for frames of shape ``crop``, the centre when it is ``None``."""
        return tuple(int(c) // 2 for c in crop) if self.q0_pixel is None else tuple(int(v) for v in self.q0_pixel)


def _version1_q0(signs: "Conventions", crop) -> tuple[int, int]:
    """Where a version-1 file had q = 0: version 1 reversed a -1 axis as ``i -> N - 1 - i`` and then
    took pixel ``N // 2``, so its stored q = 0 pixel was ``N - 1 - N // 2`` on such an axis."""
    return tuple(int(n) // 2 if sign > 0 else int(n) - 1 - int(n) // 2
                 for n, sign in zip(crop, (signs.n1_sign, signs.n2_sign)))


def normalise_axis(a: np.ndarray, axis: int, sign: int, q0: int, fill=0) -> np.ndarray:
    """Re-index ``axis`` of ``a`` so that index ``k`` holds q = ``k - N // 2`` along +e (sign +1):
    source index ``i = q0 + sign (k - N // 2)``; indices that fall outside the stored frame are
    ``fill`` (the reader masks them: nothing was measured there). A flip keeps q = 0 where it is:
    for even ``N`` it is not the plain reversal ``i -> N - 1 - i``, which moves q = 0 by one pixel.
    """
    n = a.shape[axis]
    src = q0 + sign * (np.arange(n) - n // 2)
    ok = (src >= 0) & (src < n)
    if ok.all() and (sign > 0 or q0 == n - 1 - n // 2):
        return a if sign > 0 else np.flip(a, axis)             # plain copies where they are exact
    out = np.take(a, np.clip(src, 0, n - 1), axis=axis)
    shape = [1] * a.ndim
    shape[axis] = n
    return np.where(ok.reshape(shape), out, np.asarray(fill, a.dtype))


@dataclass
class ScanDataset:
    """One scan in memory.

    Attributes:
        geometry: the experiment; must agree with the arrays (n_angles, crop, raster_shape).
        frames: detector counts ``[n_angles, n_positions, n1, n2]``, unsigned int or float32,
            finite and non-negative; ``None`` after ``read_dataset(..., load_frames=False)``.
        translations_m: sample translation per position ``[n_positions, 3]``, lab ``(x, y, z)``, metres.
        angles_deg: rocking angles ``[n_angles]`` in degrees, strictly monotonic (ascending after reading).
        mask: ``[n1, n2]`` bool, True = valid pixel.
        measured: ``[n_angles, n_positions]`` bool, True = frame was recorded (False frames are zeros).
        count_time_s: exposure per frame (s), or None.
        conventions: orientation of the arrays (all +1 after :func:`read_dataset`).
        ground_truth: simulated truth, name -> numeric (complex allowed) array.
        ground_truth_attrs: scalars / strings / 1D sequences about the truth (voxel size, origin, ...);
            a string ``"<name>_units"`` entry gives the ``units`` of array ``<name>`` (default ``"arb"``).
        metadata: free-form JSON-serialisable dict (preset, flux, sample description, ...).
    """

    geometry: ExperimentGeometry
    frames: np.ndarray | None
    translations_m: np.ndarray
    angles_deg: np.ndarray
    mask: np.ndarray
    measured: np.ndarray
    count_time_s: float | None = None
    conventions: Conventions = field(default_factory=Conventions)
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)
    ground_truth_attrs: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Check every field and their consistency; raise :class:`DatasetError` listing all problems."""
        frames_shape = np.shape(self.frames) if self.frames is not None else (
            (self.geometry.n_angles, (np.shape(self.translations_m) or (0,))[0], *self.geometry.crop)
            if isinstance(self.geometry, ExperimentGeometry) else ())
        frames_dtype = np.asarray(self.frames).dtype if self.frames is not None else np.dtype(np.uint32)
        problems = _check_arrays(self.geometry, frames_shape, frames_dtype, self.translations_m,
                                 self.angles_deg, self.mask, self.measured, self.conventions,
                                 self.count_time_s)
        if self.frames is not None and not problems:
            problems += _check_frame_values(np.asarray(self.frames), np.asarray(self.measured, bool))
        problems += _check_extras(self.ground_truth, self.ground_truth_attrs, self.metadata)
        if problems:
            raise DatasetError(_report("invalid ScanDataset", problems))


# --- checks (shared by the in-memory validation, the writer and the reader) --------------------

def _report(what: str, problems: list[str]) -> str:
    return f"{what}: {len(problems)} problem(s)\n  - " + "\n  - ".join(problems)


def _frame_dtype_ok(dtype) -> bool:
    dtype = np.dtype(dtype)
    return dtype.kind == "u" or dtype == np.float32


def _is_01(a: np.ndarray) -> bool:
    return a.dtype.kind in "biu" and bool(np.all((a == 0) | (a == 1)))


def _check_arrays(geometry, frames_shape, frames_dtype, translations, angles, mask, measured,
                  conventions, count_time) -> list[str]:
    """Shapes, dtypes and cross-consistency; each message names field, HDF5 path, expected, actual, fix."""
    p: list[str] = []
    if not isinstance(geometry, ExperimentGeometry):
        return [f"geometry ({ENTRY} attribute geometry_json): expected an ExperimentGeometry, got "
                f"{type(geometry).__name__}; fix: build one with bp_plugin.geometry.ExperimentGeometry(...)"]
    translations, angles = np.asarray(translations), np.asarray(angles)
    mask, measured = np.asarray(mask), np.asarray(measured)
    if len(frames_shape) != 4:
        p.append(f"frames ({P_DATA}): expected 4D [n_angles, n_positions, n1, n2], got shape "
                 f"{tuple(frames_shape)}; fix: reshape to angle-major order (angle outer, position inner)")
        n_a, n_p, n1, n2 = geometry.n_angles, (translations.shape or (0,))[0], *geometry.crop
    else:
        n_a, n_p, n1, n2 = (int(s) for s in frames_shape)
    if not _frame_dtype_ok(frames_dtype):
        p.append(f"frames ({P_DATA}): expected dtype uint32 (any unsigned int, or float32), got "
                 f"{np.dtype(frames_dtype)}; fix: check values are >= 0 and cast with .astype(np.uint32)")
    if translations.shape != (n_p, 3) or translations.dtype.kind != "f":
        p.append(f"translations_m ({P_TRANSLATION}): expected float64 shape [n_positions={n_p}, 3] (m, "
                 f"lab x, y, z), got {translations.dtype} shape {translations.shape}; "
                 "fix: one (x, y, z) row per position")
    elif not np.all(np.isfinite(translations)):
        p.append(f"translations_m ({P_TRANSLATION}): expected finite values (m), got NaN/inf")
    if angles.shape != (n_a,) or angles.dtype.kind not in "fiu":
        p.append(f"angles_deg ({P_ANGLE}): expected float64 shape [n_angles={n_a}] (deg), got "
                 f"{angles.dtype} shape {angles.shape}; fix: one rocking angle per frame-stack along axis 0")
    elif not (np.all(np.isfinite(angles)) and (np.all(np.diff(angles * 1.0) > 0) or np.all(np.diff(angles * 1.0) < 0))):
        p.append(f"angles_deg ({P_ANGLE}): expected finite, strictly monotonic rocking angles (deg), got "
                 f"{np.array2string(angles, precision=5)}; "
                 "fix: sort the angles and reorder axis 0 of the frames with them")
    if mask.shape != (n1, n2) or not _is_01(mask):
        p.append(f"mask ({P_MASK}): expected bool/uint8 0-1 values of shape [n1={n1}, n2={n2}] (frame shape), "
                 f"got {mask.dtype} shape {mask.shape}; fix: mask = np.ones((n1, n2), bool) with False on bad pixels")
    if measured.shape != (n_a, n_p) or not _is_01(measured):
        p.append(f"measured ({P_MEASURED}): expected bool/uint8 0-1 values of shape [n_angles={n_a}, "
                 f"n_positions={n_p}], got {measured.dtype} shape {measured.shape}")
    if int(geometry.n_angles) != n_a:
        p.append(f"geometry.n_angles ({ENTRY} attribute geometry_json): expected {n_a} (frames axis 0), "
                 f"got {geometry.n_angles}; fix: dataclasses.replace(geometry, n_angles={n_a})")
    if tuple(int(c) for c in geometry.crop) != (n1, n2):
        p.append(f"geometry.crop ({ENTRY} attribute geometry_json): expected ({n1}, {n2}) (frame shape n1, n2), "
                 f"got {tuple(geometry.crop)}; fix: dataclasses.replace(geometry, crop=({n1}, {n2}))")
    if math.prod(int(r) for r in geometry.raster_shape) != n_p:
        p.append(f"geometry.raster_shape ({ENTRY} attribute geometry_json): expected a product of "
                 f"n_positions = {n_p}, got {tuple(geometry.raster_shape)}; "
                 "fix: set raster_shape to the (n_y, n_x) scanned")
    signs = conventions.as_dict() if isinstance(conventions, Conventions) else {}
    bad = {k: v for k, v in signs.items() if v not in (1, -1)}
    if not isinstance(conventions, Conventions) or bad:
        p.append(f"conventions ({ENTRY} attributes convention_*): expected a Conventions with signs +1/-1, "
                 f"got {bad or conventions!r}")
    elif conventions.q0_pixel is not None:
        q0 = tuple(conventions.q0_pixel)
        if len(q0) != 2 or not all(isinstance(v, (int, np.integer)) and 0 <= v < n for v, n in zip(q0, (n1, n2))):
            p.append(f"conventions.q0_pixel ({ENTRY} attribute q0_pixel): expected two integer pixel indices "
                     f"0 <= i1 < {n1}, 0 <= i2 < {n2} (where q = 0 falls in the stored frames), got {q0!r}; "
                     "fix: the pixel of the Bragg peak of the reference lattice, rounded to whole pixels "
                     "(a fraction of a pixel is a constant phase ramp, which the reconstruction absorbs)")
    if count_time is not None and not (np.ndim(count_time) == 0 and np.isfinite(count_time) and count_time > 0):
        p.append(f"count_time_s ({P_COUNT_TIME}): expected a positive scalar (s) or None, got {count_time!r}")
    return p


def _bad_frame_list(idx: np.ndarray) -> str:
    pairs = [f"(angle {i}, position {j})" for i, j in idx[:8]]
    more = f" and {len(idx) - 8} more" if len(idx) > 8 else ""
    return ", ".join(pairs) + more


def _check_frame_values(frames: np.ndarray, measured: np.ndarray) -> list[str]:
    """NaN / inf / negative counts in measured frames, naming the (angle, position) indices."""
    if frames.dtype.kind == "u":
        return []
    p, nonfinite, negative = [], np.zeros(measured.shape, bool), np.zeros(measured.shape, bool)
    for i, stack in enumerate(frames):  # one angle at a time: no full-size temporary
        nonfinite[i] = ~np.isfinite(stack).all(axis=(1, 2)) & measured[i]
        negative[i] = (stack < 0).any(axis=(1, 2)) & measured[i]
    if nonfinite.any():
        p.append(f"frames ({P_DATA}): expected finite counts, got NaN or inf in frame(s) "
                 f"{_bad_frame_list(np.argwhere(nonfinite))}; fix: re-measure, or zero those pixels and mask them")
    if negative.any():
        p.append(f"frames ({P_DATA}): expected non-negative counts, got negative values in frame(s) "
                 f"{_bad_frame_list(np.argwhere(negative))}; "
                 "fix: clip the background subtraction at 0 (np.clip(frames, 0, None))")
    return p


def _json_default(o):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _attr_value(v):
    """Python / numpy value -> something h5py stores as a native attribute, or raise TypeError."""
    if isinstance(v, (str, bool, int, float, complex, np.generic)):
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        a = np.asarray(v)
        if a.dtype.kind in "biufc" or a.dtype.kind == "U":
            return a.astype(h5py.string_dtype()) if a.dtype.kind == "U" else a
    raise TypeError(f"{type(v).__name__} {v!r:.60}")


def _check_extras(ground_truth, gt_attrs, metadata) -> list[str]:
    p = []
    for name, arr in dict(ground_truth).items():
        if not isinstance(name, str) or not name or "/" in name:
            p.append(f"ground_truth ({P_GROUND_TRUTH}): expected array names without '/', got {name!r}")
        elif np.asarray(arr).dtype.kind not in "biufc":
            p.append(f"ground_truth[{name!r}] ({P_GROUND_TRUTH}/{name}): expected a numeric (real or complex) "
                     f"array, got dtype {np.asarray(arr).dtype}")
    for key, v in dict(gt_attrs).items():
        try:
            _attr_value(v)
        except TypeError as e:
            p.append(f"ground_truth_attrs[{key!r}] ({P_GROUND_TRUTH} attribute): expected a number, string or 1D "
                     f"sequence, got {e}; fix: put nested or free-form values in metadata")
    try:
        json.dumps(metadata, default=_json_default)
    except (TypeError, ValueError) as e:
        p.append(f"metadata ({ENTRY} attribute metadata_json): expected a JSON-serialisable dict, got: {e}")
    return p


# --- writing ------------------------------------------------------------------------------------

def _dataset(f: h5py.File, path: str, units: str, **kw) -> h5py.Dataset:
    d = f.create_dataset(path, **kw)
    d.attrs["units"] = units
    return d


def write_truth_group(f: h5py.File, arrays: dict, attrs: dict, *, where: str) -> None:
    """Add ground-truth ``arrays`` (gzip-compressed, complex stored natively; ``units`` from
    ``attrs["<name>_units"]``, else ``"arb"``) and group ``attrs`` under ``P_GROUND_TRUTH`` of an
    open file (a scan file or a truth file, :mod:`bp_plugin.truth`); :class:`DatasetError` naming
    ``where`` for a bad name, value or an array already there."""
    problems = _check_extras(arrays, attrs, {})
    g = f.require_group(P_GROUND_TRUTH)
    problems += [f"ground_truth[{n!r}] ({P_GROUND_TRUTH}/{n}): already written; fix: use another name"
                 for n in arrays if isinstance(n, str) and n in g]
    if problems:
        raise DatasetError(_report(where, problems))
    for k, v in attrs.items():
        g.attrs[k] = _attr_value(v)
    for name, arr in arrays.items():
        a = np.asarray(arr)
        kw = dict(compression="gzip", compression_opts=4, shuffle=True) if a.size > 1 else {}
        units = attrs.get(f"{name}_units", g.attrs.get(f"{name}_units", "arb"))
        _dataset(f, f"{P_GROUND_TRUTH}/{name}", str(units), data=a, **kw)


def read_truth_group(f: h5py.File) -> tuple[dict, dict]:
    """``(arrays, attrs)`` under ``P_GROUND_TRUTH`` of an open file (empty dicts if it has none)."""
    if P_GROUND_TRUTH not in f:
        return {}, {}
    g = f[P_GROUND_TRUTH]
    return ({k: v[()] for k, v in g.items() if isinstance(v, h5py.Dataset)},
            {k: _from_attr(v) for k, v in g.attrs.items()})


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
            raise DatasetError(_report("DatasetWriter", _check_arrays(geometry, (), None, 0, 0, 0, 0, 0, None)))
        n_p = math.prod(int(r) for r in geometry.raster_shape)
        shape = (int(geometry.n_angles), n_p, int(geometry.crop[0]), int(geometry.crop[1]))
        problems = _check_arrays(geometry, shape, self.dtype, translations, angles, mask,
                                 np.zeros(shape[:2], bool), conventions, count_time_s)
        problems += _check_extras({}, {}, metadata)
        if problems:
            raise DatasetError(_report(f"DatasetWriter({str(self.path)!r})", problems))
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
        e.attrs["metadata_json"] = json.dumps(metadata, default=_json_default)
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


def write_dataset(path, ds: ScanDataset, *, overwrite: bool = True) -> None:
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


# --- reading ------------------------------------------------------------------------------------

def _from_attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.dtype.kind in "OS":
        return np.array([x.decode() if isinstance(x, bytes) else x for x in v.ravel()]).reshape(v.shape)
    return v


def open_hdf5(path):
    """``h5py.File(path, "r")``, with a :class:`DatasetError` that says what is wrong with a file
    that is not HDF5 or was cut short (h5py's own message names neither the file nor the fix)."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        why = str(exc)
        if "signature not found" in why:
            raise DatasetError(f"{path} is not an HDF5 file (no HDF5 signature): give a bp-scan file "
                               f"(docs/dataset-format.md), e.g. one written by {_WRITER}") from None
        if "truncated" in why:
            raise DatasetError(f"{path} is truncated ({why.split('(', 1)[-1].rstrip(')')}): it was cut short "
                               "while being written or copied; copy it again from the source") from None
        raise DatasetError(f"{path} cannot be opened as HDF5: {why}") from None


def read_dataset(path, *, allow_partial: bool = False, load_frames: bool = True, flip_n1: bool = False,
                 flip_n2: bool = False, flip_angle: bool = False, flip_translation: bool = False,
                 conventions: Conventions | None = None) -> ScanDataset:
    """Read and validate a scan file; return it normalised to the all-+1 conventions.

    The stored ``convention_*`` and ``q0_pixel`` attributes (or ``conventions`` if given, for files
    whose attributes are wrong) are combined with the ``flip_*`` options (each flips one sign), then
    the frame axes (axes 2 and 3, the mask's 0 and 1) are re-indexed so that pixel ``N // 2`` is
    q = 0 and increasing index is +q (:func:`normalise_axis`: a -1 axis is flipped *about* q = 0,
    and pixels that fall outside the stored frame read 0 and are masked); translation sign -1
    negates the translations; angles become ``angle_sign * angles`` and axis 0 (frames, measured,
    angles) is put in ascending angle order. Version-1 files, which had no ``q0_pixel``, read as
    they always did (a -1 axis reversed ``i -> N - 1 - i``). The returned ``conventions`` are all
    +1 with q = 0 at the centre.

    Args:
        allow_partial: accept files whose ``measured`` is not all 1 (aborted / streaming scans);
            missing frames are zeros.
        load_frames: False skips reading the frames (``frames`` is None, their values are not checked).
    Raises:
        DatasetError: listing every problem (path, expected, actual, fix). FileNotFoundError.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a scan file: name the .h5 file in it")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scan file")
    with open_hdf5(path) as f:
        fmt, ver = _from_attr(f.attrs.get("bp_plugin_format")), _from_attr(f.attrs.get("bp_plugin_format_version"))
        if fmt != FORMAT_NAME:
            raise DatasetError(f"{path}: root attribute bp_plugin_format: expected {FORMAT_NAME!r}, got {fmt!r}; "
                               f"this is not a bp-scan file (write one with {_WRITER})")
        if not isinstance(ver, int) or not 1 <= ver <= FORMAT_VERSION:
            raise DatasetError(f"{path}: root attribute bp_plugin_format_version: expected 1..{FORMAT_VERSION}, "
                               f"got {ver!r}; fix: upgrade bp_plugin to read newer files")
        missing = [p for p in REQUIRED if not isinstance(f.get(p), h5py.Dataset)]
        if missing:
            raise DatasetError(_report(f"{path}", [
                f"{p}: missing required dataset ({REQUIRED[p][1]}, units {REQUIRED[p][0]!r}); it is written by {_WRITER}"
                for p in missing]))
        problems = []
        for p, (units, _) in {**REQUIRED, **OPTIONAL}.items():
            if p in f:
                got = _from_attr(f[p].attrs.get("units"))
                if got != units:
                    problems.append(f"{p}: units attribute expected {units!r}, got {got!r}; fix: convert the "
                                    f"values to {units!r} and set attrs['units'] = {units!r}")
        e = f[ENTRY]
        try:
            geometry = ExperimentGeometry.from_dict(json.loads(_from_attr(e.attrs["geometry_json"])))
        except (KeyError, ValueError, TypeError) as err:
            raise DatasetError(_report(f"{path}", problems + [
                f"{ENTRY} attribute geometry_json: expected ExperimentGeometry.to_dict() as JSON, got error {err}; "
                f"it is written by {_WRITER}"])) from None
        d = f[P_DATA]
        try:
            stored = Conventions(*(int(e.attrs[f"convention_{k}"]) for k in Conventions().as_dict()))
        except KeyError as err:
            stored = Conventions()
            problems.append(f"{ENTRY}: missing attribute {err}; expected +1/-1; fix: set it, or pass "
                            "conventions=Conventions(...) to read_dataset")
        if ver >= 2 and "q0_pixel" in e.attrs:
            stored = replace(stored, q0_pixel=tuple(int(v) for v in np.ravel(e.attrs["q0_pixel"])))
        elif ver >= 2:
            problems.append(f"{ENTRY}: missing attribute 'q0_pixel' (int64 [2], the stored pixel of q = 0); "
                            "fix: set it, or pass conventions=Conventions(..., q0_pixel=(i1, i2)) to read_dataset")
        conv = stored if conventions is None else conventions
        if ver == 1 and conv.q0_pixel is None and len(d.shape) == 4:
            conv = replace(conv, q0_pixel=_version1_q0(conv, d.shape[2:]))
        translations, angles = f[P_TRANSLATION][()], f[P_ANGLE][()]
        mask, measured = f[P_MASK][()], f[P_MEASURED][()]
        count_time = f[P_COUNT_TIME][()] if P_COUNT_TIME in f else None
        problems += _check_arrays(geometry, d.shape, d.dtype, translations, angles, mask, measured, conv, count_time)
        for p, value in ((P_ENERGY, geometry.energy_j), (P_DISTANCE, geometry.distance_m),
                         (P_X_PIXEL, geometry.pixel_size_m), (P_Y_PIXEL, geometry.pixel_size_m)):
            got = f[p][()]
            if np.shape(got) != () or not math.isclose(float(got), value, rel_tol=1e-9):
                problems.append(f"{p}: expected scalar {value!r} {REQUIRED[p][0]} (from geometry_json), got "
                                f"{got!r}; fix: make the dataset and the geometry attribute agree")
        if "hkl" in e.attrs and tuple(np.ravel(e.attrs["hkl"])) != tuple(geometry.hkl):
            problems.append(f"{ENTRY} attribute hkl: expected {tuple(geometry.hkl)} (geometry_json), got "
                            f"{tuple(np.ravel(e.attrs['hkl']))}")
        try:
            metadata = json.loads(_from_attr(e.attrs.get("metadata_json", "{}")))
        except ValueError as err:
            metadata = {}
            problems.append(f"{ENTRY} attribute metadata_json: expected a JSON object, got error {err}")
        if problems:
            raise DatasetError(_report(f"invalid bp-scan file {path}", problems))
        measured, count_time = measured.astype(bool), None if count_time is None else float(count_time)
        n_missing = int((~measured).sum())
        if n_missing and not allow_partial:
            raise DatasetError(f"{path} ({P_MEASURED}): incomplete scan, {n_missing} of {measured.size} frames "
                               f"missing (first: {_bad_frame_list(np.argwhere(~measured)[:3])}); the scan was aborted "
                               "or is still being written; read_dataset(path, allow_partial=True) reads it, "
                               "missing frames as zeros")
        frames = None
        if load_frames:
            try:
                frames = d[()]
            except OSError as err:                      # h5py's word for "no such filter"
                if hdf5plugin is None:
                    raise DatasetError(f"{path} ({P_DATA}): {MISSING}") from None
                raise DatasetError(f"{path} ({P_DATA}): the frames cannot be read ({err}); the file is damaged "
                                   "or was truncated while being written") from None
            frames[~measured] = 0
            problems = _check_frame_values(frames, measured)
            if problems:
                raise DatasetError(_report(f"invalid bp-scan file {path}", problems))
        ground_truth, gt_attrs = {}, {}
        ground_truth, gt_attrs = read_truth_group(f)
    # normalise to the all-+1 conventions: frame axes re-indexed about q = 0 (pixels that fall
    # outside the stored frame are masked), angles ascending, translations signed
    n1s, n2s, angs, trs = (sign * (-1 if flip else 1) for sign, flip in zip(
        conv.as_dict().values(), (flip_n1, flip_n2, flip_angle, flip_translation)))
    q0 = conv.q0(mask.shape)
    mask = mask.astype(bool)
    for axis, sign, c in ((2, n1s, q0[0]), (3, n2s, q0[1])):
        mask = normalise_axis(mask, axis - 2, sign, c, fill=False)
        if frames is not None:
            frames = normalise_axis(frames, axis, sign, c)
    angles = angs * angles.astype(np.float64)
    if angles.size > 1 and angles[0] > angles[-1]:
        angles, measured = angles[::-1], measured[::-1]
        frames = None if frames is None else frames[::-1]
    return ScanDataset(
        geometry=geometry,
        frames=None if frames is None else np.ascontiguousarray(frames),
        translations_m=trs * translations.astype(np.float64),
        angles_deg=np.ascontiguousarray(angles), mask=np.ascontiguousarray(mask),
        measured=np.ascontiguousarray(measured), count_time_s=count_time, conventions=Conventions(),
        ground_truth=ground_truth, ground_truth_attrs=gt_attrs, metadata=metadata)
