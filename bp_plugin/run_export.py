"""A recorded Bragg ptychography run (in Tiled) -> the project's dataset file, ready to reconstruct.

The run must come from ``plans.bragg_ptycho_scan`` (or any plan writing the same start-document
keys, read as :class:`bp_plugin.scan_document.ScanDocument`): ``bp_geometry`` gives the experiment,
``bp_scan`` the motor names, units, ROI and point count; each event's ``bp_index_angle`` / ``bp_index_pos`` place its
frame in the ``[n_angles, n_positions]`` dataset. Translations are the mean readbacks of each
position, angles the mean readbacks of each angle index. Frames are read through Tiled, already
cropped to the ROI on the server (only the crop travels). A run that stopped early exports as a
partial dataset (unmeasured frames flagged, see docs/dataset-format.md).

The pixel mask is derived from the frames themselves unless given: pixels that read 0 in every
frame (module gaps, dead pixels) or the same non-zero value in every frame (hot pixels: a photon
counting pixel is never noise-free) are masked.
"""
from __future__ import annotations

import sys

import numpy as np

from .dataset import DatasetWriter
from .scan_document import RunDocumentError, run_scan


class RunExportError(ValueError):
    """The run cannot be turned into a dataset; the message says why."""


def run_columns(stream, keys) -> dict[str, np.ndarray]:
    """Scalar columns of an event stream (a Tiled node), as NumPy arrays."""
    out = {}
    for k in keys:
        if k not in stream:
            raise RunExportError(f"the run's primary stream has no {k!r} column (columns: {sorted(stream)})")
        out[k] = np.asarray(stream[k].read())
    return out


def derive_mask(frames: np.ndarray) -> np.ndarray:
    """Valid-pixel mask from a frame stack ``(n, n1, n2)``: False where always 0 or never changing."""
    fmax, fmin = frames.max(0), frames.min(0)
    dead = fmax == 0
    hot = (fmin == fmax) & (fmax > 0) if len(frames) >= 4 else np.zeros_like(dead)
    return ~(dead | hot)


def run_to_dataset(run, path, *, overwrite: bool = False, mask: np.ndarray | None = None, chunk: int = 64,
                   ground_truth: bool = True, progress: bool = True) -> dict:
    """Write the dataset file for a recorded run.

    Args:
        run: the run's Tiled node (``client[uid]``).
        path: output dataset file.
        overwrite: replace an existing file.
        mask: valid-pixel mask ``(n1, n2)`` of the crop (default: derived from the frames).
        chunk: frames per Tiled request.
        ground_truth: add the simulator's ground truth when the run was simulated (``bp_sim``).
        progress: show a progress bar.

    Returns:
        dict: ``uid``, ``n_frames`` (exported), ``n_points`` (planned), ``complete``, ``path``.
    """
    from tqdm import tqdm

    start = dict(run.metadata["start"])
    try:
        geo, scan = run_scan(start)
    except RunDocumentError as exc:
        raise RunExportError(str(exc)) from None
    if "primary" not in run:
        raise RunExportError(f"run {start['uid'][:8]} has no events (no primary stream): nothing was measured")
    stream = run["primary"]
    cols = run_columns(stream, [scan.x_motor, scan.y_motor, scan.rocking_motor, "bp_index_angle", "bp_index_pos"])
    image = stream[scan.image_key]
    n = min(len(cols["bp_index_angle"]), image.shape[0])
    ia, ip = cols["bp_index_angle"][:n].astype(int), cols["bp_index_pos"][:n].astype(int)
    n_a, n_p = scan.n_angles, scan.n_positions
    x = cols[scan.x_motor][:n] * scan.x_unit_m
    y = cols[scan.y_motor][:n] * scan.y_unit_m
    eta = cols[scan.rocking_motor][:n] * scan.rocking_unit_deg
    translations = np.zeros((n_p, 3))
    seen = np.zeros(n_p, bool)
    for j in range(n_p):
        sel = ip == j
        if sel.any():
            translations[j, :2] = x[sel].mean(), y[sel].mean()
            seen[j] = True
    # planned positions never reached (a stopped run): their setpoints keep the file well formed
    translations[~seen, :2] = scan.translations_m[~seen, :2]
    setpoints = np.asarray(scan.eta_setpoints_deg, float)
    angles = np.array([eta[ia == i].mean() if (ia == i).any() else setpoints[i] for i in range(n_a)])
    r0, c0 = scan.roi_origin
    n1, n2 = geo.crop
    frames = np.empty((n, n1, n2), np.uint32)
    one = (0,) * (len(image.shape) - 3)     # a frame per event described as (1, rows, cols): ophyd-async
    bar = tqdm(total=n, desc=f"export {start['uid'][:8]}", unit="frame", disable=not progress)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        frames[a:b] = image[(slice(a, b), *one, slice(r0, r0 + n1), slice(c0, c0 + n2))]
        bar.update(b - a)
    bar.close()
    if mask is None:
        mask = derive_mask(frames)
    meta = {"source": "bluesky run", "run_uid": start["uid"], "plan_name": start.get("plan_name"),
            "scan_id": start.get("scan_id"), "order": scan.order, "snake": scan.snake,
            "roi_origin": [int(r0), int(c0)], "exit_status": (run.metadata.get("stop") or {}).get("exit_status"),
            **({"simulated": True, **start["bp_sim"]} if "bp_sim" in start else {})}
    ct = float(scan.count_time_s) if scan.count_time_s else None     # None: the detector did not say
    with DatasetWriter(path, geo, translations, angles, mask, count_time_s=ct,
                       metadata=meta, overwrite=overwrite) as w:
        for k in range(n):
            w.write_frame(int(ia[k]), int(ip[k]), frames[k], flush=(k == n - 1))
        if ground_truth and "bp_sim" in start:
            from .truth import truth_from_start
            gt, attrs, note = truth_from_start(start["bp_sim"])
            if gt:
                w.write_ground_truth(gt, attrs)
            elif note:
                print(f"warning: {note}", file=sys.stderr)
    return {"uid": start["uid"], "n_frames": n, "n_points": scan.n_points, "complete": n == scan.n_points,
            "path": str(path)}
