"""DF-XRM batch path: the maps of a recorded scan (a Tiled run or a DF-XRM scan file), for replay.

The same :class:`~bp_plugin.dfxrm.MomentAccumulator` as the live service, fed in chunks (the
stack is never held whole), so batch and live maps of the same frames are equal.

DF-XRM scan file (``format = "dfxrm-scan"``, version 1): ``/entry/data/data`` uint16
``(n_frames, rows, cols)`` (one bitshuffle-LZ4 chunk per frame), ``/entry/data/angles_deg``
float64 ``(n_frames, n_axes)`` (the motors' readbacks, columns in ``scan["axes"]`` order); root
attributes ``geometry``, ``scan`` (the plan's ``dfxrm_scan``) and ``sim`` (JSON), ``run_uid``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .dfxrm.geometry import DfxrmGeometry
from .dfxrm.maps import MapOptions, compute_maps
from .dfxrm.moments import MomentAccumulator
from .h5filters import frame_compression   # importing it registers the frames' bitshuffle-LZ4 filter

FORMAT = "dfxrm-scan"


class DfxrmSourceError(ValueError):
    """A recorded scan that cannot give DF-XRM maps; the message says why."""


@dataclass
class DfxrmScan:
    """A recorded scan: ``frames`` (anything sliceable along axis 0: h5py dataset, Tiled array node,
    ndarray) with ``angles_deg`` ``(n, n_axes)``, the plan's ``scan`` dict, ``geometry``, ``sim``."""

    frames: object
    angles_deg: np.ndarray
    scan: dict
    geometry: DfxrmGeometry
    sim: dict | None = None
    run_uid: str | None = None


def scan_from_run(run) -> DfxrmScan:
    """A recorded DF-XRM run in Tiled (``client[uid]``), frames read through Tiled in chunks."""
    start = dict(run.metadata["start"])
    if start.get("technique") != "dfxrm" or "dfxrm_scan" not in start:
        raise DfxrmSourceError(f"run {start.get('uid', '?')[:8]} was not recorded by a DF-XRM plan (no "
                               "technique='dfxrm' / dfxrm_scan in its start document)")
    if "primary" not in run:
        raise DfxrmSourceError(f"run {start['uid'][:8]} has no events: nothing was measured")
    scan, stream = start["dfxrm_scan"], run["primary"]
    missing = [m for m in scan["motors"].values() if m not in stream]
    if missing or scan["image_key"] not in stream:
        raise DfxrmSourceError(f"run {start['uid'][:8]}: primary stream lacks {missing or scan['image_key']}")
    angles = np.stack([np.asarray(stream[scan["motors"][a]].read(), float) for a in scan["axes"]], 1)
    image = stream[scan["image_key"]]
    n = min(len(angles), image.shape[0])
    return DfxrmScan(image, angles[:n], scan, DfxrmGeometry.from_dict(start["dfxrm_geometry"]),
                     start.get("dfxrm_sim"), start["uid"])


def _block(scan: DfxrmScan, a: int, b: int) -> np.ndarray:
    """Frames ``a:b`` as ``(b - a, rows, cols)``: a run's frames described per event as
    ``(1, rows, cols)`` (ophyd-async) are ``(n, 1, rows, cols)`` in Tiled."""
    return np.asarray(scan.frames[a:b]).reshape(-1, *scan.scan["frame_shape"])


def write_scan_file(path, scan: DfxrmScan, *, chunk: int = 64, progress: bool = False) -> Path:
    """Write a recorded scan as a DF-XRM scan file (see the module docstring)."""
    from tqdm import tqdm

    path = Path(path)
    n = len(scan.angles_deg)
    shape = tuple(scan.scan["frame_shape"])
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("entry/data/data", shape=(n, *shape), dtype=np.uint16, chunks=(1, *shape),
                              **frame_compression())
        for i in tqdm(range(0, n, chunk), desc="export", unit="chunk", disable=not progress):
            ds[i:i + chunk] = _block(scan, i, min(n, i + chunk))
        f["entry/data/angles_deg"] = scan.angles_deg
        f.attrs.update({"format": FORMAT, "version": 1, "geometry": json.dumps(scan.geometry.to_dict()),
                        "scan": json.dumps(scan.scan), "sim": json.dumps(scan.sim), "run_uid": scan.run_uid or ""})
    return path


def scan_from_file(path) -> tuple[DfxrmScan, h5py.File]:
    """A DF-XRM scan file; returns the scan and the open file (close it when done)."""
    f = h5py.File(path, "r")
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise DfxrmSourceError(f"{path} is not a DF-XRM scan file (format attribute {f.attrs.get('format')!r}); "
                               "export a recorded run with `bp-plugin dfxrm export`")
    return DfxrmScan(f["entry/data/data"], f["entry/data/angles_deg"][()], json.loads(f.attrs["scan"]),
                     DfxrmGeometry.from_dict(json.loads(f.attrs["geometry"])), json.loads(f.attrs["sim"]),
                     f.attrs.get("run_uid") or None), f


def batch_maps(scan: DfxrmScan, *, options: MapOptions | None = None, chunk: int = 64, xp=np,
               progress: bool = False, order: int | None = None) -> dict:
    """Maps of a recorded scan, frames read ``chunk`` at a time (the live service's accumulator).

    ``order``: moments to keep (2 or 4; None: the scan's ``order``, 2 for scans recorded without)."""
    from tqdm import tqdm

    s = scan.scan
    n = len(scan.angles_deg)
    acc = MomentAccumulator(tuple(s["frame_shape"]), tuple(s["axes"]), s.get("centre_deg"),
                            order=int(order or s.get("order", 2)), background=float(s.get("background_counts", 0.0)),
                            floor=float(s.get("noise_floor_counts", 0.0)), xp=xp)
    for i in tqdm(range(0, n, chunk), desc="moments", unit="chunk", disable=not progress):
        block = _block(scan, i, min(n, i + chunk))
        acc.add_many(block, scan.angles_deg[i:i + len(block)])
    opts = options or MapOptions(resolution_deg=dict(s.get("resolution_deg") or {}))
    return compute_maps(acc, scan.geometry, opts)
