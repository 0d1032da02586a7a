"""Replay: re-emit a recorded scan as bluesky documents, frames included, at the original or a chosen rate.

Sources: a run in Tiled (``client[uid]``) or a dataset file (docs/dataset-format.md). Consumers see
what a live scan gives them (start with ``bp_geometry`` / ``bp_scan``, one descriptor, one event per
frame, stop), so the live monitor and the streaming reconstructor can be exercised offline.

One difference from a live run, stated so consumers handle it: replayed events carry the frame
*inline* (``{detector}_image`` is in the event's data, filled, cropped to the reconstruction ROI),
where a live run references it in the detector's file through StreamResource / StreamDatum. The ROI
origin in the replayed ``bp_scan`` is therefore (0, 0).
"""
from __future__ import annotations

from pathlib import Path

import time
from typing import Iterator

import numpy as np
from event_model import compose_run

from bp_plugin.dataset import read_dataset
from bp_plugin.geometry import ExperimentGeometry
from bp_plugin.run_export import run_columns
from bp_plugin.scan_document import ScanDocument, run_scan

DETECTOR = "replay"


def _scan_md(geo: ExperimentGeometry, angles_deg, xy_um, n_points: int, order: str, snake: bool, count_time_s,
             raster_shape=None) -> dict:
    """``bp_scan`` of a replayed run; ``xy_um``: raster setpoints ``(n_positions, 2)`` in um."""
    return ScanDocument(
        n_points=n_points, n_angles=geo.n_angles, n_positions=len(xy_um),
        raster_shape=raster_shape if raster_shape is not None else geo.raster_shape, order=order, snake=snake,
        rocking_motor="eta", x_motor="x", y_motor="y", x_unit_m=1e-6, y_unit_m=1e-6, x_centre=0.0, y_centre=0.0,
        eta_centre_deg=float(angles_deg[len(angles_deg) // 2]), eta_setpoints_deg=angles_deg,
        x_setpoints=xy_um[:, 0], y_setpoints=xy_um[:, 1], detector=DETECTOR, image_key=f"{DETECTOR}_image",
        frame_shape=geo.crop, roi_origin=(0, 0), count_time_s=count_time_s).to_dict()


def _emit(geo, scan_md, extra_start, points: Iterator, rate: float | None, original_times: bool):
    """points yields (time, ia, ip, x_um, y_um, eta_deg, frame)."""
    bundle = compose_run(metadata={"plan_name": "replay", "technique": "bragg-ptycho", "bp_geometry": geo.to_dict(),
                                   "bp_scan": scan_md, "num_points": scan_md["n_points"], **extra_start})
    yield "start", bundle.start_doc
    n1, n2 = geo.crop
    keys = {
        f"{DETECTOR}_image": {"source": "replay", "dtype": "array", "dtype_numpy": "<u4", "shape": [n1, n2]},
        f"{DETECTOR}_total": {"source": "replay", "dtype": "integer", "shape": []},
        "eta": {"source": "replay", "dtype": "number", "shape": [], "units": "deg"},
        "x": {"source": "replay", "dtype": "number", "shape": [], "units": "um"},
        "y": {"source": "replay", "dtype": "number", "shape": [], "units": "um"},
        "bp_index_angle": {"source": "replay", "dtype": "integer", "shape": []},
        "bp_index_pos": {"source": "replay", "dtype": "integer", "shape": []},
    }
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    yield "descriptor", desc.descriptor_doc
    t_prev, wall_prev = None, None
    for t, ia, ip, x, y, eta, frame in points:
        if original_times and t_prev is not None:
            time.sleep(max(0.0, (t - t_prev) - (time.monotonic() - wall_prev)))
        elif rate and wall_prev is not None:
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - wall_prev)))
        t_prev, wall_prev = t, time.monotonic()
        data = {f"{DETECTOR}_image": frame, f"{DETECTOR}_total": int(frame.sum(dtype=np.uint64)), "eta": float(eta),
                "x": float(x), "y": float(y), "bp_index_angle": int(ia), "bp_index_pos": int(ip)}
        now = time.time()
        yield "event", desc.compose_event(data=data, timestamps={k: now for k in data})
    yield "stop", bundle.compose_stop(exit_status="success")


def dataset_documents(path, *, rate: float | None = None) -> Iterator[tuple[str, dict]]:
    """Documents of a dataset file's measured frames, angle-outer order, ``rate`` frames/s (None: as fast as possible)."""
    ds = read_dataset(path, allow_partial=True)
    geo = ds.geometry
    n_a, n_p = ds.measured.shape
    pts = [(ia, ip) for ia in range(n_a) for ip in range(n_p) if ds.measured[ia, ip]]
    scan_md = _scan_md(geo, ds.angles_deg, ds.translations_m[:, :2] * 1e6, len(pts), "angle-outer", False,
                       ds.count_time_s)
    extra = {"replay_of": str(path), **({"bp_sim": {"truth_file": str(Path(path).resolve())}}
                                        if ds.ground_truth else {})}

    def points():
        for ia, ip in pts:
            t = ds.translations_m[ip]
            yield (None, ia, ip, t[0] * 1e6, t[1] * 1e6, ds.angles_deg[ia], np.asarray(ds.frames[ia, ip], np.uint32))
    yield from _emit(geo, scan_md, extra, points(), rate, False)


def tiled_documents(run, *, rate: float | None = None, original: bool = False) -> Iterator[tuple[str, dict]]:
    """Documents of a recorded run in Tiled; ``original``: keep the recorded time between frames."""
    start = dict(run.metadata["start"])
    geo, s = run_scan(start)
    stream = run["primary"]
    col = run_columns(stream, [s.x_motor, s.y_motor, s.rocking_motor, "bp_index_angle", "bp_index_pos", "time"])
    image = stream[s.image_key]
    n = min(len(col["time"]), image.shape[0])
    (r0, c0), (n1, n2) = s.roi_origin, geo.crop
    scan_md = _scan_md(geo, s.eta_setpoints_deg, s.translations_m[:, :2] * 1e6, n, s.order, s.snake, s.count_time_s,
                       s.raster_shape)
    extra = {"replay_of": start["uid"], **({"bp_sim": start["bp_sim"]} if "bp_sim" in start else {})}

    def points(chunk=32):
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            frames = np.asarray(image[a:b, r0:r0 + n1, c0:c0 + n2], np.uint32)
            for k in range(a, b):
                yield (col["time"][k], col["bp_index_angle"][k], col["bp_index_pos"][k],
                       col[s.x_motor][k] * s.x_unit_m * 1e6, col[s.y_motor][k] * s.y_unit_m * 1e6,
                       col[s.rocking_motor][k] * s.rocking_unit_deg, frames[k - a])
    yield from _emit(geo, scan_md, extra, points(), rate, original)


def replay(documents: Iterator[tuple[str, dict]], callbacks) -> int:
    """Send every document to every callback; returns the number of events."""
    n = 0
    for name, doc in documents:
        for cb in callbacks:
            cb(name, doc)
        n += name == "event"
    return n
