"""The live web viewer in a real headless browser, against a real Tiled server (no mocks).

Debian's chromium (/usr/bin/chromium) driven by Python playwright; the page reads Tiled only through
``streaming.viewer_server`` (same origin, API key added server side). The reconstructions are
published with the project's own ``TiledPublisher``, exactly as the online reconstruction does.
Writes ``out/viewer-test.png`` (a screenshot of the page after a streamed update) for a human look,
``/tmp/viewer_dfxrm.png`` (the DF-XRM panel after a streamed update) and
``/tmp/viewer_dfxrm_layers.png`` (a layer scan's volume: a layer and the two cuts).
"""
from __future__ import annotations

import math
import os
import time
import colorsys
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from bp_plugin.dfxrm.maps import MAP_UNITS  # noqa: E402
from streaming.publish import UNITS, TiledPublisher  # noqa: E402
from streaming.viewer_server import start_viewer  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "out" / "viewer-test.png"
NZ, NY, NX = 12, 16, 20
WAIT_MS = 15_000


def snapshot(uid: str, frames: int, offset: float, *, state: str = "live", iterations: int = 20,
             behind: bool = False):
    """Metadata and arrays as the online reconstruction publishes them.

    ``eps_zz`` is ``1e-5 z + 1e-6 x + offset`` inside a box (NaN outside), so every z slice has its
    own range and every snapshot (offset) its own values.
    """
    z, y, x = np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")
    inside = (x >= 2) & (x < NX - 2) & (y >= 3) & (y < NY - 3)
    eps = np.where(inside, 1e-5 * z + 1e-6 * x + offset, np.nan).astype(np.float32)
    tilt = np.where(inside, 1e-4 * np.sin(y / 3.0), np.nan).astype(np.float32)
    p1, r2 = np.linspace(-1e-6, 1e-6, 24), np.linspace(-1.5e-6, 1.5e-6, 32)
    amp = np.exp(-(p1[:, None] ** 2 + r2[None] ** 2) / 0.5e-12).astype(np.float32)
    arrays = {"density": inside.astype(np.float32), "phase": np.where(inside, x / 10.0, 0).astype(np.float32),
              "eps_zz": eps, "omega_x": tilt, "omega_y": -tilt,
              "probe_amplitude": amp, "probe_phase": np.angle(np.exp(1j * (r2[None] * 3e6 + p1[:, None] * 1e6))).astype(np.float32),
              "background": np.zeros((3, 8, 8), np.float32), "measured": np.ones((3, 50), np.uint8)}
    its = list(range(iterations + 1))
    # the keys of streaming.live.LiveReconstruction.status (docs/streaming-protocol.md)
    status = {"state": state, "frames_expected": 300, "frames_measured": frames, "received": frames,
              "placed": frames, "duplicates": 0, "rejected": 0, "missing": 0, "recovered": 0, "behind": behind,
              "iteration": iterations, "error": 0.5 ** iterations, "stage": "live", "updated": time.time()}
    md = {"kind": "bp-reconstruction", "version": 1, "raw_uid": uid, "status": status,
          "history": {"iteration": its, "error": [0.5 ** (i / 4) for i in its]},
          "grid": {"origin_m": [-1e-6, -0.8e-6, -0.6e-6], "voxel_m": 1e-7, "shape": [NZ, NY, NX],
                   "axes": ["z", "y", "x"]},
          "probe_grid": {"p1_m": p1.tolist(), "r2_m": r2.tolist()}, "units": dict(UNITS)}
    return md, arrays


def publish(client, uid: str, frames: int, offset: float, **kw):
    """Publish one snapshot synchronously; return its arrays (the expected values)."""
    md, arrays = snapshot(uid, frames, offset, **kw)
    pub = TiledPublisher(client, uid, min_interval_s=0.0)
    pub.close(md, arrays)
    assert pub.last_error is None, pub.last_error   # the publisher only logs failures
    return arrays


@pytest.fixture(scope="module")
def viewer(tiled_server):
    with start_viewer(tiled_server.url, tiled_server.api_key) as v:
        yield v


@pytest.fixture(scope="module")
def browser():
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page; JavaScript errors fail the test (checked after it)."""
    pg = browser.new_page(viewport={"width": 1500, "height": 950})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(WAIT_MS)
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def attr(page, selector, name):
    return page.get_attribute(selector, f"data-{name}")


def wait_slice(page, axis, *, index, lo, hi):
    """Wait until the #slice-<axis> canvas shows slice `index` with finite extrema lo, hi."""
    page.wait_for_function(
        """([sel, k, lo, hi]) => { const d = document.querySelector(sel).dataset;
             const close = (a, b) => Math.abs(parseFloat(a) - b) <= 1e-6 * Math.abs(b);
             return d.index === String(k) && close(d.min, lo) && close(d.max, hi); }""",
        arg=[f"#slice-{axis}", index, float(lo), float(hi)], timeout=WAIT_MS)


def test_page_shows_published_run(tiled_server, viewer, page):
    """Default: the most recently updated run; ?run= picks another; both show their counters."""
    client = tiled_server.client()
    older, newer = f"old-{uuid.uuid4().hex[:8]}", f"new-{uuid.uuid4().hex[:8]}"
    publish(client, older, 120, 0.0)
    publish(client, newer, 45, 0.0, state="final")

    page.goto(viewer.url)
    page.wait_for_selector(f"body[data-run='{newer}'][data-updated]")
    pw.expect(page.locator("#frames")).to_have_text("45 / 300")
    pw.expect(page.locator("#state")).to_have_text("final")
    options = page.eval_on_selector_all("#run option", "os => os.map(o => o.value)")
    assert options.index(newer) < options.index(older), options   # newest first

    page.goto(f"{viewer.url}?run={older}")
    page.wait_for_selector(f"body[data-run='{older}'][data-updated]")
    pw.expect(page.locator("#frames")).to_have_text("120 / 300")
    pw.expect(page.locator("#state")).to_have_text("live")
    assert page.is_hidden("#behind")
    assert attr(page, "#error-plot", "points") == "21"
    assert float(attr(page, "#probe", "max-amplitude")) > 0.9
    assert attr(page, "#colorbar", "unit") == "10⁻⁴"   # strain shown in units of 1e-4


def test_z_slider_changes_drawn_slice(tiled_server, viewer, page):
    uid = f"slider-{uuid.uuid4().hex[:8]}"
    eps = publish(tiled_server.client(), uid, 300, 0.0, state="final")["eps_zz"]
    page.goto(f"{viewer.url}?run={uid}")
    k0 = NZ // 2   # the page opens on the middle slices
    wait_slice(page, "z", index=k0, lo=np.nanmin(eps[k0]), hi=np.nanmax(eps[k0]))
    wait_slice(page, "x", index=NX // 2, lo=np.nanmin(eps[:, :, NX // 2]), hi=np.nanmax(eps[:, :, NX // 2]))

    k1 = 2
    page.fill("#slider-z", str(k1))   # sets the range input and fires its input event
    wait_slice(page, "z", index=k1, lo=np.nanmin(eps[k1]), hi=np.nanmax(eps[k1]))
    assert np.nanmin(eps[k1]) != np.nanmin(eps[k0])      # so the wait above proves the redraw
    assert page.text_content("#cap-z").startswith("z = -0.40 µm")   # origin -0.6 µm + 2 x 0.1 µm

    page.select_option("#quantity", "density")   # another map: same cut, values in [0, 1]
    wait_slice(page, "z", index=k1, lo=0.0, hi=1.0)


def test_values_update_while_streaming(tiled_server, viewer, page):
    """Snapshots submitted through a live publisher reach the open page within seconds."""
    uid = f"stream-{uuid.uuid4().hex[:8]}"
    pub = TiledPublisher(tiled_server.client(), uid, min_interval_s=0.2)
    try:
        md, arrays = snapshot(uid, 60, 0.0, iterations=5)
        pub.submit(md, arrays)
        page.goto(f"{viewer.url}?run={uid}")
        pw.expect(page.locator("#frames")).to_have_text("60 / 300", timeout=WAIT_MS)
        k = NZ // 2
        wait_slice(page, "z", index=k, lo=np.nanmin(arrays["eps_zz"][k]), hi=np.nanmax(arrays["eps_zz"][k]))
        first = attr(page, "body", "updated")

        assert page.is_hidden("#behind")
        md, arrays = snapshot(uid, 240, 3e-5, iterations=40, behind=True)   # more frames, different maps
        t0 = time.monotonic()
        pub.submit(md, arrays)
        pw.expect(page.locator("#frames")).to_have_text("240 / 300", timeout=WAIT_MS)
        wait_slice(page, "z", index=k, lo=np.nanmin(arrays["eps_zz"][k]), hi=np.nanmax(arrays["eps_zz"][k]))
        pw.expect(page.locator("#error-plot")).to_have_attribute("data-points", "41")
        pw.expect(page.locator("#behind")).to_be_visible()
        # data-updated is set once the probe is loaded too, after the slices the wait above saw
        page.wait_for_function("first => document.body.dataset.updated !== first", arg=first, timeout=WAIT_MS)
        assert attr(page, "body", "updated") != first
        latency = time.monotonic() - t0
        assert pub.last_error is None, pub.last_error
        page.fill("#slider-y", "4")   # a cut with a visible crosshair off-centre, for the screenshot
        wait_slice(page, "y", index=4, lo=np.nanmin(arrays["eps_zz"][:, 4]), hi=np.nanmax(arrays["eps_zz"][:, 4]))
        page.locator("#slider-y").blur()
        page.wait_for_timeout(500)   # let the progress bar's CSS transition finish
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        pub.close(*snapshot(uid, 300, 3e-5, state="final", iterations=40))
    pw.expect(page.locator("#state")).to_have_text("final", timeout=WAIT_MS)
    pw.expect(page.locator("#frames")).to_have_text("300 / 300")
    pw.expect(page.locator("#behind")).to_be_hidden()
    assert latency < WAIT_MS / 1000


def test_proxy_is_read_only_and_keyless(tiled_server, viewer, page):
    uid = f"proxy-{uuid.uuid4().hex[:8]}"
    publish(tiled_server.client(), uid, 10, 0.0)
    sent = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    page.goto(f"{viewer.url}?run={uid}")
    page.wait_for_selector(f"body[data-run='{uid}'][data-updated]")
    path = f"/api/v1/metadata/reconstructions/{uid}"

    # a read through the proxy works from the page, which sends no key of its own
    got = page.evaluate("async p => { const r = await fetch(p); return [r.status, await r.json()]; }", path)
    assert got[0] == 200 and got[1]["data"]["attributes"]["metadata"]["raw_uid"] == uid
    for method in ("PUT", "POST", "PATCH", "DELETE"):
        status, text = page.evaluate(
            "async ([p, m]) => { const r = await fetch(p, {method: m, body: m === 'DELETE' ? null : '{}'}); "
            "return [r.status, await r.text()]; }", [path, method])
        assert status == 405 and "read-only" in text, (method, status, text)
    assert sent and all(url.startswith(viewer.url) and key is None for url, key in sent), sent
    assert tiled_server.api_key not in page.content()

    # Tiled itself refuses the same read without a key: the proxy is what adds it
    assert httpx.get(tiled_server.url + path).status_code == 401
    assert httpx.get(viewer.url.rstrip("/") + path).status_code == 200
    # only Tiled's read endpoints are forwarded, and nothing else is served
    assert httpx.get(viewer.url + "api/v1/auth/apikey").status_code == 404
    assert httpx.get(viewer.url + "api/v1/metadata/%2E%2E/auth/apikey").status_code == 404
    assert httpx.get(viewer.url + "nothing-here.js").status_code == 404
    assert httpx.get(viewer.url + "viewer.js").headers["content-type"].startswith("text/javascript")


def test_proxy_reports_unreachable_tiled():
    with start_viewer("http://127.0.0.1:9", "k") as v:   # port 9 (discard): nothing listens there
        r = httpx.get(v.url + "api/v1/metadata/reconstructions", timeout=10)
    assert r.status_code == 502 and "unreachable" in r.text


# ---------------------------------------------------------------- DF-XRM
DFX_SHOT = Path("/tmp/viewer_dfxrm.png")
LAYERS_SHOT = Path("/tmp/viewer_dfxrm_layers.png")
DY, DX = 48, 64
DFX_EXPECTED = 11 * 11 * 5
LEFT_DEG, RIGHT_DEG = 30.0, 210.0   # tilt directions (from +phi towards +chi) of the two halves


def dfx_snapshot(uid: str, placed: int, *, turn: float = 0.0, offset: float = 0.0, state: str = "live"):
    """Metadata and maps as the DF-XRM service publishes them (docs/dfxrm.md, "Tiled layout").

    The left and right halves tilt in opposite directions (LEFT_DEG, RIGHT_DEG, plus ``turn``), so
    the median tilt is 0 and the colour wheel's hue is the direction itself; the magnitude grows
    with y. ``strain`` is a ramp along x plus ``offset``. NaN outside a box (the crystal).
    """
    y, x = np.mgrid[0:DY, 0:DX].astype(np.float64)
    inside = (x >= 3) & (x < DX - 3) & (y >= 2) & (y < DY - 2)
    ang = np.radians(np.where(x < DX // 2, LEFT_DEG, RIGHT_DEG) + turn)
    mag = 0.02 * (0.5 + 0.5 * y / (DY - 1))
    nan = lambda a: np.where(inside, a, np.nan).astype(np.float32)  # noqa: E731
    arrays = {"intensity": np.where(inside, 1e4 * (1 + y / DY), 5.0).astype(np.float32),
              "mask": inside.astype(np.uint8),
              "tilt_phi": nan(mag * np.cos(ang)), "tilt_chi": nan(mag * np.sin(ang)),
              "fwhm_phi": nan(0.01 + 0.004 * y / DY), "fwhm_chi": nan(0.02 + 0.004 * x / DX),
              "cov_phi_chi": nan(0 * x), "strain": nan(1e-4 * (x - DX / 2) / (DX / 2) + offset),
              "fwhm_tth": nan(0.005 + 0 * x),
              "nye_xy": nan(0 * x), "nye_yx": nan(0 * x), "nye_zz": nan(0.3 * np.sin(x / 6.0))}
    status = {"state": state, "frames_expected": DFX_EXPECTED, "received": placed, "placed": placed,
              "duplicates": 0, "rejected": 0, "missing": 0, "recovered": 0, "updated": time.time()}
    md = {"kind": "dfxrm-maps", "version": 1, "raw_uid": uid, "status": status,
          "scan": {"kind": "combined", "axes": ["phi", "chi", "tth"], "centre_deg": [0.0, 0.0, 17.9],
                   "shape": [11, 11, 5]},
          "geometry": {"energy_kev": 17.0, "d_spacing_m": 2.3381e-10, "pixel_size_m": 150e-9, "phi0_deg": 0.0,
                       "chi0_deg": 0.0, "tth0_deg": None, "magnification": 17.9, "theta_bragg_deg": 8.95,
                       "tth_ref_deg": 17.9},
          "units": {k: MAP_UNITS[k] for k in arrays}}
    return md, arrays


def dfx_publisher(client, uid: str, min_interval_s: float = 0.0) -> TiledPublisher:
    return TiledPublisher(client, uid, root="dfxrm", units=MAP_UNITS, dims={n: ["y", "x"] for n in MAP_UNITS},
                          min_interval_s=min_interval_s)


def hue_at(page, fx: float, fy: float) -> tuple[float, float]:
    """(hue in deg, saturation) of the tilt map at fractions (fx, fy) of its image (fy from the top)."""
    rgb = page.evaluate(
        """([fx, fy]) => { const cv = document.querySelector("#dfx-tilt");
             const [x, y, w, h] = cv.dataset.plot.split(",").map(Number), k = cv.width / parseFloat(cv.style.width);
             const px = cv.getContext("2d").getImageData(Math.round((x + fx * w) * k), Math.round((y + fy * h) * k), 1, 1);
             return Array.from(px.data.slice(0, 3)); }""", [fx, fy])
    h, s, _ = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return h * 360, s


def assert_hue(got: float, want: float, tol: float = 8.0):
    d = (got - want + 180) % 360 - 180
    assert abs(d) < tol, f"hue {got:.1f} deg, expected {want % 360:.1f}"


def wait_dfx_map(page, name, lo, hi):
    """Wait until #dfx-scalar shows map `name` with finite extrema lo, hi (stored units)."""
    page.wait_for_function(
        """([name, lo, hi]) => { const d = document.querySelector("#dfx-scalar").dataset;
             const close = (a, b) => Math.abs(parseFloat(a) - b) <= 1e-5 * Math.abs(b) + 1e-12;
             return d.map === name && close(d.min, lo) && close(d.max, hi); }""",
        arg=[name, float(lo), float(hi)], timeout=WAIT_MS)


def test_dfxrm_run_listed_selected_and_drawn(tiled_server, viewer, page):
    """Both techniques in the run list; a DF-XRM run shows the colour wheel and scalar maps."""
    client = tiled_server.client()
    uid, ptycho = f"dfx-{uuid.uuid4().hex[:8]}", f"pty-{uuid.uuid4().hex[:8]}"
    md, arrays = dfx_snapshot(uid, 200, state="final")
    pub = dfx_publisher(client, uid)
    pub.close(md, arrays)
    assert pub.last_error is None, pub.last_error
    publish(client, ptycho, 30, 0.0)   # the newest run: the page opens on it

    page.goto(viewer.url)
    page.wait_for_selector(f"body[data-run='{ptycho}'][data-tech='bp'][data-updated]")
    labels = dict(page.eval_on_selector_all("#run option", "os => os.map(o => [o.value, o.textContent])"))
    assert "DF-XRM" in labels[uid] and "ptycho" in labels[ptycho], labels

    page.select_option("#run", uid)
    page.wait_for_selector(f"body[data-run='{uid}'][data-tech='dfxrm'][data-updated]")
    assert page.is_hidden("#maps") and page.is_hidden("#probe") and page.is_visible("#dfxrm")
    pw.expect(page.locator("#dfx-frames")).to_have_text(f"200 / {DFX_EXPECTED}")
    pw.expect(page.locator("#dfx-state")).to_have_text("final")
    pw.expect(page.locator("#frames")).to_have_text(f"200 / {DFX_EXPECTED}")   # the side panel too

    # colour wheel: each half has its own tilt direction as hue; NaN (outside the crystal) is black
    (hl, sl), (hr, sr) = hue_at(page, 0.25, 0.5), hue_at(page, 0.75, 0.5)
    assert_hue(hl, LEFT_DEG)
    assert_hue(hr, RIGHT_DEG)
    assert 0.4 < sl < 0.95 and 0.4 < sr < 0.95, (sl, sr)   # magnitude below the 98th percentile radius
    assert page.evaluate("""() => { const cv = document.querySelector("#dfx-tilt"), [x, y] = cv.dataset.plot.split(",").map(Number);
                                    return Array.from(cv.getContext("2d").getImageData(x + 1, y + 1, 1, 1).data.slice(0, 3)); }""") == [0, 0, 0]
    mag = np.hypot(arrays["tilt_phi"], arrays["tilt_chi"])
    auto = float(attr(page, "#dfx-tilt", "auto-radius"))
    assert auto == pytest.approx(np.nanpercentile(mag, 98), rel=1e-3)
    assert float(attr(page, "#dfx-tilt", "median-phi")) == pytest.approx(0, abs=1e-6)
    assert float(attr(page, "#dfx-tilt", "scale-bar-um")) > 0

    # a larger radius desaturates; "auto" comes back to the 98th percentile
    page.fill("#dfx-radius-num", str(round(4 * auto, 4)))
    pw.expect(page.locator("#dfx-tilt")).to_have_attribute("data-radius", str(round(4 * auto, 4)))
    assert hue_at(page, 0.25, 0.5)[1] < sl / 2
    page.click("#dfx-radius-auto")
    pw.expect(page.locator("#dfx-tilt")).to_have_attribute("data-radius", str(auto))

    # scalar maps: strain first (diverging, in 1e-4), then others with their own units and ranges
    options = page.eval_on_selector_all("#dfx-map option", "os => os.map(o => o.value)")
    assert options[0] == "strain" and {"fwhm_phi", "fwhm_chi", "intensity", "nye_zz"} <= set(options), options
    wait_dfx_map(page, "strain", np.nanmin(arrays["strain"]), np.nanmax(arrays["strain"]))
    assert attr(page, "#dfx-colorbar", "unit") == "10⁻⁴"
    assert float(attr(page, "#dfx-colorbar", "vmin")) == -float(attr(page, "#dfx-colorbar", "vmax"))
    for name, unit in (("fwhm_phi", "deg"), ("intensity", "counts"), ("nye_zz", "µm⁻¹")):
        page.select_option("#dfx-map", name)
        wait_dfx_map(page, name, np.nanmin(arrays[name]), np.nanmax(arrays[name]))
        pw.expect(page.locator("#dfx-colorbar")).to_have_attribute("data-unit", unit)
    vmin, vmax = (float(attr(page, "#dfx-colorbar", k)) for k in ("vmin", "vmax"))
    assert vmin == -vmax and 0.2 < vmax <= 0.3   # nye_zz: diverging about 0
    page.select_option("#dfx-map", "fwhm_phi")
    pw.expect(page.locator("#dfx-colorbar")).to_have_attribute("data-unit", "deg")
    vmin, vmax = (float(attr(page, "#dfx-colorbar", k)) for k in ("vmin", "vmax"))
    assert 0.0099 < vmin < vmax < 0.0141   # sequential: the data's own range
    assert "map=fwhm_phi" in page.url


def test_dfxrm_updates_while_open(tiled_server, viewer, page):
    """A second publication (more frames, turned tilts, shifted strain) reaches the open page."""
    uid = f"dfxlive-{uuid.uuid4().hex[:8]}"
    pub = dfx_publisher(tiled_server.client(), uid, min_interval_s=0.2)
    try:
        md, arrays = dfx_snapshot(uid, 120)
        pub.submit(md, arrays)
        page.goto(f"{viewer.url}?run={uid}")
        pw.expect(page.locator("#dfx-frames")).to_have_text(f"120 / {DFX_EXPECTED}", timeout=WAIT_MS)
        wait_dfx_map(page, "strain", np.nanmin(arrays["strain"]), np.nanmax(arrays["strain"]))
        assert_hue(hue_at(page, 0.25, 0.5)[0], LEFT_DEG)
        first, width = attr(page, "body", "updated"), page.evaluate("() => $('dfx-progress-fill').style.width")

        md, arrays = dfx_snapshot(uid, 480, turn=90.0, offset=0.5e-4)
        pub.submit(md, arrays)
        pw.expect(page.locator("#dfx-frames")).to_have_text(f"480 / {DFX_EXPECTED}", timeout=WAIT_MS)
        wait_dfx_map(page, "strain", np.nanmin(arrays["strain"]), np.nanmax(arrays["strain"]))
        assert_hue(hue_at(page, 0.25, 0.5)[0], LEFT_DEG + 90)
        assert_hue(hue_at(page, 0.75, 0.5)[0], RIGHT_DEG + 90)
        assert attr(page, "body", "updated") != first
        assert page.evaluate("() => $('dfx-progress-fill').style.width") != width
        assert pub.last_error is None, pub.last_error
        page.wait_for_timeout(500)   # let the progress bar's CSS transition finish
        page.screenshot(path=str(DFX_SHOT), full_page=True)
    finally:
        pub.close(*dfx_snapshot(uid, DFX_EXPECTED, turn=90.0, offset=0.5e-4, state="final"))
    pw.expect(page.locator("#dfx-state")).to_have_text("final", timeout=WAIT_MS)
    pw.expect(page.locator("#dfx-frames")).to_have_text(f"{DFX_EXPECTED} / {DFX_EXPECTED}")


def test_a_layer_scan_volume_is_browsed_layer_by_layer(tiled_server, viewer, page):
    """A layer scan's (layers, rows, cols) volumes: the layer slider opens on the newest finished
    layer, another layer is fetched and drawn when picked, and a layer's y axis spans its rows at
    the volume's y voxel (p / sin 2theta), not the camera pixel."""
    client = tiled_server.client()
    uid = f"dfl-{uuid.uuid4().hex[:8]}"
    md, maps = dfx_snapshot(uid, 300)
    L = 3
    vol = {k: np.stack([maps[k] + (0.01 * i if k == "fwhm_phi" else 0) for i in range(L)]).astype(np.float32)
           for k in ("intensity", "tilt_phi", "tilt_chi", "fwhm_phi", "fwhm_chi", "cov_phi_chi")}
    vol["mask"] = np.stack([maps["mask"]] * L)
    md["scan"] = {"kind": "layers", "axes": ["phi", "chi"], "centre_deg": [0.0, 0.0], "shape": [11, 11]}
    vy, vx = 150e-9 / math.sin(math.radians(17.9)), 150e-9
    md["layers"] = {"heights_m": [-1e-6, 0.0, 1e-6], "finished": [0, 1], "layer_points": 121,
                    "voxel_m": [1e-6, vy, vx], "dims": ["h", "y", "x"], "tth_deg": 17.9}
    pub = dfx_publisher(client, uid)
    pub.close(md, vol)
    assert pub.last_error is None, pub.last_error

    page.goto(viewer.url + f"?run={uid}&map=fwhm_phi")
    page.wait_for_selector(f"body[data-run='{uid}'][data-tech='dfxrm'][data-updated][data-layer='1']")
    assert page.is_visible("#dfx-layer-ctl")
    pw.expect(page.locator("#dfx-layer-num")).to_contain_text("2 / 3")
    f = vol["fwhm_phi"]
    wait_dfx_map(page, "fwhm_phi", np.nanmin(f[1]), np.nanmax(f[1]))
    page.eval_on_selector("#dfx-layer", "el => { el.value = '2'; el.dispatchEvent(new Event('input')); }")
    wait_dfx_map(page, "fwhm_phi", np.nanmin(f[2]), np.nanmax(f[2]))
    pw.expect(page.locator("#dfx-layer-num")).to_contain_text("(measuring or to come)")
    # the plot's aspect: rows x vy against cols x vx
    w, h = page.evaluate("""() => { const [x, y, w, h] = document.querySelector("#dfx-scalar").dataset.plot.split(",").map(Number);
                                    return [w, h]; }""")
    assert h / w == pytest.approx(DY * vy / (DX * vx), rel=0.03)

    # the two other cuts through the volume: at the middle y and x first, then where the slider says
    def wait_cut(axis, index, values):
        page.wait_for_function(
            """([a, i, lo, hi]) => { const d = document.querySelector(`#dfx-cut-${a}`).dataset;
                 const close = (u, v) => Math.abs(parseFloat(u) - v) <= 1e-5 * Math.abs(v) + 1e-12;
                 return d.index === String(i) && close(d.min, lo) && close(d.max, hi); }""",
            arg=[axis, index, float(np.nanmin(values)), float(np.nanmax(values))], timeout=WAIT_MS)

    pw.expect(page.locator("#dfx-cuts")).to_be_visible(timeout=WAIT_MS)
    wait_cut("y", DY // 2, f[:, DY // 2, :])
    wait_cut("x", DX // 2, f[:, :, DX // 2])
    page.eval_on_selector("#dfx-cut-y-pos", "el => { el.value = '5'; el.dispatchEvent(new Event('input')); }")
    assert np.nanmax(f[:, 5, :]) != np.nanmax(f[:, DY // 2, :])           # fwhm_phi grows with y: a new range
    wait_cut("y", 5, f[:, 5, :])
    page.locator("#dfxrm").screenshot(path=str(LAYERS_SHOT))


def test_a_weak_beam_series_is_drawn_as_maps_not_as_a_volume(tiled_server, viewer, page):
    """A weak-beam series publishes its images as a 3D stack beside 2D maps: no layer slider, and
    its integrated intensity is drawn (the stack is not a volume of layers)."""
    client = tiled_server.client()
    uid = f"dfw-{uuid.uuid4().hex[:8]}"
    md, maps = dfx_snapshot(uid, 4, state="final")
    md["scan"] = {"kind": "weak_beam", "axes": ["phi", "chi", "tth"], "offsets_deg": [[0.02, 0, 0]] * 4}
    arrays = {"intensity": maps["intensity"], "mask": maps["mask"],
              "weak_beam": np.stack([maps["intensity"]] * 4).astype(np.float32)}
    pub = dfx_publisher(client, uid)
    pub.close(md, arrays)
    assert pub.last_error is None, pub.last_error
    page.goto(viewer.url + f"?run={uid}")
    page.wait_for_selector(f"body[data-run='{uid}'][data-tech='dfxrm'][data-updated]")
    wait_dfx_map(page, "intensity", np.nanmin(maps["intensity"]), np.nanmax(maps["intensity"]))
    assert page.is_hidden("#dfx-layer-ctl") and page.is_hidden("#dfx-cuts")


def test_the_repetitions_of_an_in_situ_series_are_stepped_through_in_time(tiled_server, viewer, page):
    """Three runs of one temperature series (metadata ``series``), published out of order: the Time
    slider shows where the run on screen sits (2 / 3 at 400 K) and switches to another repetition's
    run, whose own maps are then drawn."""
    client = tiled_server.client()
    series = {"uid": f"ser-{uuid.uuid4().hex}", "n": 3, "name": "temperature", "motor": "temperature", "units": "K"}
    uids = [f"dfs{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    strains = {}
    for i in (2, 0, 1):
        md, maps = dfx_snapshot(uids[i], DFX_EXPECTED, offset=1e-4 * i, state="final")
        md["series"] = {**series, "index": i, "setpoint": 300.0 + 100 * i, "readback": 300.0 + 100 * i}
        strains[i] = maps["strain"]
        pub = dfx_publisher(client, uids[i])
        pub.close(md, maps)
        assert pub.last_error is None, pub.last_error
    page.goto(viewer.url + f"?run={uids[1]}&map=strain")
    page.wait_for_selector(f"body[data-run='{uids[1]}'][data-updated][data-series-index='1']")
    assert page.is_visible("#dfx-series-ctl")
    pw.expect(page.locator("#dfx-series-num")).to_contain_text("2 / 3 · temperature 400 K · 3 published")
    wait_dfx_map(page, "strain", np.nanmin(strains[1]), np.nanmax(strains[1]))
    page.eval_on_selector("#dfx-series", "el => { el.value = '2'; el.dispatchEvent(new Event('change')); }")
    page.wait_for_selector(f"body[data-run='{uids[2]}'][data-updated][data-series-index='2']", timeout=WAIT_MS)
    pw.expect(page.locator("#dfx-series-num")).to_contain_text("3 / 3 · temperature 500 K")
    wait_dfx_map(page, "strain", np.nanmin(strains[2]), np.nanmax(strains[2]))
    assert f"run={uids[2]}" in page.url
    # a run outside any series has no Time control
    md, maps = dfx_snapshot(f"dfn-{uuid.uuid4().hex[:8]}", DFX_EXPECTED, state="final")
    pub = dfx_publisher(client, md["raw_uid"])
    pub.close(md, maps)
    page.goto(viewer.url + f"?run={md['raw_uid']}")
    page.wait_for_selector(f"body[data-run='{md['raw_uid']}'][data-updated]")
    assert page.is_hidden("#dfx-series-ctl")


def test_a_topo_tomography_is_browsed_projection_by_projection_then_slice_by_slice(tiled_server, viewer, page):
    """A topo-tomography's stacks of different depths: the projections (the slider opens on the
    newest complete one, with its omega) and, picked from the menu, the volume's slices along Q."""
    client = tiled_server.client()
    uid = f"dft-{uuid.uuid4().hex[:8]}"
    md, maps = dfx_snapshot(uid, DFX_EXPECTED, state="final")
    md["scan"] = {"kind": "topotomo", "axes": ["omega", "phi"], "centre_deg": [0.0, 0.0], "shape": [4, 21]}
    md["topotomo"] = {"omegas_deg": [0.0, 90.0, 180.0, 270.0], "finished": [0, 1, 2], "projection_points": 21,
                      "tth_deg": 17.9, "voxel_m": [150e-9] * 3}
    proj = np.stack([maps["intensity"] * (1 + i) for i in range(4)]).astype(np.float32)
    proj[3] = np.nan                                                    # its rocking is not complete
    vol = np.stack([maps["intensity"][:32, :32] * (10 + i) for i in range(5)]).astype(np.float32)
    md["units"] = {"projections": MAP_UNITS["projections"], "volume": MAP_UNITS["volume"]}
    pub = dfx_publisher(client, uid)
    pub.close(md, {"projections": proj, "volume": vol, "shape": (vol > 0).astype(np.uint8)})
    assert pub.last_error is None, pub.last_error
    page.goto(viewer.url + f"?run={uid}")
    page.wait_for_selector(f"body[data-run='{uid}'][data-updated][data-layer='2']")
    pw.expect(page.locator("#dfx-layer-ctl")).to_contain_text("Projection")
    pw.expect(page.locator("#dfx-layer-num")).to_contain_text("3 / 4 · ω 180°")
    wait_dfx_map(page, "projections", np.nanmin(proj[2]), np.nanmax(proj[2]))
    page.select_option("#dfx-map", "volume")
    pw.expect(page.locator("#dfx-layer-num")).to_contain_text("3 / 5 · w 0 µm along Q")
    wait_dfx_map(page, "volume", np.nanmin(vol[2]), np.nanmax(vol[2]))
    page.eval_on_selector("#dfx-layer", "el => { el.value = '4'; el.dispatchEvent(new Event('input')); }")
    wait_dfx_map(page, "volume", np.nanmin(vol[4]), np.nanmax(vol[4]))
    pw.expect(page.locator("#dfx-layer-num")).to_contain_text("5 / 5 · w 0.3 µm")
    assert page.is_hidden("#dfx-cuts")
