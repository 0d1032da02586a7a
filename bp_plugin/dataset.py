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

This module holds the scan in memory (:class:`ScanDataset`) and the reader; the paths, conventions
and checks are :mod:`bp_plugin.scan_format`, the writers :mod:`bp_plugin.scan_writer` (both
re-exported here: ``from bp_plugin.dataset import DatasetWriter`` is the documented spelling).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from .geometry import ExperimentGeometry
from .h5filters import MISSING, hdf5plugin
from .scan_format import (ENTRY, FORMAT_NAME, FORMAT_VERSION, OPTIONAL, P_ANGLE, P_COUNT_TIME, P_DATA, P_DISTANCE,
                          P_ENERGY, P_GROUND_TRUTH, P_MASK, P_MEASURED, P_TRANSLATION, P_X_PIXEL, P_Y_PIXEL,
                          REQUIRED, WRITER, Conventions, DatasetError, bad_frame_list, check_arrays, check_extras,
                          check_frame_values, normalise_axis, report, version1_q0)
from .scan_writer import DatasetWriter, write_dataset, write_truth_group

# the format's public face: what docs/dataset-format.md and users import from here
__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Conventions", "DatasetError", "DatasetWriter", "ScanDataset",
           "read_dataset", "write_dataset", "read_truth_group", "write_truth_group", "open_hdf5", "normalise_axis",
           "ENTRY", "P_DATA", "P_MEASURED", "P_TRANSLATION", "P_ANGLE", "P_ENERGY", "P_DISTANCE", "P_X_PIXEL",
           "P_Y_PIXEL", "P_MASK", "P_COUNT_TIME", "P_GROUND_TRUTH"]


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
        problems = check_arrays(self.geometry, frames_shape, frames_dtype, self.translations_m,
                                 self.angles_deg, self.mask, self.measured, self.conventions,
                                 self.count_time_s)
        if self.frames is not None and not problems:
            problems += check_frame_values(np.asarray(self.frames), np.asarray(self.measured, bool))
        problems += check_extras(self.ground_truth, self.ground_truth_attrs, self.metadata)
        if problems:
            raise DatasetError(report("invalid ScanDataset", problems))


# --- reading ------------------------------------------------------------------------------------

def _from_attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.dtype.kind in "OS":
        return np.array([x.decode() if isinstance(x, bytes) else x for x in v.ravel()]).reshape(v.shape)
    return v


def read_truth_group(f: h5py.File) -> tuple[dict, dict]:
    """``(arrays, attrs)`` under ``P_GROUND_TRUTH`` of an open file (empty dicts if it has none)."""
    if P_GROUND_TRUTH not in f:
        return {}, {}
    g = f[P_GROUND_TRUTH]
    return ({k: v[()] for k, v in g.items() if isinstance(v, h5py.Dataset)},
            {k: _from_attr(v) for k, v in g.attrs.items()})



def open_hdf5(path):
    """``h5py.File(path, "r")``, with a :class:`DatasetError` that says what is wrong with a file
    that is not HDF5 or was cut short (h5py's own message names neither the file nor the fix)."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        why = str(exc)
        if "signature not found" in why:
            raise DatasetError(f"{path} is not an HDF5 file (no HDF5 signature): give a bp-scan file "
                               f"(docs/dataset-format.md), e.g. one written by {WRITER}") from None
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
                               f"this is not a bp-scan file (write one with {WRITER})")
        if not isinstance(ver, int) or not 1 <= ver <= FORMAT_VERSION:
            raise DatasetError(f"{path}: root attribute bp_plugin_format_version: expected 1..{FORMAT_VERSION}, "
                               f"got {ver!r}; fix: upgrade bp_plugin to read newer files")
        missing = [p for p in REQUIRED if not isinstance(f.get(p), h5py.Dataset)]
        if missing:
            raise DatasetError(report(f"{path}", [
                f"{p}: missing required dataset ({REQUIRED[p][1]}, units {REQUIRED[p][0]!r}); it is written by {WRITER}"
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
            raise DatasetError(report(f"{path}", problems + [
                f"{ENTRY} attribute geometry_json: expected ExperimentGeometry.to_dict() as JSON, got error {err}; "
                f"it is written by {WRITER}"])) from None
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
            conv = replace(conv, q0_pixel=version1_q0(conv, d.shape[2:]))
        translations, angles = f[P_TRANSLATION][()], f[P_ANGLE][()]
        mask, measured = f[P_MASK][()], f[P_MEASURED][()]
        count_time = f[P_COUNT_TIME][()] if P_COUNT_TIME in f else None
        problems += check_arrays(geometry, d.shape, d.dtype, translations, angles, mask, measured, conv, count_time)
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
            raise DatasetError(report(f"invalid bp-scan file {path}", problems))
        measured, count_time = measured.astype(bool), None if count_time is None else float(count_time)
        n_missing = int((~measured).sum())
        if n_missing and not allow_partial:
            raise DatasetError(f"{path} ({P_MEASURED}): incomplete scan, {n_missing} of {measured.size} frames "
                               f"missing (first: {bad_frame_list(np.argwhere(~measured)[:3])}); the scan was aborted "
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
            problems = check_frame_values(frames, measured)
            if problems:
                raise DatasetError(report(f"invalid bp-scan file {path}", problems))
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
