"""The frame-streaming wire protocol (``bp-stream``, version 1): encode and decode, nothing else.

Every message is a ZeroMQ multipart message: part 0 is a UTF-8 JSON header, part 1 (``frame`` and
``mask`` messages only) the array as raw C-ordered bytes, sent without a copy. Any ZeroMQ client in
any language can produce it; docs/streaming-protocol.md is the reference. Message kinds:

- ``start``: a new run: ``geometry`` (``ExperimentGeometry.to_dict()``), ``translations_m``
  (``n_positions x 3``, lab frame, m), ``n_frames`` expected, optional ``roi_origin`` (frames are whole
  detector frames, the receiver crops the ROI from there), ``scan`` and ``sim``; optional
  ``technique``: ``"bragg-ptychography"`` (default) or ``"dfxrm"`` (then ``geometry`` is a
  ``DfxrmGeometry`` dict, ``scan`` the plan's ``dfxrm_scan``, ``translations_m`` empty, and each
  frame's ``motors`` carries the scanned angles as ``<axis>_deg``);
- ``mask``: valid-pixel mask of the frames (uint8, 1 = good), optional;
- ``frame``: one detector frame with ``frame_index`` (0-based order in the run), ``angle_index``,
  ``position_index``, ``motors`` and optional ``source`` (where the raw frame lies on disk);
- ``stop``: end of run: ``exit_status``, ``n_frames`` sent, optional ``sources`` (the detector files,
  for a receiver that must recover frames it never got).

All messages carry ``protocol = "bp-stream"``, ``version``, ``kind``, ``run_uid`` and ``seq``
(0 for ``start``, +1 per message of the run): a receiver sees gaps and duplicates in ``seq``.
A ``run_uid`` names a folder on the receiver: 1-128 characters of letters, digits, ``.``, ``_`` and
``-``, starting with a letter or digit (a UUID is one). Receipts (what the receiver holds of a
run) go over a second socket: :mod:`streaming.receipts`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

PROTOCOL = "bp-stream"
VERSION = 1
KINDS = ("start", "mask", "frame", "stop")
TECHNIQUES = ("bragg-ptychography", "dfxrm")
FRAME_DTYPES = ("<u2", "<u4", "<i4", "<f4")
MAX_HEADER_BYTES = 1 << 20


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text says what is wrong."""


_RUN_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_uid(uid) -> str:
    """``uid`` if it is a safe run uid (it becomes a folder name); else :class:`ProtocolError`."""
    if not isinstance(uid, str) or not _RUN_UID.fullmatch(uid):
        raise ProtocolError(f"run_uid {uid!r} is not 1-128 letters, digits, '.', '_' or '-' starting with a "
                            "letter or digit (a UUID is one)")
    return uid


@dataclass
class Message:
    """A decoded message: its header (dict) and, for ``frame`` / ``mask``, the array (read-only view)."""

    kind: str
    run_uid: str
    seq: int
    header: dict
    array: np.ndarray | None = field(default=None, repr=False)


def _header(kind: str, run_uid: str, seq: int, **fields) -> dict:
    return {"protocol": PROTOCOL, "version": VERSION, "kind": kind, "run_uid": check_run_uid(str(run_uid)),
            "seq": int(seq), **fields}


def _dump(h: dict) -> bytes:
    return json.dumps(h, separators=(",", ":"), allow_nan=False).encode()


def encode_start(run_uid: str, seq: int, geometry: dict, translations_m, n_frames: int, *,
                 scan: dict | None = None, sim: dict | None = None, roi_origin=None) -> list:
    """``start`` message. ``translations_m``: ``(n_positions, 3)`` sample translations (m).

    ``roi_origin``: (row, col) of the reconstruction ROI (``geometry["crop"]``) on the frames, when the
    sender streams whole detector frames and lets the receiver crop them (None: frames are the ROI).
    """
    t = np.asarray(translations_m, float)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ProtocolError(f"translations_m must be (n_positions, 3), got shape {t.shape}")
    extra = {"roi_origin": [int(v) for v in roi_origin]} if roi_origin is not None else {}
    return [_dump(_header("start", run_uid, seq, geometry=geometry, translations_m=t.tolist(),
                          n_frames=int(n_frames), scan=scan or {}, sim=sim, **extra))]


def encode_dfxrm_start(run_uid: str, seq: int, geometry: dict, scan: dict, n_frames: int, *,
                       sim: dict | None = None, series: dict | None = None) -> list:
    """``start`` message of a DF-XRM run: ``scan`` is the plan's ``dfxrm_scan`` (axes, centre, shape,
    background, resolution), ``geometry`` a ``DfxrmGeometry`` dict, ``series`` the run's place in
    an in-situ series (:mod:`plans.time_series`; published with its maps)."""
    extra = {"series": series} if series else {}
    h = _header("start", run_uid, seq, technique="dfxrm", geometry=geometry, translations_m=[],
                n_frames=int(n_frames), scan=scan, sim=sim, **extra)
    raw = _dump(h)
    check_dfxrm_start(json.loads(raw))       # the receiver's view: refuse here what it would refuse
    return [raw]


DFXRM_AXES = ("phi", "chi", "tth")
MAX_FRAME_SIDE = 16384
MAX_FRAMES = 10_000_000
MAX_MOMENT_BYTES = 16 << 30


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def check_dfxrm_start(h: dict) -> None:
    """Raise :class:`ProtocolError` unless a DF-XRM ``start`` header is one a receiver can act on:
    ``scan.axes`` 1-3 distinct names of ``phi``, ``chi``, ``tth`` (a topo-tomography: ``omega``,
    ``phi`` and its own fields, :func:`_check_topotomo`); ``scan.frame_shape`` two positive
    integers up to 16384; ``scan.centre_deg`` absent, null or one finite number per axis;
    ``scan.order`` absent, 2 or 4; ``background_counts`` / ``noise_floor_counts`` finite and >= 0;
    ``resolution_deg`` absent or axis -> finite sigma >= 0; ``n_frames`` in 1 .. 10^7; the running
    sums within 16 GiB; ``geometry`` a valid ``DfxrmGeometry``."""
    scan = h.get("scan")
    if not isinstance(scan, dict):
        raise ProtocolError("DF-XRM start message without a scan object")
    axes = scan.get("axes")
    ser = h.get("series")
    if ser is not None and not (isinstance(ser, dict) and isinstance(ser.get("uid"), str)
                                and isinstance(ser.get("index"), int) and not isinstance(ser.get("index"), bool)):
        raise ProtocolError(f"DF-XRM start message: series {ser!r:.80} must be an object with a string uid and "
                            "an integer index (plans.time_series)")
    if scan.get("kind") == "topotomo":
        _check_topotomo(scan, h.get("n_frames"))
    elif not (isinstance(axes, list) and 1 <= len(axes) <= 3 and all(isinstance(a, str) and a in DFXRM_AXES for a in axes)
              and len(set(axes)) == len(axes)):
        raise ProtocolError(f"DF-XRM start message: scan.axes {axes!r} must list 1-3 distinct names of {DFXRM_AXES}")
    fs = scan.get("frame_shape")
    if not (isinstance(fs, list) and len(fs) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                          and 0 < v <= MAX_FRAME_SIDE for v in fs)):
        raise ProtocolError(f"DF-XRM start message: scan.frame_shape {fs!r} must be [rows, cols], "
                            f"positive integers up to {MAX_FRAME_SIDE}")
    c = scan.get("centre_deg")
    if c is not None and not (isinstance(c, list) and len(c) == len(axes) and all(_finite(v) for v in c)):
        raise ProtocolError(f"DF-XRM start message: scan.centre_deg {c!r} must be one finite angle per axis {axes}")
    if scan.get("order", 2) not in (2, 4):
        raise ProtocolError(f"DF-XRM start message: scan.order {scan.get('order')!r} must be 2 or 4")
    for key in ("background_counts", "noise_floor_counts"):
        if key in scan and not (_finite(scan[key]) and scan[key] >= 0):
            raise ProtocolError(f"DF-XRM start message: scan.{key} {scan[key]!r} must be a finite number >= 0")
    res = scan.get("resolution_deg") or {}
    if not (isinstance(res, dict) and all(k in DFXRM_AXES and _finite(v) and v >= 0 for k, v in res.items())):
        raise ProtocolError(f"DF-XRM start message: scan.resolution_deg {res!r} must map axis names of "
                            f"{DFXRM_AXES} to finite sigmas >= 0 (deg)")
    if not 0 < h["n_frames"] <= MAX_FRAMES:
        raise ProtocolError(f"DF-XRM start message: n_frames {h['n_frames']} must be in 1..{MAX_FRAMES}")
    n = len(axes)
    rows = 1 + n + n * (n + 1) // 2 + (2 * n if scan.get("order", 2) == 4 else 0)
    nbytes = rows * fs[0] * fs[1] * 12 + 32 * fs[0] * fs[1] * 4      # float64 sums + float32 products + batch
    if nbytes > MAX_MOMENT_BYTES:
        raise ProtocolError(f"DF-XRM start message: moments of {n} axes at order {scan.get('order', 2)} on "
                            f"{fs[0]} x {fs[1]} frames need {nbytes / 2**30:.1f} GiB (limit "
                            f"{MAX_MOMENT_BYTES / 2**30:.0f} GiB); bin the frames or keep order 2")
    from bp_plugin.dfxrm.geometry import DfxrmGeometry
    try:
        DfxrmGeometry.from_dict(h["geometry"])
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"DF-XRM start message: geometry is not usable: {exc}") from None


def _check_topotomo(scan: dict, n_frames) -> None:
    """A topo-tomography's own fields: axes ``["omega", "phi"]``, ``omegas_deg`` finite,
    ``projection_points`` a positive integer, their product the frames announced, ``tth_deg`` in (0, 180)."""
    om, pts, tth = scan.get("omegas_deg"), scan.get("projection_points"), scan.get("tth_deg")
    if scan.get("axes") != ["omega", "phi"]:
        raise ProtocolError(f"DF-XRM topo-tomography start message: scan.axes {scan.get('axes')!r} must be "
                            "['omega', 'phi']")
    if not (isinstance(om, list) and om and all(_finite(v) for v in om)):
        raise ProtocolError("DF-XRM topo-tomography start message: scan.omegas_deg must be a list of finite angles")
    if not (isinstance(pts, int) and not isinstance(pts, bool) and pts > 0 and pts * len(om) == n_frames):
        raise ProtocolError(f"DF-XRM topo-tomography start message: projection_points {pts!r} x {len(om)} omegas "
                            f"must be the {n_frames} frames announced")
    if not (_finite(tth) and 0 < tth < 180):
        raise ProtocolError(f"DF-XRM topo-tomography start message: tth_deg {tth!r} must be in (0, 180)")
    from bp_plugin.dfxrm.topotomo import coverage_problem
    why = coverage_problem(om)
    if why:
        raise ProtocolError(f"DF-XRM topo-tomography start message: {why}")


MAX_POSITIONS = 100_000


def _all_finite(v) -> bool:
    if isinstance(v, dict):
        return all(_all_finite(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return all(_all_finite(x) for x in v)
    return not isinstance(v, float) or np.isfinite(v)


def check_bragg_start(h: dict) -> None:
    """Raise :class:`ProtocolError` unless a Bragg ptychography ``start`` header is one a receiver
    can act on: a valid ``ExperimentGeometry`` with finite numbers and a crop of at most 16384 pixels
    a side, ``translations_m`` ``(n_positions, 3)`` finite numbers with 1 <= n_positions <= 10^5,
    ``n_frames`` in 1 .. n_angles x n_positions. (What the machine can hold is the receiver's check.)"""
    from bp_plugin.geometry import ExperimentGeometry

    geo = h["geometry"]
    if not _all_finite(geo):
        raise ProtocolError("start message: the geometry holds NaN or infinite numbers (e.g. distance_m): "
                            "send finite values")
    try:
        g = ExperimentGeometry.from_dict(geo)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"start message: geometry is not usable: {exc}") from None
    if max(g.crop) > MAX_FRAME_SIDE:
        raise ProtocolError(f"start message: crop {tuple(g.crop)} exceeds {MAX_FRAME_SIDE} pixels a side")
    t = h["translations_m"]
    if not (0 < len(t) <= MAX_POSITIONS and all(isinstance(r, list) and len(r) == 3 for r in t)):
        raise ProtocolError(f"start message: translations_m must be 1..{MAX_POSITIONS} rows of 3 numbers (m), "
                            f"got {len(t)} rows")
    if not all(_finite(v) for r in t for v in r):
        raise ProtocolError("start message: translations_m holds NaN, infinite or non-numeric values")
    if not 0 < h["n_frames"] <= g.n_angles * len(t):
        raise ProtocolError(f"start message: n_frames {h['n_frames']} must be in 1..{g.n_angles * len(t)} "
                            f"(angles x positions)")


def encode_mask(run_uid: str, seq: int, mask: np.ndarray) -> list:
    """``mask`` message: ``(N1, N2)`` bool or 0/1 array, True / 1 = valid pixel."""
    m = np.ascontiguousarray(np.asarray(mask).astype(np.uint8))
    return [_dump(_header("mask", run_uid, seq, dtype="|u1", shape=list(m.shape))), m]


def encode_frame(run_uid: str, seq: int, frame: np.ndarray, *, frame_index: int, angle_index: int,
                 position_index: int, motors: dict | None = None, source: dict | None = None) -> list:
    """``frame`` message: header and the frame itself (C-contiguous; sent as is, no copy).

    Args:
        frame: ``(N1, N2)`` counts, uint16 / uint32 / int32 / float32: the reconstruction ROI of
            the start message's geometry, or the whole detector frame when the start gave ``roi_origin``.
        motors: readbacks, e.g. ``{"eta_deg": ..., "x_m": ..., "y_m": ...}``.
        source: where the raw frame lies: ``{"file", "dataset", "index", "roi_origin"}``.
    """
    f = np.ascontiguousarray(frame)
    if f.dtype.str not in FRAME_DTYPES:
        raise ProtocolError(f"frame dtype {f.dtype} is not one of {FRAME_DTYPES}; convert it before sending")
    h = _header("frame", run_uid, seq, frame_index=int(frame_index), angle_index=int(angle_index),
                position_index=int(position_index), dtype=f.dtype.str, shape=list(f.shape),
                motors={k: float(v) for k, v in (motors or {}).items()})
    if source:
        h["source"] = source
    return [_dump(h), f]


def encode_stop(run_uid: str, seq: int, *, exit_status: str, n_frames: int, sources: list | None = None) -> list:
    """``stop`` message. ``sources``: ``[{"file", "dataset", "roi_origin", "frames": [[i_file, ia, ip], ...]}]``."""
    return [_dump(_header("stop", run_uid, seq, exit_status=str(exit_status), n_frames=int(n_frames),
                          sources=sources or []))]


def crop_roi(a: np.ndarray, origin, shape) -> np.ndarray:
    """The ``shape`` = (N1, N2) region of a frame or mask starting at ``origin`` = (row, col) (a view)."""
    (r0, c0), (n1, n2) = origin, shape
    return a[r0:r0 + n1, c0:c0 + n2]


def _need(h: dict, key: str, types, kind: str):
    if key not in h:
        raise ProtocolError(f"{kind} message without {key!r}")
    if not isinstance(h[key], types) or (isinstance(h[key], bool) and types is int):
        raise ProtocolError(f"{kind} message: {key!r} has the wrong type ({type(h[key]).__name__})")
    return h[key]


def decode(parts) -> Message:
    """Decode a multipart message (list of bytes / zmq.Frame); raises :class:`ProtocolError`."""
    if not parts:
        raise ProtocolError("empty message")
    raw = parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        h = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(h, dict) or h.get("protocol") != PROTOCOL:
        raise ProtocolError(f"not a {PROTOCOL} message (protocol field: {h.get('protocol') if isinstance(h, dict) else h!r})")
    if h.get("version") != VERSION:
        raise ProtocolError(f"protocol version {h.get('version')} is not supported (this receiver speaks {VERSION})")
    kind = h.get("kind")
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind!r} (expected one of {KINDS})")
    run_uid = check_run_uid(_need(h, "run_uid", str, kind))
    seq = _need(h, "seq", int, kind)
    array = None
    if kind in ("frame", "mask"):
        if len(parts) != 2:
            raise ProtocolError(f"{kind} message must have 2 parts (header, array), got {len(parts)}")
        dtype, shape = _need(h, "dtype", str, kind), _need(h, "shape", list, kind)
        if kind == "frame" and dtype not in FRAME_DTYPES or kind == "mask" and dtype != "|u1":
            raise ProtocolError(f"{kind} message: dtype {dtype!r} not allowed")
        if len(shape) != 2 or not all(isinstance(n, int) and n > 0 for n in shape):
            raise ProtocolError(f"{kind} message: shape {shape} is not (N1, N2)")
        buf = memoryview(parts[1].buffer if hasattr(parts[1], "buffer") else parts[1]).cast("B")
        nbytes = np.dtype(dtype).itemsize * shape[0] * shape[1]
        if buf.nbytes != nbytes:
            raise ProtocolError(f"{kind} message: {buf.nbytes} payload bytes, header says {shape} {dtype} = {nbytes}")
        array = np.frombuffer(buf, dtype=dtype).reshape(shape)
        if kind == "frame":
            for key in ("frame_index", "angle_index", "position_index"):
                if _need(h, key, int, kind) < 0:
                    raise ProtocolError(f"frame message: negative {key}")
    elif kind == "start":
        _need(h, "geometry", dict, kind)
        _need(h, "translations_m", list, kind)
        _need(h, "n_frames", int, kind)
        if h.get("technique", TECHNIQUES[0]) not in TECHNIQUES:
            raise ProtocolError(f"start message: technique {h.get('technique')!r} is not one of {TECHNIQUES}")
        if h.get("technique") == "dfxrm":
            check_dfxrm_start(h)
        else:
            check_bragg_start(h)
        roi = h.get("roi_origin")
        if roi is not None and not (isinstance(roi, list) and len(roi) == 2
                                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in roi)):
            raise ProtocolError(f"start message: roi_origin {roi!r} is not [row, col] of two non-negative integers")
    elif kind == "stop":
        _need(h, "n_frames", int, kind)
    return Message(kind, run_uid, seq, h, array)
