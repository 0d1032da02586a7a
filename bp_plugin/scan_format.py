"""The scan file's format ("bp-scan", docs/dataset-format.md): its paths, units, conventions and the
checks that the in-memory validation, the writer and the reader share. Each check returns a list of
messages that name the field, its HDF5 path, what was expected, what was found and the fix.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import h5py
import numpy as np

from .geometry import ExperimentGeometry

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
WRITER = "bp_plugin.dataset.DatasetWriter / write_dataset (creates every required dataset when the file is opened)"


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


def version1_q0(signs: "Conventions", crop) -> tuple[int, int]:
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


# --- checks ------------------------------------------------------------------------------------

def report(what: str, problems: list[str]) -> str:
    return f"{what}: {len(problems)} problem(s)\n  - " + "\n  - ".join(problems)


def frame_dtype_ok(dtype) -> bool:
    dtype = np.dtype(dtype)
    return dtype.kind == "u" or dtype == np.float32


def is_01(a: np.ndarray) -> bool:
    return a.dtype.kind in "biu" and bool(np.all((a == 0) | (a == 1)))


def check_arrays(geometry, frames_shape, frames_dtype, translations, angles, mask, measured,
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
    if not frame_dtype_ok(frames_dtype):
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
    if mask.shape != (n1, n2) or not is_01(mask):
        p.append(f"mask ({P_MASK}): expected bool/uint8 0-1 values of shape [n1={n1}, n2={n2}] (frame shape), "
                 f"got {mask.dtype} shape {mask.shape}; fix: mask = np.ones((n1, n2), bool) with False on bad pixels")
    if measured.shape != (n_a, n_p) or not is_01(measured):
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


def bad_frame_list(idx: np.ndarray) -> str:
    pairs = [f"(angle {i}, position {j})" for i, j in idx[:8]]
    more = f" and {len(idx) - 8} more" if len(idx) > 8 else ""
    return ", ".join(pairs) + more


def check_frame_values(frames: np.ndarray, measured: np.ndarray) -> list[str]:
    """NaN / inf / negative counts in measured frames, naming the (angle, position) indices."""
    if frames.dtype.kind == "u":
        return []
    p, nonfinite, negative = [], np.zeros(measured.shape, bool), np.zeros(measured.shape, bool)
    for i, stack in enumerate(frames):  # one angle at a time: no full-size temporary
        nonfinite[i] = ~np.isfinite(stack).all(axis=(1, 2)) & measured[i]
        negative[i] = (stack < 0).any(axis=(1, 2)) & measured[i]
    if nonfinite.any():
        p.append(f"frames ({P_DATA}): expected finite counts, got NaN or inf in frame(s) "
                 f"{bad_frame_list(np.argwhere(nonfinite))}; fix: re-measure, or zero those pixels and mask them")
    if negative.any():
        p.append(f"frames ({P_DATA}): expected non-negative counts, got negative values in frame(s) "
                 f"{bad_frame_list(np.argwhere(negative))}; "
                 "fix: clip the background subtraction at 0 (np.clip(frames, 0, None))")
    return p


def json_default(o):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def attr_value(v):
    """Python / numpy value -> something h5py stores as a native attribute, or raise TypeError."""
    if isinstance(v, (str, bool, int, float, complex, np.generic)):
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        a = np.asarray(v)
        if a.dtype.kind in "biufc" or a.dtype.kind == "U":
            return a.astype(h5py.string_dtype()) if a.dtype.kind == "U" else a
    raise TypeError(f"{type(v).__name__} {v!r:.60}")


def check_extras(ground_truth, gt_attrs, metadata) -> list[str]:
    p = []
    for name, arr in dict(ground_truth).items():
        if not isinstance(name, str) or not name or "/" in name:
            p.append(f"ground_truth ({P_GROUND_TRUTH}): expected array names without '/', got {name!r}")
        elif np.asarray(arr).dtype.kind not in "biufc":
            p.append(f"ground_truth[{name!r}] ({P_GROUND_TRUTH}/{name}): expected a numeric (real or complex) "
                     f"array, got dtype {np.asarray(arr).dtype}")
    for key, v in dict(gt_attrs).items():
        try:
            attr_value(v)
        except TypeError as e:
            p.append(f"ground_truth_attrs[{key!r}] ({P_GROUND_TRUTH} attribute): expected a number, string or 1D "
                     f"sequence, got {e}; fix: put nested or free-form values in metadata")
    try:
        json.dumps(metadata, default=json_default)
    except (TypeError, ValueError) as e:
        p.append(f"metadata ({ENTRY} attribute metadata_json): expected a JSON-serialisable dict, got: {e}")
    return p
