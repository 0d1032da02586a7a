"""The ``bp_scan`` start-document entry, read and written through one frozen ScanDocument."""
import json

import numpy as np
import pytest

from bp_plugin.scan_document import RunDocumentError, ScanDocument, run_scan
from plans.replay import _scan_md
from sim_devices.presets import get_preset


def _doc(**over):
    geo = get_preset("tiny").geometry
    n_y, n_x = geo.raster_shape
    xy = np.stack(np.meshgrid(np.arange(n_x) * 0.2, np.arange(n_y) * 0.3), -1).reshape(-1, 2)
    d = _scan_md(geo, np.linspace(10, 11, geo.n_angles), xy, geo.n_angles * len(xy), "angle-outer", False, 0.1)
    d.update(over)
    return geo, d


def test_round_trip_through_json_and_translations_in_metres():
    geo, d = _doc()
    s = ScanDocument.from_dict(json.loads(json.dumps(d)))
    assert s.to_dict() == d and hash(s) == hash(ScanDocument.from_dict(d))     # frozen, comparable
    t = s.translations_m
    assert t.shape == (s.n_positions, 3) and np.allclose(t[:, 2], 0)
    assert np.allclose(t[:, :2], np.stack([d["x_setpoints"], d["y_setpoints"]], 1) * 1e-6)
    assert s.positions_m({"x": 2.0, "y": -1.0}) == (2e-6, -1e-6)


@pytest.mark.parametrize("over, text", [
    ({"eta_setpoints_deg": [1.0, 2.0]}, "rocking setpoints for n_angles"),
    ({"x_setpoints": [0.0]}, "x and"),
    ({"raster_shape": [7, 7]}, "raster_shape"),
])
def test_inconsistent_entries_are_one_line(over, text):
    _, d = _doc(**over)
    with pytest.raises(RunDocumentError, match=text) as e:
        ScanDocument.from_dict(d)
    assert "\n" not in str(e.value)


def test_runs_not_written_by_the_plan_are_refused_by_name():
    geo, d = _doc()
    del d["x_motor"]
    with pytest.raises(RunDocumentError, match="lacks x_motor") as e:
        run_scan({"uid": "abcdef123456", "bp_geometry": geo.to_dict(), "bp_scan": d})
    assert "run abcdef12" in str(e.value)
    with pytest.raises(RunDocumentError, match="not recorded by bragg_ptycho_scan"):
        run_scan({"uid": "x", "plan_name": "count"})
    g, s = run_scan({"uid": "u", "bp_geometry": geo.to_dict(), "bp_scan": _doc()[1]})
    assert g == geo and s.n_angles == geo.n_angles
