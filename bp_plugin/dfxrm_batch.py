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
               progress: bool = False, order: int | None = None, frames: tuple[int, int] | None = None) -> dict:
    """Maps of a recorded scan, frames read ``chunk`` at a time (the live service's accumulator).

    ``order``: moments to keep (2 or 4; None: the scan's ``order``, 2 for scans recorded without).
    ``frames``: ``(first, stop)`` of the frames to use (default all: one layer of a layer scan)."""
    from tqdm import tqdm

    s = scan.scan
    first, n = frames if frames is not None else (0, len(scan.angles_deg))
    acc = MomentAccumulator(tuple(s["frame_shape"]), tuple(s["axes"]), s.get("centre_deg"),
                            order=int(order or s.get("order", 2)), background=float(s.get("background_counts", 0.0)),
                            floor=float(s.get("noise_floor_counts", 0.0)), xp=xp)
    for i in tqdm(range(first, n, chunk), desc="moments", unit="chunk", disable=not progress):
        block = _block(scan, i, min(n, i + chunk))
        acc.add_many(block, scan.angles_deg[i:i + len(block)])
    opts = options or MapOptions(resolution_deg=dict(s.get("resolution_deg") or {}))
    return compute_maps(acc, scan.geometry, opts)


def layer_volumes(scan: DfxrmScan, *, options: MapOptions | None = None, chunk: int = 64, xp=np,
                  progress: bool = False) -> dict:
    """Volumes of a layer scan (:func:`plans.dfxrm_layers.layer_scan`, frames in acquisition order).

    Each layer's maps come from its own frames (``layer_points`` each) exactly as a mosaicity
    scan's; :func:`~bp_plugin.dfxrm.layers.stack_layer_maps` puts them on one grid, undoing each
    layer's shift on the camera (the live service stacks through the same function). A layer a
    stopped run left short has maps from the frames it has; one it never reached is NaN; both are
    named in ``incomplete``.

    Returns: each of :data:`~bp_plugin.dfxrm.layers.VOLUME_MAPS` and ``mask`` (1 where the crystal
    is) as ``(layers, ny, cols)`` = ``(h, y, x)`` float32; ``layer_maps`` (the per-layer 2D maps,
    None for a layer never reached); ``heights_m`` ``(layers,)``, ``y_m`` ``(ny,)``, ``x_m``
    ``(cols,)``; ``voxel_m`` (h step or None, y, x); ``incomplete``.
    """
    from .dfxrm.layers import LayerGeometry, stack_layer_maps

    s = scan.scan
    if s.get("kind") != "layers":
        raise DfxrmSourceError(f"a {s.get('kind')!r} scan has no layers; layer_volumes takes a layer scan")
    n_per, heights = int(s["layer_points"]), np.asarray(s["heights_m"], float)
    n = len(scan.angles_deg)
    if n == 0:
        raise DfxrmSourceError("the layer scan holds no frame")
    lg = LayerGeometry(tth_deg=float(s["tth_deg"]), pixel_size_m=scan.geometry.pixel_size_m,
                       frame_shape=tuple(s["frame_shape"]))
    per = [batch_maps(scan, options=options, chunk=chunk, xp=xp, progress=progress,
                      frames=(k * n_per, min(n, (k + 1) * n_per))) if k * n_per < n else None
           for k in range(len(heights))]
    out = stack_layer_maps(per, heights, lg)
    _, y, x = lg.volume_grid(heights)
    out.update(layer_maps=per, heights_m=heights, y_m=y[0, :, 0].copy(), x_m=x[0, 0].copy(),
               voxel_m=lg.volume_voxel_m(heights), incomplete=[k for k in range(len(heights)) if (k + 1) * n_per > n])
    return out


def topo_projections(scan: DfxrmScan, *, chunk: int = 64, progress: bool = False) -> tuple[np.ndarray, list]:
    """The integrated projections ``(n_projections, rows, cols)`` of a topo-tomography scan
    (:func:`plans.dfxrm_topo.topo_scan`, frames in acquisition order, ``projection_points`` per
    omega), read ``chunk`` frames at a time, and the projections left out (NaN) because their
    rocking curve is not complete (a stopped run)."""
    from tqdm import tqdm

    from .dfxrm.topotomo import integrated_projections

    s = scan.scan
    if s.get("kind") != "topotomo":
        raise DfxrmSourceError(f"a {s.get('kind')!r} scan has no projections; topo_projections takes a topotomo scan")
    n_per, n_proj = int(s["projection_points"]), int(s["n_projections"])
    n = len(scan.angles_deg)
    sums = np.zeros((n_proj, *s["frame_shape"]))
    counts = np.zeros(n_proj, int)
    for i in tqdm(range(0, n, chunk), desc="projections", unit="chunk", disable=not progress):
        block = _block(scan, i, min(n, i + chunk))
        idx = (i + np.arange(len(block))) // n_per
        for k in np.unique(idx):
            sel = idx == k
            sums[k] += block[sel].sum(0)
            counts[k] += int(sel.sum())
    short = [k for k in range(n_proj) if counts[k] < n_per]
    counts[short] = 0                   # a partial rocking curve would dim its projection
    return integrated_projections(sums, counts, float(s.get("background_counts", 0.0))), short


def topo_shape(scan: DfxrmScan, *, chunk: int = 64, progress: bool = False) -> dict:
    """The grain's shape from a topo-tomography scan: :func:`bp_plugin.dfxrm.topotomo.reconstruct_shape`
    of :func:`topo_projections`, plus ``projections`` and ``incomplete`` (the omegas left out)."""
    from .dfxrm.topotomo import TopoGeometry, reconstruct_shape

    proj, short = topo_projections(scan, chunk=chunk, progress=progress)
    s = scan.scan
    geo = TopoGeometry(tth_deg=float(s["tth_deg"]), pixel_size_m=scan.geometry.pixel_size_m,
                       frame_shape=tuple(s["frame_shape"]))
    try:
        out = reconstruct_shape(proj, s["omegas_deg"], geo, progress=progress)
    except ValueError as exc:
        raise DfxrmSourceError(f"topo-tomography scan: {exc}") from None
    out.update(projections=proj, incomplete=short)
    return out
