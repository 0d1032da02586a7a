"""Tests of the bp-scan HDF5 format (bp_plugin.dataset): round trip, storage, streaming writes, flips, errors."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from bp_plugin.dataset import (P_ANGLE, P_DATA, P_GROUND_TRUTH, P_MASK, P_MEASURED, P_TRANSLATION, Conventions,
                               DatasetError, DatasetWriter, ScanDataset, read_dataset, write_dataset)
from bp_plugin.geometry import ExperimentGeometry

REPO = Path(__file__).resolve().parents[1]
GEOM = ExperimentGeometry(crop=(16, 12), n_angles=5, raster_shape=(2, 3))


def make_ds(seed: int = 0, **changes) -> ScanDataset:
    """Small synthetic scan: 5 angles x 6 positions of 16 x 12 uint32 Poisson frames."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(3.0, size=(5, 6, 16, 12)).astype(np.uint32)
    iy, ix = np.divmod(np.arange(6), 3)
    translations = np.stack([ix * 100e-9, iy * 100e-9, np.zeros(6)], axis=1)
    mask = np.ones((16, 12), bool)
    mask[3, 4] = mask[0, 11] = False
    ds = ScanDataset(
        geometry=GEOM, frames=frames, translations_m=translations,
        angles_deg=17.0 + 0.005 * np.arange(5), mask=mask, measured=np.ones((5, 6), bool),
        count_time_s=0.5,
        ground_truth={"density": (rng.normal(size=(4, 5, 6)) + 1j * rng.normal(size=(4, 5, 6))).astype(np.complex64),
                      "eps_zz": rng.normal(size=(4, 5, 6)).astype(np.float32),
                      "probe": rng.normal(size=(8, 8)) * np.exp(1j * rng.normal(size=(8, 8)))},
        ground_truth_attrs={"voxel_size_m": (10e-9, 10e-9, 20e-9), "origin_m": [0.0, -1e-7, 2e-7],
                            "density_units": "1", "grid": "lab", "n_voxels": 120},
        metadata={"preset": "paper", "flux_ph_s": 1.5e9, "sample": {"material": "W", "hkl": [2, 2, 0]}})
    return dataclasses.replace(ds, **changes)


def assert_same(a: ScanDataset, b: ScanDataset) -> None:
    assert a.geometry == b.geometry
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.dtype == b.frames.dtype
    np.testing.assert_array_equal(a.translations_m, b.translations_m)
    np.testing.assert_array_equal(a.angles_deg, b.angles_deg)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.measured, b.measured)
    assert a.count_time_s == b.count_time_s
    assert a.conventions == b.conventions
    assert a.metadata == b.metadata
    assert set(a.ground_truth) == set(b.ground_truth)
    for k in a.ground_truth:
        np.testing.assert_array_equal(a.ground_truth[k], b.ground_truth[k])
        assert np.asarray(a.ground_truth[k]).dtype == b.ground_truth[k].dtype
    assert set(a.ground_truth_attrs) == set(b.ground_truth_attrs)
    for k, v in a.ground_truth_attrs.items():
        if isinstance(v, str):
            assert b.ground_truth_attrs[k] == v
        else:
            np.testing.assert_array_equal(np.asarray(b.ground_truth_attrs[k]), np.asarray(v))


def test_round_trip_every_field(tmp_path):
    ds = make_ds()
    write_dataset(tmp_path / "s.h5", ds)
    back = read_dataset(tmp_path / "s.h5")
    assert_same(ds, back)
    assert back.mask.dtype == bool and back.measured.dtype == bool
    assert back.ground_truth["density"].dtype == np.complex64 and back.ground_truth["probe"].dtype == np.complex128
    assert back.ground_truth_attrs["grid"] == "lab" and back.ground_truth_attrs["n_voxels"] == 120


def test_round_trip_float32_frames_no_optionals(tmp_path):
    ds = make_ds(count_time_s=None, ground_truth={}, ground_truth_attrs={}, metadata={})
    ds.frames = ds.frames.astype(np.float32) * 0.25
    write_dataset(tmp_path / "s.h5", ds)
    back = read_dataset(tmp_path / "s.h5")
    assert_same(ds, back)
    assert back.count_time_s is None and back.frames.dtype == np.float32
    with h5py.File(tmp_path / "s.h5") as f:
        assert P_GROUND_TRUTH not in f


def test_layout_units_attributes_chunking_and_filter(tmp_path):
    ds = make_ds()
    write_dataset(tmp_path / "s.h5", ds)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["bp_plugin_format"] == "bp-scan" and f.attrs["bp_plugin_format_version"] == 2
        e = f["entry_1"]
        assert tuple(e.attrs["q0_pixel"]) == (8, 6)          # the crop's centre unless the writer says
        assert ExperimentGeometry.from_dict(json.loads(e.attrs["geometry_json"])) == GEOM
        assert tuple(e.attrs["hkl"]) == (2, 2, 0)
        assert abs(e.attrs["theta_bragg_deg"] - np.degrees(GEOM.theta_bragg_rad)) < 1e-12
        assert [e.attrs[f"convention_{k}"] for k in ("n1_sign", "n2_sign", "angle_sign", "translation_sign")] == [1] * 4
        d = f[P_DATA]
        assert d.shape == (5, 6, 16, 12) and d.dtype == np.uint32 and d.chunks == (1, 1, 16, 12)
        dcpl = d.id.get_create_plist()
        assert hdf5plugin.BSHUF_ID in [dcpl.get_filter(k)[0] for k in range(dcpl.get_nfilters())]
        assert d.id.get_storage_size() < d.size * d.dtype.itemsize / 2  # Poisson(3) counts compress well
        assert f[P_MEASURED].dtype == np.uint8 and f[P_MASK].dtype == np.uint8
        assert f[P_TRANSLATION].dtype == np.float64 and f[P_TRANSLATION].shape == (6, 3)
        units = {}
        f.visititems(lambda name, obj: units.__setitem__(name, obj.attrs.get("units"))
                     if isinstance(obj, h5py.Dataset) else None)
        assert None not in units.values(), units
        assert units["entry_1/instrument_1/source_1/energy"] == "J"
        assert units["entry_1/sample_1/geometry_1/rocking_angle"] == "deg"
        assert units["entry_1/instrument_1/detector_1/count_time"] == "s"
        assert units["entry_1/ground_truth_1/density"] == "1" and units["entry_1/ground_truth_1/eps_zz"] == "arb"
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(GEOM.energy_j, rel=1e-15)
        assert f["entry_1/ground_truth_1/density"].compression == "gzip"


def test_writer_appends_and_partial_file_needs_allow_partial(tmp_path):
    ds = make_ds()
    p = tmp_path / "live.h5"
    w = DatasetWriter(p, GEOM, ds.translations_m, ds.angles_deg, ds.mask, count_time_s=0.5)
    order = [(i, j) for i in range(5) for j in range(6)][:13]
    for i, j in order:
        w.write_frame(i, j, ds.frames[i, j])
    assert w.n_measured == 13
    w.close()
    with pytest.raises(DatasetError, match=r"17 of 30 frames missing.*allow_partial=True"):
        read_dataset(p)
    part = read_dataset(p, allow_partial=True)
    assert part.measured.sum() == 13
    for i in range(5):
        for j in range(6):
            expected = ds.frames[i, j] if (i, j) in order else 0
            np.testing.assert_array_equal(part.frames[i, j], expected)
    with DatasetWriter(p, GEOM, ds.translations_m, ds.angles_deg, ds.mask, overwrite=True) as w:
        for i in range(5):
            for j in range(6):
                w.write_frame(i, j, ds.frames[i, j].astype(np.int64))  # any non-negative ints are accepted
    np.testing.assert_array_equal(read_dataset(p).frames, ds.frames)


def test_writer_refuses_to_overwrite(tmp_path):
    ds = make_ds()
    write_dataset(tmp_path / "s.h5", ds)
    with pytest.raises(DatasetError, match="overwrite=True"):
        DatasetWriter(tmp_path / "s.h5", GEOM, ds.translations_m, ds.angles_deg, ds.mask)
    assert read_dataset(tmp_path / "s.h5").measured.all()  # untouched


def test_aborted_writer_process_loses_nothing(tmp_path):
    """A writer process killed (os._exit, no close) after 7 frames leaves a readable partial file."""
    p = tmp_path / "aborted.h5"
    code = f"""
import os, numpy as np
from bp_plugin.dataset import DatasetWriter
from bp_plugin.geometry import ExperimentGeometry
g = ExperimentGeometry(crop=(16, 12), n_angles=5, raster_shape=(2, 3))
w = DatasetWriter({str(p)!r}, g, np.zeros((6, 3)), np.arange(5) * 0.01, np.ones((16, 12), bool))
for k in range(7):
    w.write_frame(k // 6, k % 6, np.full((16, 12), 10 + k, np.uint32))
os._exit(3)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    with pytest.raises(DatasetError, match="allow_partial"):
        read_dataset(p)
    ds = read_dataset(p, allow_partial=True)
    assert ds.measured.sum() == 7
    flat = ds.frames.reshape(30, 16, 12)
    assert [int(flat[k, 0, 0]) for k in range(9)] == [10, 11, 12, 13, 14, 15, 16, 0, 0]


def test_unmeasured_frames_read_as_zeros(tmp_path):
    ds = make_ds()
    ds.measured[2, 4] = False  # frame has non-zero content in memory
    write_dataset(tmp_path / "s.h5", ds)
    back = read_dataset(tmp_path / "s.h5", allow_partial=True)
    assert not back.measured[2, 4] and back.measured.sum() == 29
    assert not back.frames[2, 4].any() and ds.frames[2, 4].any()
    np.testing.assert_array_equal(back.frames[1], ds.frames[1])


def test_load_frames_false(tmp_path):
    write_dataset(tmp_path / "s.h5", make_ds())
    back = read_dataset(tmp_path / "s.h5", load_frames=False)
    assert back.frames is None and back.mask.shape == (16, 12) and back.geometry == GEOM


def about_q0(a, axis, q0):
    """What a -1 axis means: index k of the result holds the stored index q0 - (k - N // 2), zero outside."""
    n = a.shape[axis]
    src = q0 - (np.arange(n) - n // 2)
    out = np.take(a, np.clip(src, 0, n - 1), axis=axis)
    ok = ((src >= 0) & (src < n)).reshape([n if k == axis else 1 for k in range(a.ndim)])
    return np.where(ok, out, 0).astype(a.dtype)


def test_flips_on_read_keep_q0_for_even_and_odd_crops(tmp_path):
    for crop in ((16, 12), (15, 11)):
        geo = dataclasses.replace(GEOM, crop=crop)
        ds = make_ds(geometry=geo, frames=make_ds().frames[:, :, :crop[0], :crop[1]].copy(),
                     mask=make_ds().mask[:crop[0], :crop[1]].copy())
        ds.measured[0, 1] = False
        ds.frames[0, 1] = 0
        p = tmp_path / "s.h5"
        write_dataset(p, ds)
        c1, c2 = crop[0] // 2, crop[1] // 2
        r = read_dataset(p, allow_partial=True, flip_n1=True)
        np.testing.assert_array_equal(r.frames, about_q0(ds.frames, 2, c1))
        np.testing.assert_array_equal(r.mask, about_q0(ds.mask, 0, c1).astype(bool))
        np.testing.assert_array_equal(r.frames[:, :, c1], ds.frames[:, :, c1])   # q = 0 stays where it was
        assert r.conventions == Conventions()
        r = read_dataset(p, allow_partial=True, flip_n2=True)
        np.testing.assert_array_equal(r.frames, about_q0(ds.frames, 3, c2))
        np.testing.assert_array_equal(r.mask, about_q0(ds.mask, 1, c2).astype(bool))
        r1 = read_dataset(p, allow_partial=True, flip_n1=True)
        if crop[0] % 2:                                       # odd: about the centre = plain reversal
            np.testing.assert_array_equal(r1.frames, ds.frames[:, :, ::-1])
        else:                                                 # even: row 0 (q = -N/2) was not measured
            assert not r1.mask[0].any() and not r1.frames[:, :, 0].any()
        r = read_dataset(p, allow_partial=True, flip_angle=True)
        np.testing.assert_array_equal(r.frames, ds.frames[::-1])
        np.testing.assert_array_equal(r.measured, ds.measured[::-1])
        np.testing.assert_allclose(r.angles_deg, -ds.angles_deg[::-1])
        assert np.all(np.diff(r.angles_deg) > 0)
        r = read_dataset(p, allow_partial=True, flip_translation=True)
        np.testing.assert_array_equal(r.translations_m, -ds.translations_m)
        np.testing.assert_array_equal(r.frames, ds.frames)


def test_stored_conventions_are_normalised_and_can_be_overridden(tmp_path):
    ds = make_ds(conventions=Conventions(n1_sign=-1, n2_sign=1, angle_sign=1, translation_sign=-1, q0_pixel=(7, 6)))
    p = tmp_path / "s.h5"
    write_dataset(p, ds)
    r = read_dataset(p)
    assert r.conventions == Conventions()
    np.testing.assert_array_equal(r.frames, ds.frames[:, :, ::-1])     # q0 = N - 1 - N // 2: a plain reversal
    np.testing.assert_array_equal(r.translations_m, -ds.translations_m)
    r = read_dataset(p, flip_n1=True)  # flip cancels the stored -1
    np.testing.assert_array_equal(r.frames[:, :, 1:], ds.frames[:, :, :-1])  # and q = 0 (stored 7) goes to 8
    assert not r.mask[0].any()
    r = read_dataset(p, conventions=Conventions())  # override ignores the stored attributes
    np.testing.assert_array_equal(r.frames, ds.frames)
    np.testing.assert_array_equal(r.translations_m, ds.translations_m)


def test_q0_off_centre_is_moved_to_the_centre_and_the_rest_masked(tmp_path):
    ds = make_ds(conventions=Conventions(q0_pixel=(5, 9)))
    p = tmp_path / "s.h5"
    write_dataset(p, ds)
    r = read_dataset(p)
    np.testing.assert_array_equal(r.frames[..., 3:, :9], ds.frames[..., :13, 3:])   # stored (5, 9) -> (8, 6)
    assert r.frames[0, 0, 8, 6] == ds.frames[0, 0, 5, 9]
    assert not r.mask[:3].any() and not r.mask[:, 9:].any() and r.mask[3:, :9].sum() == ds.mask[:13, 3:].sum()
    with pytest.raises(DatasetError, match=r"q0_pixel.*0 <= i1 < 16"):
        make_ds(conventions=Conventions(q0_pixel=(16, 3))).validate()


def test_version_1_files_read_as_before(tmp_path):
    """A version-1 file (no q0_pixel; a -1 axis meant a plain reversal) reads exactly as version 1 did."""
    ds = make_ds(conventions=Conventions(n1_sign=-1, n2_sign=-1))
    p = tmp_path / "s.h5"
    write_dataset(p, ds)
    with h5py.File(p, "a") as f:
        f.attrs["bp_plugin_format_version"] = 1
        del f["entry_1"].attrs["q0_pixel"]
    r = read_dataset(p)
    np.testing.assert_array_equal(r.frames, ds.frames[:, :, ::-1, ::-1])
    assert r.mask.sum() == ds.mask.sum()


def test_descending_angles_are_returned_ascending(tmp_path):
    ds = make_ds(angles_deg=17.02 - 0.005 * np.arange(5))
    write_dataset(tmp_path / "s.h5", ds)
    r = read_dataset(tmp_path / "s.h5")
    np.testing.assert_allclose(r.angles_deg, ds.angles_deg[::-1])
    np.testing.assert_array_equal(r.frames, ds.frames[::-1])


# --- errors --------------------------------------------------------------------------------------

def test_wrong_translation_shape(tmp_path):
    ds = make_ds(translations_m=np.zeros((6, 2)))
    with pytest.raises(DatasetError) as e:
        write_dataset(tmp_path / "s.h5", ds)
    msg = str(e.value)
    assert "translations_m" in msg and P_TRANSLATION in msg and "[n_positions=6, 3]" in msg and "(6, 2)" in msg
    assert not (tmp_path / "s.h5").exists()
    with pytest.raises(DatasetError, match=r"translations_m.*\[n_positions=6, 3\].*\(5, 3\)"):
        DatasetWriter(tmp_path / "w.h5", GEOM, np.zeros((5, 3)), ds.angles_deg, ds.mask)


def test_missing_dataset_names_path_and_writer(tmp_path):
    p = tmp_path / "s.h5"
    write_dataset(p, make_ds())
    with h5py.File(p, "a") as f:
        del f[P_ANGLE]
    with pytest.raises(DatasetError) as e:
        read_dataset(p)
    assert P_ANGLE in str(e.value) and "missing" in str(e.value) and "DatasetWriter" in str(e.value)


def test_nan_frames_name_angle_and_position(tmp_path):
    ds = make_ds()
    ds.frames = ds.frames.astype(np.float32)
    ds.frames[2, 3, 5, 5] = np.nan
    with pytest.raises(DatasetError, match=r"NaN or inf in frame\(s\) \(angle 2, position 3\)"):
        write_dataset(tmp_path / "s.h5", ds)
    ds.frames[2, 3, 5, 5] = 1.0
    write_dataset(tmp_path / "s.h5", ds)
    with h5py.File(tmp_path / "s.h5", "a") as f:  # corrupt the file on disk
        f[P_DATA][4, 0, 0, 0] = np.inf
    with pytest.raises(DatasetError, match=r"\(angle 4, position 0\)"):
        read_dataset(tmp_path / "s.h5")
    with DatasetWriter(tmp_path / "w.h5", GEOM, ds.translations_m, ds.angles_deg, ds.mask, dtype=np.float32) as w:
        with pytest.raises(DatasetError, match=r"angle 1, position 2.*NaN"):
            w.write_frame(1, 2, np.full((16, 12), np.nan, np.float32))


def test_negative_counts(tmp_path):
    ds = make_ds()
    ds.frames = ds.frames.astype(np.float32)
    ds.frames[1, 5, 0, 0] = -2.0
    with pytest.raises(DatasetError, match=r"negative values in frame\(s\) \(angle 1, position 5\)"):
        write_dataset(tmp_path / "s.h5", ds)
    with DatasetWriter(tmp_path / "w.h5", GEOM, ds.translations_m, ds.angles_deg, ds.mask) as w:
        with pytest.raises(DatasetError, match=r"angle 0, position 1.*non-negative.*-1"):
            w.write_frame(0, 1, np.full((16, 12), -1, np.int64))
        with pytest.raises(DatasetError, match=r"expected shape \(n1, n2\) = \(16, 12\).*\(12, 16\)"):
            w.write_frame(0, 1, np.zeros((12, 16), np.uint32))
        with pytest.raises(DatasetError, match="fractional"):
            w.write_frame(0, 1, np.full((16, 12), 0.5))
    assert read_dataset(tmp_path / "w.h5", allow_partial=True).measured.sum() == 0


def test_wrong_units_attribute(tmp_path):
    p = tmp_path / "s.h5"
    write_dataset(p, make_ds())
    with h5py.File(p, "a") as f:
        f[P_TRANSLATION].attrs["units"] = "mm"
    with pytest.raises(DatasetError) as e:
        read_dataset(p)
    assert P_TRANSLATION in str(e.value) and "expected 'm', got 'mm'" in str(e.value)


def test_inconsistent_geometry(tmp_path):
    with pytest.raises(DatasetError, match=r"geometry.n_angles.*expected 5.*got 4"):
        make_ds(geometry=dataclasses.replace(GEOM, n_angles=4)).validate()
    with pytest.raises(DatasetError, match=r"raster_shape.*n_positions = 6.*\(2, 2\)"):
        make_ds(geometry=dataclasses.replace(GEOM, raster_shape=(2, 2))).validate()
    p = tmp_path / "s.h5"
    write_dataset(p, make_ds())
    with h5py.File(p, "a") as f:
        f["entry_1"].attrs["geometry_json"] = json.dumps(dataclasses.replace(GEOM, crop=(16, 10)).to_dict())
    with pytest.raises(DatasetError) as e:
        read_dataset(p)
    assert "geometry.crop" in str(e.value) and "expected (16, 12)" in str(e.value) and "(16, 10)" in str(e.value)
    with h5py.File(p, "a") as f:
        f["entry_1"].attrs["geometry_json"] = json.dumps(dataclasses.replace(GEOM, energy_kev=9.0).to_dict())
    with pytest.raises(DatasetError, match=r"source_1/energy: expected scalar"):
        read_dataset(p)


def test_other_shape_and_value_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"frames .*expected 4D.*\(30, 16, 12\)"):
        ds = make_ds()
        make_ds(frames=ds.frames.reshape(30, 16, 12)).validate()
    with pytest.raises(DatasetError, match=r"angles_deg.*\[n_angles=5\].*\(4,\)"):
        make_ds(angles_deg=np.arange(4.0)).validate()
    with pytest.raises(DatasetError, match=r"strictly monotonic"):
        make_ds(angles_deg=np.array([0.0, 0.01, 0.005, 0.02, 0.03])).validate()
    with pytest.raises(DatasetError, match=r"mask .*\[n1=16, n2=12\].*\(12, 16\)"):
        make_ds(mask=np.ones((12, 16), bool)).validate()
    with pytest.raises(DatasetError, match=r"expected dtype uint32.*int32"):
        make_ds(frames=np.zeros((5, 6, 16, 12), np.int32)).validate()
    with pytest.raises(DatasetError, match=r"metadata.*JSON"):
        make_ds(metadata={"f": object()}).validate()
    p = tmp_path / "s.h5"
    write_dataset(p, make_ds())
    with h5py.File(p, "a") as f:
        f.attrs["bp_plugin_format_version"] = 3
    with pytest.raises(DatasetError, match="upgrade bp_plugin"):
        read_dataset(p)


def test_docs_h5py_snippet_reads_a_file(tmp_path, monkeypatch):
    """The plain-h5py snippet of docs/dataset-format.md runs on a written file and gets the right values."""
    ds = make_ds()
    write_dataset(tmp_path / "scan.h5", ds)
    text = (REPO / "docs" / "dataset-format.md").read_text()
    snippet = text.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(snippet, ns)
    np.testing.assert_array_equal(ns["one_frame"], ds.frames[0, 5])
    np.testing.assert_array_equal(ns["translations_m"], ds.translations_m)
    assert ns["geometry"]["crop"] == [16, 12] and ns["measured"].all()


def test_writer_ground_truth_and_closed_writer(tmp_path):
    ds = make_ds()
    p = tmp_path / "w.h5"
    with DatasetWriter(p, GEOM, ds.translations_m, ds.angles_deg, ds.mask, metadata={"preset": "tiny"}) as w:
        w.write_ground_truth({"probe": ds.ground_truth["probe"]}, {"probe_units": "sqrt(photons)"})
        with pytest.raises(DatasetError, match=r"ground_truth\['probe'\].*already written"):
            w.write_ground_truth({"probe": ds.ground_truth["probe"]}, {})
        w.write_ground_truth({"omega_x": np.zeros((2, 3, 4))}, {"omega_x_units": "rad"})
    with pytest.raises(DatasetError, match="closed"):
        w.write_frame(0, 0, ds.frames[0, 0])
    r = read_dataset(p, allow_partial=True)
    np.testing.assert_array_equal(r.ground_truth["probe"], ds.ground_truth["probe"])
    assert r.metadata == {"preset": "tiny"} and set(r.ground_truth) == {"probe", "omega_x"}
    with h5py.File(p, "r") as f:
        assert f[P_GROUND_TRUTH]["probe"].attrs["units"] == "sqrt(photons)"
        assert f[P_GROUND_TRUTH]["omega_x"].attrs["units"] == "rad"
