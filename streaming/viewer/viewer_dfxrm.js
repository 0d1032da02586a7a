/* DF-XRM panel of the live viewer: maps published in Tiled under dfxrm/<raw_uid> (docs/dfxrm.md).
 *
 * Loaded before viewer.js and sharing its globals ($, S, API, getJSON, getFloat32, runPath, LUTS,
 * drawImagePlot, drawColorbar, hsv, ...): it only defines functions; viewer.js calls dfxInit once,
 * then dfxRefresh from its poll with the selected run's status. Arrays are re-read only when
 * status.updated changes.
 *
 * Test hooks (tests/test_viewer.py): #dfx-tilt carries data-plot (image rectangle in CSS px,
 * "x,y,w,h"), data-radius, data-auto-radius, data-median-phi / -chi; #dfx-scalar data-map,
 * data-min / data-max (finite extrema, stored units); #dfx-colorbar data-vmin / -vmax / -unit.
 */
"use strict";

// The scalar maps offered, in menu order (only those the run publishes appear). k x stored value
// is displayed, in `unit`, when the stored unit starts with `base` (strain in 1e-4 reads better).
const DFX_MAPS = {
  strain: {name: "strain ε_zz", short: "ε_zz", cmap: "div", base: "1", k: 1e4, unit: "10⁻⁴"},
  tilt_phi: {name: "tilt φ", short: "tilt φ", cmap: "div"},
  tilt_chi: {name: "tilt χ", short: "tilt χ", cmap: "div"},
  fwhm_phi: {name: "FWHM φ (mosaicity)", short: "FWHM φ", cmap: "seq"},
  fwhm_chi: {name: "FWHM χ (mosaicity)", short: "FWHM χ", cmap: "seq"},
  fwhm_tth: {name: "FWHM 2θ", short: "FWHM 2θ", cmap: "seq"},
  intensity: {name: "integrated intensity", short: "intensity", cmap: "seq"},
  nye_zz: {name: "Nye α_zz", short: "α_zz", cmap: "div"},
  nye_xy: {name: "Nye α_xy", short: "α_xy", cmap: "div"},
  nye_yx: {name: "Nye α_yx", short: "α_yx", cmap: "div"},
  // topo-tomography (docs/dfxrm.md, "Projections around Q"): stacks browsed with the slider
  projections: {name: "projections around Q", short: "projection", cmap: "seq"},
  volume: {name: "grain volume (back-projection)", short: "volume", cmap: "seq"},
};
const DFX_KEY_W = 184, DFX_MAP_MAX_PX = 420;
const DFX_BLACK = [0, 0, 0];
const D = {};   // the DF-XRM run on screen; reset by dfxReset when the run changes

function dfxReset() {
  Object.assign(D, {meta: null, shapes: {}, depths: {}, arrays: {}, snap: 0, drawn: null, radius: null, tilt: null,
                    layers: 0, layer: null, layerPicked: false, cut: {y: null, x: null}, cuts: {},
                    map: D.map || new URLSearchParams(location.search).get("map") || "strain"});
  $("dfx-map").replaceChildren();
  $("dfx-layer-ctl").hidden = true;
  $("dfx-series-ctl").hidden = true;
  $("dfx-cuts").hidden = true;
  $("dfx-msg").textContent = "";
  $("metrics").hidden = true;   // the previous run's figures of merit
}

// ---------------------------------------------------------------- loading
/** One poll of a DF-XRM run: status line always, metadata and maps when status.updated moved. */
async function dfxRefresh(uid, status, gen) {
  dfxStatus(status);
  if (status.updated === D.drawn) return;
  const [md, children] = await Promise.all([
    getJSON(`${API}/metadata/${runPath(uid)}?fields=metadata`),
    getJSON(`${API}/search/${runPath(uid)}?fields=structure&page%5Blimit%5D=100`),
  ]);
  if (gen !== S.gen) return;
  D.meta = md.data.attributes.metadata;
  [D.shapes, D.depths] = dfxShapes(children.data, Boolean(D.meta.layers || D.meta.topotomo));
  D.layers = D.depths[dfxShown()] || 0;
  dfxLayerControl();
  await dfxSeriesControl(gen);
  if (gen !== S.gen) return;
  D.snap++;
  D.arrays = {};
  dfxDescribe();
  dfxMenu();
  const names = dfxDrawnNames();
  // no "updated" yet: the container is being created and its arrays written one by one
  if (!names.length || status.updated === undefined) {
    $("dfx-msg").textContent = "Waiting for the first maps of this run…";
    return;
  }
  const got = await dfxFetch(uid, names, gen);
  if (!got) return;
  dfxDraw();
  D.drawn = status.updated;   // only now: a failure above means "try again next poll"
  document.body.dataset.updated = String(status.updated);
}

/** [{name: [rows, cols]}, {name: depth}] of the run's float maps: 2D, or when `stacked` (the
 *  metadata's `layers` or `topotomo`) the 3D stacks browsed slice by slice with the slider (a
 *  layer scan's volumes, a topo-tomography's projections and volume; depth 0 for 2D maps: a
 *  weak-beam series' 3D image stack is no volume of maps). */
function dfxShapes(children, stacked) {
  const out = {}, depths = {};
  for (const c of children) {
    const st = c.attributes.structure;
    if (!(st && st.shape && st.data_type && st.data_type.kind === "f")) continue;
    if (st.shape.length === 2) out[c.id] = st.shape;
    else if (stacked && st.shape.length === 3) { out[c.id] = st.shape.slice(1); depths[c.id] = st.shape[0]; }
  }
  return [out, depths];
}

/** The scalar map drawn: the one picked if this run has it, else the first the run has. */
const dfxShown = () => (D.shapes[D.map] ? D.map : Object.keys(DFX_MAPS).find((n) => D.shapes[n]));
const dfxTiltNames = () => (D.shapes.tilt_phi && D.shapes.tilt_chi ? ["tilt_phi", "tilt_chi"] : []);
/** The maps a draw needs: the tilts (when both exist) and the scalar map shown. */
const dfxDrawnNames = () => { const map = dfxShown(); return [...dfxTiltNames(), ...(map ? [map] : [])]; };

/** Fetch maps of the current snapshot into D.arrays; false when one is not published yet (404). */
async function dfxFetch(uid, names, gen) {
  const snap = D.snap;
  let got;
  try {
    const slice = D.layers ? `${D.layer},:,:` : null;   // one layer of a layer scan's volumes
    got = await Promise.all(names.map((n) => getFloat32(uid, n, slice, D.shapes[n][0] * D.shapes[n][1])));
  } catch (e) {
    if (e.status !== 404) throw e;
    $("dfx-msg").textContent = "Not published (yet) for this run: some maps; retrying.";
    return false;
  }
  if (gen !== S.gen || snap !== D.snap) return false;   // another run or a newer snapshot meanwhile
  names.forEach((n, i) => { D.arrays[n] = got[i]; });
  $("dfx-msg").textContent = "";
  return true;
}

// ---------------------------------------------------------------- status and description
function dfxStatus(st) {
  const placed = st.placed ?? 0, exp = st.frames_expected ?? 0;
  $("dfx-frames").textContent = `${placed} / ${exp}`;
  $("dfx-progress-fill").style.width = `${exp > 0 ? Math.min(100, 100 * placed / exp) : 0}%`;
  $("dfx-state").textContent = st.state || "–";
  $("dfx-state").className = "badge state-" + (st.state || "none");
}

function dfxDescribe() {
  const sc = D.meta.scan || {}, g = D.meta.geometry || {}, parts = [];
  if (sc.kind) parts.push(sc.kind);
  if (sc.axes) parts.push(`${sc.axes.join(" × ")}${sc.shape ? ` (${sc.shape.join(" × ")} points)` : ""}`);
  if (g.pixel_size_m) parts.push(`pixel ${fmtSig(g.pixel_size_m * 1e9)} nm`);
  if (g.theta_bragg_deg) parts.push(`θ_B ${fmtSig(g.theta_bragg_deg)}°`);
  $("dfx-scan").textContent = parts.length ? "· " + parts.join(" · ") : "";
  dfxMetrics();
}

/** Final runs of simulations carry errors against the ground truth: show the scalar ones. */
function dfxMetrics() {
  const m = D.meta.metrics, dl = $("metrics");
  const rows = m ? Object.entries(m).filter(([, v]) => typeof v === "number").slice(0, 10) : [];
  dl.hidden = !rows.length;
  dl.replaceChildren(...rows.flatMap(([k, v]) => [
    Object.assign(document.createElement("dt"), {textContent: k.replace(/_/g, " ")}),
    Object.assign(document.createElement("dd"), {textContent: fmtSig(v)}),
  ]));
}

function dfxMenu() {
  const sel = $("dfx-map"), names = Object.keys(DFX_MAPS).filter((n) => D.shapes[n]);
  const sig = names.join(",");
  if (sel.dataset.sig !== sig) {   // rebuilding an open <select> would close it: only on change
    sel.replaceChildren(...names.map((n) => new Option(DFX_MAPS[n].name, n)));
    sel.dataset.sig = sig;
  }
  sel.value = dfxShown() || "";
}

// ---------------------------------------------------------------- drawing
function dfxDraw() {
  const scale = dfxScale();
  dfxDrawTilt(scale);
  dfxDrawScalar(scale);
  if (D.layers && D.meta.layers) dfxCuts(scale).catch((e) => { $("dfx-msg").textContent = e.message; });
}

/** Pixel size in µm (1 with pixel axes when the geometry lacks it) and the map's extent. */
function dfxFrame(name) {
  const [rows, cols] = D.shapes[name], p = (D.meta.geometry || {}).pixel_size_m;
  const vox = D.layers ? (D.meta.layers || {}).voxel_m : null;   // (h, y, x): a layer's y is p / sin 2θ
  const d = vox ? vox[2] * 1e6 : p > 0 ? p * 1e6 : 1, dy = vox ? vox[1] * 1e6 : d, unit = vox || p > 0 ? "µm" : "px";
  return {rows, cols, d, unit, h: [0, cols * d], v: [0, rows * dy], hLabel: `x (${unit})`, vLabel: `y (${unit})`};
}

/** px per µm: two maps, the key and a colour bar side by side fill the panel, capped. */
function dfxScale() {
  const name = Object.keys(D.arrays)[0];
  if (!name) return 1;
  const f = dfxFrame(name), W = f.h[1], H = f.v[1];
  const free = ($("dfxrm").clientWidth - 28 - DFX_KEY_W - CBAR_W - 3 * 18 - 2 * (MARGIN.l + MARGIN.r) - 16) / 2;
  return Math.min(Math.max(free, 160) / W, DFX_MAP_MAX_PX / Math.max(W, H));
}

function dfxDrawTilt(scale) {
  const tp = D.arrays.tilt_phi, tc = D.arrays.tilt_chi;
  $("dfx-tilt-ctl").hidden = !(tp && tc);
  if (!tp || !tc) {
    const axes = ((D.meta.scan || {}).axes || []).join(", ");
    $("dfx-msg").textContent = `No tilt map: this scan (${axes || "?"}) does not rock both phi and chi.`;
    return;
  }
  D.tilt = tiltStats(tp, tc);
  const R = dfxRadius(), f = dfxFrame("tilt_phi"), mp = D.tilt.mphi, mc = D.tilt.mchi;
  const cv = $("dfx-tilt");
  drawImagePlot(cv, {...f, scale, pixel: (i) => tiltRGB(tp[i] - mp, tc[i] - mc, R)});
  dfxOverlay(cv, f, scale);
  Object.assign(cv.dataset, {radius: String(R), autoRadius: String(D.tilt.auto), medianPhi: String(mp), medianChi: String(mc)});
  dfxWheel(R);
  dfxRadiusControls(R);
}

/** Medians (the reference direction) and the auto radius: 98th percentile of the magnitude. */
function tiltStats(tp, tc) {
  const mphi = quantile(finiteSample(tp), 0.5), mchi = quantile(finiteSample(tc), 0.5);
  const mag = new Float32Array(tp.length);
  for (let i = 0; i < tp.length; i++) mag[i] = Math.hypot(tp[i] - mphi, tc[i] - mchi);
  return {mphi, mchi, auto: quantile(finiteSample(mag), 0.98) || 1e-6};
}

const dfxRadius = () => (D.radius > 0 ? D.radius : D.tilt.auto);

/** Hue: direction of (Δφ, Δχ) (0 = +φ, red); saturation: magnitude / R; white: no tilt; black: NaN. */
function tiltRGB(dphi, dchi, R) {
  if (!(dphi === dphi && dchi === dchi)) return DFX_BLACK;
  const s = Math.min(1, Math.hypot(dphi, dchi) / R);
  return hsv(Math.atan2(dchi, dphi) / (2 * Math.PI), 1).map((c) => Math.round(255 - s * (255 - c)));
}

/** The colour-wheel key: Δφ along the horizontal, Δχ along the vertical, ±R labelled in deg. */
function dfxWheel(R) {
  const cv = $("dfx-wheel"), r = 52, cx = 92, cy = 92, ctx = setupCanvas(cv, DFX_KEY_W, 210);
  const off = document.createElement("canvas");
  off.width = off.height = 2 * r;
  const octx = off.getContext("2d"), img = octx.createImageData(2 * r, 2 * r);
  for (let y = 0; y < 2 * r; y++) for (let x = 0; x < 2 * r; x++) {
    const dx = (x - r + 0.5) / r, dy = (r - y - 0.5) / r;   // canvas y grows downwards, χ upwards
    if (Math.hypot(dx, dy) <= 1) img.data.set([...tiltRGB(dx, dy, 1), 255], 4 * (y * 2 * r + x));
  }
  octx.putImageData(img, 0, 0);
  ctx.drawImage(off, cx - r, cy - r);
  ctx.strokeStyle = "rgba(0,0,0,0.35)"; ctx.setLineDash([2, 3]);
  line(ctx, cx - r - 4, cy, cx + r + 4, cy); line(ctx, cx, cy - r - 4, cx, cy + r + 4);
  ctx.setLineDash([]);
  const t = fmtSig(R, 2);
  ctx.fillStyle = "#333"; ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "middle";
  ctx.textAlign = "left"; ctx.fillText(`+${t}`, cx + r + 6, cy);
  ctx.textAlign = "right"; ctx.fillText(`−${t}`, cx - r - 6, cy);
  ctx.textAlign = "center";
  ctx.fillText(`+${t}`, cx, cy - r - 11); ctx.fillText(`−${t}`, cx, cy + r + 11);
  ctx.font = "600 11px system-ui, sans-serif"; ctx.fillText("Δφ →  (deg)", cx, cy + r + 27);
  ctx.textAlign = "left"; ctx.fillText("Δχ ↑", 2, 12);
  ctx.font = "10px system-ui, sans-serif"; ctx.fillStyle = "#666";
  ctx.fillText(`about φ ${fmtSig(D.tilt.mphi, 3)}°, χ ${fmtSig(D.tilt.mchi, 3)}° (median)`, 2, cy + r + 44);
  ctx.fillText("black: outside the crystal", 2, cy + r + 58);
}

function dfxRadiusControls(R) {
  const sl = $("dfx-radius"), num = $("dfx-radius-num");
  const max = niceCeil(Math.max(3 * D.tilt.auto, R));   // room to widen as well as narrow
  sl.max = String(max); sl.step = String(max / 200); sl.value = String(R);
  if (document.activeElement !== num) num.value = fmtSig(R, 3);
  $("dfx-radius-auto").disabled = !(D.radius > 0);
}

/** The shown map; `range`: its colour range when it is shared with a layer scan's cuts. */
function dfxDrawScalar(scale, range) {
  const name = dfxShown(), data = D.arrays[name], cv = $("dfx-scalar");
  if (!data) return;
  const Q = dfxQuantity(name), f = dfxFrame(name), [lo, hi] = range || colourRange(data, Q.cmap), lut = LUTS[Q.cmap];
  $("dfx-map-cap").textContent = `${Q.name} · ${Q.unit}`;
  const [dy, dx] = [(f.v[1] - f.v[0]) / f.rows, (f.h[1] - f.h[0]) / f.cols];
  drawImagePlot(cv, {
    ...f, scale, marks: D.layers && D.cut.y !== null ? {h: (D.cut.x + 0.5) * dx, v: (D.cut.y + 0.5) * dy} : null,
    pixel: (i) => { const v = data[i]; return v === v ? lut[Math.max(0, Math.min(255, Math.round((v - lo) / (hi - lo) * 255)))] : NAN_RGB; },
  });
  dfxOverlay(cv, f, scale);
  const ext = finiteRange(data);
  Object.assign(cv.dataset, {map: name, min: fmtAttr(ext[0]), max: fmtAttr(ext[1])});
  drawColorbar(lo, hi, Q, $("dfx-colorbar"), parseFloat(cv.style.height) - MARGIN.t - MARGIN.b);
}

/** Display name, unit and factor of a map, from the stored unit of the `units` metadata. */
function dfxQuantity(name) {
  const Q = DFX_MAPS[name], u = ((D.meta.units || {})[name] || "").toString();
  if (Q.base && u.startsWith(Q.base)) return Q;
  return {...Q, k: 1, unit: shortUnit(u) || "stored units"};
}

/** "counts (background subtracted, ...)" -> "counts", "1/um" -> "µm⁻¹", "deg^2" -> "deg²". */
function shortUnit(u) {
  return u.split(" (")[0].trim().replace(/^1\/um$/, "µm⁻¹").replace(/\bum\b/g, "µm").replace("^2", "²");
}

/** Colour scale robust to a few outliers (Nye maps spike at edges); symmetric about 0 when diverging. */
function colourRange(data, cmap) {
  const v = finiteSample(data);
  if (!v.length) return [0, 1];
  if (cmap === "div") {
    const m = quantile(v.map(Math.abs).sort((a, b) => a - b), 0.995) || 1e-30;
    return [-m, m];
  }
  let lo = quantile(v, 0.005), hi = quantile(v, 0.995);
  if (lo === hi) hi = lo + (Math.abs(lo) || 1) * 1e-6;
  return [lo, hi];
}

/** Scale bar on a drawn map; data-plot: where the image lies on the canvas (CSS px). */
function dfxOverlay(cv, f, scale) {
  const pw = parseFloat(cv.style.width) - MARGIN.l - MARGIN.r, ph = parseFloat(cv.style.height) - MARGIN.t - MARGIN.b;
  cv.dataset.plot = [MARGIN.l, MARGIN.t, pw, ph].join(",");
  if (f.unit === "µm") dfxScaleBar(cv.getContext("2d"), niceFloor(f.h[1] / 4), scale, ph);
}

/** A white bar of length len (µm) on a dark box in the image's lower left corner. */
function dfxScaleBar(ctx, len, scale, ph) {
  const px = len * scale, x = MARGIN.l + 8, y = MARGIN.t + ph - 10, label = `${fmtSig(len)} µm`;
  ctx.font = "600 11px system-ui, sans-serif";
  const w = Math.max(px, ctx.measureText(label).width) + 10;
  ctx.fillStyle = "rgba(0,0,0,0.55)"; ctx.fillRect(x - 5, y - 19, w, 25);
  ctx.fillStyle = "#fff"; ctx.fillRect(x, y - 1, px, 4);
  ctx.textAlign = "left"; ctx.textBaseline = "alphabetic"; ctx.fillText(label, x, y - 6);
  ctx.canvas.dataset.scaleBarUm = String(len);
}

// ---------------------------------------------------------------- numbers
/** Finite values of `data`, at most about n of them (evenly strided): quantiles of big maps stay cheap. */
function finiteSample(data, n = 250000) {
  const step = Math.max(1, Math.ceil(data.length / n)), out = [];
  for (let i = 0; i < data.length; i += step) { const v = data[i]; if (v === v && Math.abs(v) !== Infinity) out.push(v); }
  return out.sort((a, b) => a - b);
}

/** q-quantile of sorted values, linear between neighbours (numpy's default). */
function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const t = q * (sorted.length - 1), i = Math.floor(t), j = Math.min(sorted.length - 1, i + 1);
  return sorted[i] + (sorted[j] - sorted[i]) * (t - i);
}

/** Largest 1, 2, 5 x 10^k not above x (a scale bar's length). */
const niceFloor = (x) => { const p = 10 ** Math.floor(Math.log10(x)); return [5, 2, 1].map((f) => f * p).find((v) => v <= x * (1 + 1e-9)); };
/** Smallest 1, 2, 5 x 10^k not below x (a slider's end). */
const niceCeil = (x) => { const p = 10 ** Math.floor(Math.log10(x)); return [1, 2, 5, 10].map((f) => f * p).find((v) => v >= x * (1 - 1e-9)); };
const fmtSig = (v, n = 3) => (Number.isFinite(v) ? String(Number(v.toPrecision(n))) : "–");

// ---------------------------------------------------------------- controls
function dfxSetRadius(r) {
  D.radius = r > 0 ? r : null;   // 0 or empty: back to auto
  if (D.arrays.tilt_phi) dfxDrawTilt(dfxScale());
}

/** Once, before the first poll (viewer.js): controls and the empty state. */
function dfxInit() {
  dfxReset();
  $("dfx-radius").addEventListener("input", (ev) => dfxSetRadius(parseFloat(ev.target.value)));
  $("dfx-radius-num").addEventListener("input", (ev) => { const r = parseFloat(ev.target.value); if (r > 0) dfxSetRadius(r); });
  $("dfx-radius-auto").addEventListener("click", () => dfxSetRadius(null));
  $("dfx-map").addEventListener("change", (ev) => dfxSelectMap(ev.target.value));
  $("dfx-layer").addEventListener("input", (ev) => dfxSelectLayer(parseInt(ev.target.value, 10)));
  $("dfx-series").addEventListener("change", (ev) => dfxSelectRepetition(parseInt(ev.target.value, 10)));
  for (const a of ["y", "x"])
    $(`dfx-cut-${a}-pos`).addEventListener("input", (ev) => dfxSelectCut(a, parseInt(ev.target.value, 10)));
  window.addEventListener("resize", () => { if (S.tech === "dfxrm" && D.meta && Object.keys(D.arrays).length) dfxDraw(); });
}

async function dfxSelectMap(name) {
  D.map = name;
  const L = D.depths[name] || 0;
  if (L !== D.layers) {                 // a stack of another depth (projections / volume)
    D.layers = L; D.layer = null; D.layerPicked = false; D.arrays = {}; D.snap++;
    dfxLayerControl();
  }
  const p = new URLSearchParams(location.search);
  name !== "strain" ? p.set("map", name) : p.delete("map");
  history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
  try {
    if (!D.arrays[name] && !(await dfxFetch(S.run, [name], S.gen))) return;
    dfxDrawScalar(dfxScale());
    if (D.layers && D.meta.layers) await dfxCuts(dfxScale());
  } catch (e) {
    $("dfx-msg").textContent = e.message;
  }
}
