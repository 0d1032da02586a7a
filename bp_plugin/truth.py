"""Ground truth that travels with a simulated run, as a file, never re-simulated by a consumer.

A simulated scan file holds its truth under ``/entry_1/ground_truth_1`` (``docs/dataset-format.md``).
A run recorded from simulated devices names a truth file (same group, nothing else) in its start
document: ``bp_sim = {"truth_file": path, ...}`` for bluesky runs, ``sim`` in the wire protocol's
start message. The service, the export and the DF-XRM maps read the truth from that file, so a
reconstructor at a beamline finishes a run without ``sim_devices``; a run whose truth file is
named but absent is finished all the same, without the quality metrics, and says so.
"""
from __future__ import annotations

from pathlib import Path

import h5py

from .dataset import read_truth_group, write_truth_group

TRUTH_FORMAT = "bp-truth"


def write_truth_file(path, arrays: dict, attrs: dict) -> Path:
    """A truth-only HDF5 file: ``arrays`` (numeric, complex allowed) and ``attrs`` under the scan
    file's ground-truth group (root attribute ``bp_plugin_format = "bp-truth"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["bp_plugin_format"] = TRUTH_FORMAT
        write_truth_group(f, arrays, attrs, where=f"write_truth_file({str(path)!r})")
    return path


def read_truth(path) -> tuple[dict, dict]:
    """``(arrays, attrs)`` of the ground-truth group of a scan or truth file (empty if it has none)."""
    with h5py.File(path, "r") as f:
        return read_truth_group(f)


def truth_from_start(sim: dict | None) -> tuple[dict | None, dict | None, str | None]:
    """The truth a start document's ``sim`` / ``bp_sim`` entry names: ``(arrays, attrs, None)``,
    ``(None, None, None)`` for a run without one, ``(None, None, reason)`` when it is named but
    cannot be read (the caller finishes without quality metrics and reports the reason)."""
    path = (sim or {}).get("truth_file")
    if not path:
        return None, None, None
    if not Path(path).is_file():
        return None, None, f"the run's ground-truth file {path} is absent: no quality metrics"
    try:
        arrays, attrs = read_truth(path)
    except OSError as exc:
        return None, None, f"the run's ground-truth file {path} cannot be read ({exc}): no quality metrics"
    return (arrays, attrs, None) if arrays else (None, None, f"{path} holds no ground truth: no quality metrics")


__all__ = ["TRUTH_FORMAT", "write_truth_file", "read_truth", "truth_from_start"]
