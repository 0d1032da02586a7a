"""What a Bragg ptychography run says about its scan: the ``bp_scan`` entry of its start document.

``plans.bragg_ptycho.bragg_ptycho_scan`` writes it, a replay writes the same, and every reader (the
frame streamer, the export to a scan file, the replay of a recorded run, the live monitor, the wire
``start`` message) reads it through :class:`ScanDocument` instead of picking keys out of a dict.
Together with ``bp_geometry`` (:class:`bp_plugin.geometry.ExperimentGeometry`) it is enough to
place every frame of the run in the ``[n_angles, n_positions]`` dataset.

Units: raster setpoints are in the motors' own units (``x_unit_m`` / ``y_unit_m`` metres per unit);
rocking angles in degrees (the rocking motor's readbacks times ``rocking_unit_deg``);
``raster_shape`` is ``(n_y, n_x)``, like every raster array; the ROI origin is the (row, column) of
the crop's first pixel on the detector.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .geometry import ExperimentGeometry

#: version of the ``bp_scan`` layout written by this code
SCAN_DOCUMENT_VERSION = 1


class RunDocumentError(ValueError):
    """A run's start document does not describe a Bragg ptychography scan (one line, names the fix)."""


@dataclass(frozen=True)
class ScanDocument:
    """The ``bp_scan`` start-document entry.

    Attributes:
        n_points: planned frames (``n_angles * n_positions``).
        n_angles, n_positions: the dataset's first two axes.
        raster_shape: ``(n_y, n_x)`` of the raster.
        order: ``"angle-outer"`` or ``"position-outer"``; snake: every other raster row reversed.
        rocking_motor, x_motor, y_motor: the motors' names (their readbacks' keys in the events).
        x_unit_m, y_unit_m: metres per unit of the raster motors.
        rocking_unit_deg: degrees per unit of the rocking motor (1 for a motor in deg; readbacks
            times it are degrees; absent from documents written before it, which were in deg).
        x_centre, y_centre: raster centre (motor units); eta_centre_deg: rocking angle of index ``n_angles // 2``.
        eta_setpoints_deg: ``[n_angles]`` planned rocking angles (deg).
        x_setpoints, y_setpoints: ``[n_positions]`` planned raster positions (motor units).
        detector: the area detector's name; image_key: its frames' data key in the events.
        frame_shape: the detector's whole frame ``(rows, cols)`` (the crop itself for a replay, whose
            frames are cropped already); roi_origin: the crop's corner ``(row, col)`` on it.
        count_time_s: exposure per frame (s) or None.
        version: layout version (:data:`SCAN_DOCUMENT_VERSION`).
    """

    n_points: int
    n_angles: int
    n_positions: int
    raster_shape: tuple[int, int]
    order: str
    snake: bool
    rocking_motor: str
    x_motor: str
    y_motor: str
    x_unit_m: float
    y_unit_m: float
    x_centre: float
    y_centre: float
    eta_centre_deg: float
    eta_setpoints_deg: tuple[float, ...]
    x_setpoints: tuple[float, ...]
    y_setpoints: tuple[float, ...]
    detector: str
    image_key: str
    frame_shape: tuple[int, int]
    roi_origin: tuple[int, int]
    count_time_s: float | None = None
    rocking_unit_deg: float = 1.0
    version: int = SCAN_DOCUMENT_VERSION

    def __post_init__(self):
        tup = {"raster_shape": int, "frame_shape": int, "roi_origin": int, "eta_setpoints_deg": float,
               "x_setpoints": float, "y_setpoints": float}
        for name, kind in tup.items():          # JSON gives lists: keep the frozen value hashable
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        for name in ("n_points", "n_angles", "n_positions", "version"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "snake", bool(self.snake))
        object.__setattr__(self, "rocking_unit_deg", float(self.rocking_unit_deg))
        problems = []
        if len(self.eta_setpoints_deg) != self.n_angles:
            problems.append(f"{len(self.eta_setpoints_deg)} rocking setpoints for n_angles = {self.n_angles}")
        if not len(self.x_setpoints) == len(self.y_setpoints) == self.n_positions:
            problems.append(f"{len(self.x_setpoints)} x and {len(self.y_setpoints)} y setpoints for "
                            f"n_positions = {self.n_positions}")
        if self.raster_shape[0] * self.raster_shape[1] != self.n_positions:
            problems.append(f"raster_shape {self.raster_shape} (n_y, n_x) is not n_positions = {self.n_positions}")
        if problems:
            raise RunDocumentError("bp_scan is inconsistent: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> "ScanDocument":
        """From a ``bp_scan`` dict (keys of a newer layout that this code does not know are ignored)."""
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - set(d) if n not in ("count_time_s", "rocking_unit_deg", "version"))
        if missing:
            raise RunDocumentError(f"bp_scan lacks {', '.join(missing)}: the run was not written by "
                                   "bragg_ptycho_scan of this plug-in (or an older one); re-record or replay it")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        """JSON-ready (lists, plain numbers), the start document's ``bp_scan``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def translations_m(self) -> np.ndarray:
        """Planned sample translations ``[n_positions, 3]``, lab ``(x, y, z)`` in metres (z = 0)."""
        t = np.zeros((self.n_positions, 3))
        t[:, 0] = np.asarray(self.x_setpoints) * self.x_unit_m
        t[:, 1] = np.asarray(self.y_setpoints) * self.y_unit_m
        return t

    def rocking_deg(self, data: dict) -> float:
        """The rocking readback in degrees from an event's ``data`` (NaN where absent)."""
        return float(data.get(self.rocking_motor, np.nan)) * self.rocking_unit_deg

    def positions_m(self, data: dict) -> tuple[float, float]:
        """Raster readbacks ``(x, y)`` in metres from an event's ``data`` (NaN where absent)."""
        return (float(data.get(self.x_motor, np.nan)) * self.x_unit_m,
                float(data.get(self.y_motor, np.nan)) * self.y_unit_m)


def run_scan(start: dict) -> tuple[ExperimentGeometry, ScanDocument]:
    """The geometry and scan of a run's start document, or a :class:`RunDocumentError` naming the run."""
    uid = str(start.get("uid", "?"))[:8]
    if "bp_geometry" not in start or "bp_scan" not in start:
        raise RunDocumentError(f"run {uid} was not recorded by bragg_ptycho_scan (no bp_geometry / bp_scan in "
                               "its start document): it cannot be exported, replayed or streamed as a Bragg scan")
    try:
        return ExperimentGeometry.from_dict(start["bp_geometry"]), ScanDocument.from_dict(start["bp_scan"])
    except RunDocumentError as exc:
        raise RunDocumentError(f"run {uid}: {exc}") from None
