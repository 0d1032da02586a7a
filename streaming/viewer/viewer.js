/* Live viewer of online Bragg ptychography reconstructions and DF-XRM maps published in Tiled.
 *
 * Plain JS, no framework, no CDN (beamline networks are often offline). Talks only to its own
 * origin: streaming/viewer_server.py forwards GET /api/... to Tiled and adds the API key, so this
 * page holds no secret and can only read.
 *
 * Data layout: streaming/publish.py (container reconstructions/<raw_uid>, metadata status/history/
 * grid/probe_grid/units, float32 arrays). Every second the page reads the selected run's status;
 * when status.updated changes it re-reads the full metadata and the arrays it shows (three slices
 * of one map, fetched as raw little-endian float32 with ?slice=, plus the probe).
 * DF-XRM runs (container dfxrm/<raw_uid>, docs/dfxrm.md) are drawn by viewer_dfxrm.js; this file
 * lists the runs of both techniques and polls the selected one's status.
 *
 * Test hooks (tests/test_viewer.py): slice canvases carry data-min / data-max (finite extrema of
 * the drawn slice, in stored units), data-index, data-quantity; body carries data-run and
 * data-updated (status.updated of the arrays on screen) and data-tech ("bp" or "dfxrm").
 */
"use strict";

const POLL_MS = 1000;
const LIST_EVERY = 3;            // polls between two refreshes of the run list
const SLICE_MAX_PX = 340;        // screen size cap of the largest physical extent of the grid
const CBAR_W = 104;
const MARGIN = {l: 46, r: 8, t: 6, b: 34};
const API = "/api/v1";
// Tiled container of each technique's runs, and how the run list names the technique
const TECHS = {bp: {root: "reconstructions", label: "ptycho", title: ["Bragg ptychography", "· live reconstruction"]},
               dfxrm: {root: "dfxrm", label: "DF-XRM", title: ["DF-XRM", "· live maps"]}};

// Display units: stored values times k. base: the stored unit the conversion assumes.
const QUANTITIES = {
  eps_zz: {name: "strain ε_zz", short: "ε_zz", unit: "10⁻⁴", k: 1e4, base: "1", cmap: "div"},
  omega_x: {name: "tilt ω_x", short: "ω_x", unit: "mdeg", k: 180e3 / Math.PI, base: "rad", cmap: "div"},
  omega_y: {name: "tilt ω_y", short: "ω_y", unit: "mdeg", k: 180e3 / Math.PI, base: "rad", cmap: "div"},
  density: {name: "density |ρ|", short: "|ρ|", unit: "arb. units", k: 1, base: "", cmap: "seq"},
  phase: {name: "phase", short: "phase", unit: "rad", k: 1, base: "rad", cmap: "div"},
};
const NAN_RGB = [150, 150, 150];
// ColorBrewer RdBu reversed (negative blue, zero white) and matplotlib viridis, as anchor colours.
const ANCHORS = {
  div: ["053061", "2166ac", "4393c3", "92c5de", "d1e5f0", "f7f7f7", "fddbc7", "f4a582", "d6604d", "b2182b", "67001f"],
  seq: ["440154", "482878", "3e4989", "31688e", "26828e", "1f9e89", "35b779", "6ece58", "b5de2b", "fde725"],
};
const LUTS = Object.fromEntries(Object.entries(ANCHORS).map(([k, a]) => [k, makeLut(a)]));
const AXES = ["z", "y", "x"];

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const S = {
  runs: [], explicit: params.get("run"), run: null, tech: "bp", status: null, meta: null, drawn: null,
  q: QUANTITIES[params.get("q")] ? params.get("q") : "eps_zz",
  idx: {z: null, y: null, x: null}, slices: {}, gen: 0, tick: 0, inflight: {},
};

// ---------------------------------------------------------------- HTTP
class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function get(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) {
    let msg = await r.text();
    try { msg = JSON.parse(msg).detail || msg; } catch (_) { /* plain text from the proxy */ }
    msg = typeof msg === "string" ? msg.trim().replace(/^\d{3} /, "") : JSON.stringify(msg);   // proxy texts start with the code
    throw new HttpError(r.status, `HTTP ${r.status}: ${msg}`);
  }
  return r;
}
const getJSON = async (url) => (await get(url)).json();
const runPath = (uid, tech = S.tech) => TECHS[tech].root + "/" + encodeURIComponent(uid);

/** Raw float32 of array `name` of the current run, optionally sliced ("k,:,:"). */
async function getFloat32(uid, name, slice, expected) {
  let url = `${API}/array/full/${runPath(uid)}/${encodeURIComponent(name)}?format=application/octet-stream`;
  if (slice) url += "&slice=" + encodeURIComponent(slice);
  const data = new Float32Array(await (await get(url)).arrayBuffer());   // Tiled sends little endian
  if (expected !== undefined && data.length !== expected)
    throw new Error(`${name}: got ${data.length} values, expected ${expected}`);
  return data;
}

// ---------------------------------------------------------------- run list and polling
async function refreshRuns() {
  const lists = await Promise.all(Object.keys(TECHS).map(listRuns));
  S.runs = lists.flat();
  S.runs.sort((a, b) => (b.status.updated || 0) - (a.status.updated || 0));
  renderRunPicker();
}

async function listRuns(tech) {
  let body;
  try {
    body = await getJSON(`${API}/search/${TECHS[tech].root}?fields=metadata&select_metadata=status` +
                         "&sort=-status.updated&page%5Blimit%5D=300");
  } catch (e) {
    if (e.status !== 404) throw e;   // 404: nothing of this technique published yet on this server
    body = {data: []};
  }
  return body.data.map((d) => ({id: d.id, tech, status: (d.attributes.metadata || {}).selected || {}}));
}

/** The run to show: the one picked (or in ?run=), else the most recently updated; any technique. */
function currentRun() {
  if (!S.explicit) return S.runs[0] || null;
  // a raw uid belongs to one technique; a run not listed yet is tried as a reconstruction
  return S.runs.find((r) => r.id === S.explicit) || {id: S.explicit, tech: "bp"};
}

function renderRunPicker() {
  const sel = $("run");
  const opts = [["", S.runs.length ? `latest (follow) · ${S.runs[0].id.slice(0, 8)}` : "no runs yet"]];
  for (const r of S.runs)
    opts.push([r.id, `${r.id.slice(0, 8)} · ${TECHS[r.tech].label} · ${r.status.state || "?"} · ${clock(r.status.updated)}`]);
  if (S.explicit && !S.runs.some((r) => r.id === S.explicit)) opts.push([S.explicit, S.explicit.slice(0, 8)]);
  const sig = JSON.stringify(opts);
  if (sel.dataset.sig !== sig) {       // rebuilding an open <select> would close it: only on change
    sel.replaceChildren(...opts.map(([v, t]) => Object.assign(new Option(t, v), {title: v})));
    sel.dataset.sig = sig;
  }
  sel.value = S.explicit || "";
}

async function poll() {
  try {
    if (S.tick++ % LIST_EVERY === 0) await refreshRuns();
    const run = currentRun();
    if (!run) {
      $("maps-msg").textContent = "Waiting for a reconstruction or DF-XRM run to be published…";
    } else {
      if (run.id !== S.run || run.tech !== S.tech) setRun(run.id, run.tech);
      const uid = run.id, gen = S.gen;
      const md = await getJSON(`${API}/metadata/${runPath(uid)}?fields=metadata&select_metadata=status`);
      if (gen === S.gen) {
        S.status = md.data.attributes.metadata.selected || {};
        renderStatus();
        if (S.tech === "dfxrm") await dfxRefresh(uid, S.status, gen);
        else if (S.status.updated !== S.drawn) await refreshAll(uid, S.status.updated, gen);
      }
    }
    setConn(null);
  } catch (e) {
    setConn(e);
  }
  setTimeout(poll, POLL_MS);
}

function setRun(uid, tech) {
  S.run = uid; S.tech = tech; S.status = null; S.meta = null; S.drawn = null; S.slices = {};
  S.idx = {z: null, y: null, x: null}; S.gen++;
  dfxReset();
  document.body.dataset.run = uid;
  document.body.dataset.tech = tech;   // the CSS shows the panels of this technique only
  [$("tech-name").textContent, $("tech-sub").textContent] = TECHS[tech].title;
  delete document.body.dataset.updated;
  for (const cv of document.querySelectorAll("canvas")) {   // no stale picture of the previous run
    cv.removeAttribute("style");   // undrawn canvases are hidden by the CSS
    for (const k of Object.keys(cv.dataset)) delete cv.dataset[k];
  }
  $("run-id").textContent = uid;
  $("run-id").title = uid;
}

/** A new snapshot: full metadata (history, grid, ...), then the arrays on screen.
 *
 * The first publication creates the container, metadata included, before its arrays exist: a
 * missing array (404) therefore leaves the snapshot "not drawn", and the next poll tries again. */
async function refreshAll(uid, updated, gen) {
  const md = (await getJSON(`${API}/metadata/${runPath(uid)}?fields=metadata`)).data.attributes.metadata;
  if (gen !== S.gen) return;
  S.meta = md;
  renderHistory();
  renderMetrics();
  const missing = [];
  const tolerate404 = (what) => (e) => { if (e.status !== 404) throw e; missing.push(what); };
  if (setupGrid()) await loadSlices(AXES, gen).catch(tolerate404(S.q));
  else missing.push("grid");
  await loadProbe(uid, gen).catch(tolerate404("probe"));
  if (gen !== S.gen) return;
  $("maps-msg").textContent = missing.length ? `Not published (yet) for this run: ${missing.join(", ")}.` : "";
  if (missing.length) return;
  S.drawn = updated;   // only now: a failure above means "try again next poll"
  document.body.dataset.updated = String(updated);
}

// ---------------------------------------------------------------- grid and slices
/** Geometry of axis a ("x", "y", "z"): n, centre of voxel 0 and step, both in µm. */
function axisInfo(a) {
  const g = S.meta.grid, i = {x: 0, y: 1, z: 2}[a];
  const v = Array.isArray(g.voxel_m) ? g.voxel_m[i] : g.voxel_m;
  return {n: g.shape[{z: 0, y: 1, x: 2}[a]], o: g.origin_m[i] * 1e6, d: v * 1e6};
}
const extent = (ax) => [ax.o - ax.d / 2, ax.o + (ax.n - 0.5) * ax.d];

function setupGrid() {
  const g = S.meta && S.meta.grid;
  if (!g || !g.shape || !g.origin_m || g.voxel_m === undefined) return false;
  for (const a of AXES) {
    const n = axisInfo(a).n, sl = $("slider-" + a);
    if (S.idx[a] === null || S.idx[a] >= n) S.idx[a] = Math.floor(n / 2);
    sl.max = String(n - 1);
    sl.value = String(S.idx[a]);
    caption(a);
  }
  return true;
}

function caption(a) {
  const ax = axisInfo(a), k = S.idx[a];
  $("cap-" + a).textContent = `${a} = ${fmt(ax.o + k * ax.d, 0.01)} µm  (${k + 1}/${ax.n})`;
}

// horizontal and vertical axes of the cut across each axis: data (rows, cols) = (vertical, horizontal)
const CUT = {z: {h: "x", v: "y"}, y: {h: "x", v: "z"}, x: {h: "y", v: "z"}};
const sliceParam = {z: (k) => `${k},:,:`, y: (k) => `:,${k},:`, x: (k) => `:,:,${k}`};

async function loadSlices(axes, gen) {
  const uid = S.run, q = S.q;
  const got = await Promise.all(axes.map(async (a) => {
    const k = S.idx[a], rows = axisInfo(CUT[a].v).n, cols = axisInfo(CUT[a].h).n;
    return {a, k, q, rows, cols, data: await getFloat32(uid, q, sliceParam[a](k), rows * cols)};
  }));
  if (gen !== S.gen) return;   // run or quantity changed meanwhile
  for (const s of got) if (s.k === S.idx[s.a]) S.slices[s.a] = s;
  drawMaps();
}

/** One slider moved: fetch that slice, coalescing the requests of a fast drag. */
async function requestSlice(a) {
  if (S.inflight[a]) { S.inflight[a] = "again"; return; }
  try {
    do {
      S.inflight[a] = true;
      await loadSlices([a], S.gen);
    } while (S.inflight[a] === "again");
  } catch (e) {
    setConn(e);
  } finally {
    S.inflight[a] = false;
  }
}

function finiteRange(data) {
  let lo = Infinity, hi = -Infinity;
  for (const v of data) if (v === v) { if (v < lo) lo = v; if (v > hi) hi = v; }   // v === v: not NaN
  return [lo, hi];
}

function drawMaps() {
  const Q = quantity();
  $("maps-title").textContent = `${Q.name} · ${Q.unit}`;
  // one colour scale for the three cuts, so that they compare; symmetric about 0 when diverging
  let lo = Infinity, hi = -Infinity;
  for (const a of AXES) {
    const s = S.slices[a];
    if (!s || s.q !== S.q) continue;
    s.range = finiteRange(s.data);
    lo = Math.min(lo, s.range[0]); hi = Math.max(hi, s.range[1]);
  }
  if (!(lo <= hi)) { lo = 0; hi = 1; }
  if (Q.cmap === "div") { const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1e-30; lo = -m; hi = m; }
  else if (lo === hi) { hi = lo + (Math.abs(lo) || 1) * 1e-6; }
  const scale = sliceScale();
  for (const a of AXES) {
    const s = S.slices[a], cv = $("slice-" + a);
    if (!s || s.q !== S.q) continue;
    const H = axisInfo(CUT[a].h), V = axisInfo(CUT[a].v);
    const lut = LUTS[Q.cmap];
    drawImagePlot(cv, {
      rows: s.rows, cols: s.cols, scale,
      pixel: (i) => { const v = s.data[i]; return v === v ? lut[Math.max(0, Math.min(255, Math.round((v - lo) / (hi - lo) * 255)))] : NAN_RGB; },
      h: extent(H), v: extent(V), hLabel: `${CUT[a].h} (µm)`, vLabel: `${CUT[a].v} (µm)`,
      marks: {h: H.o + S.idx[CUT[a].h] * H.d, v: V.o + S.idx[CUT[a].v] * V.d},
    });
    Object.assign(cv.dataset, {min: fmtAttr(s.range[0]), max: fmtAttr(s.range[1]), index: String(s.k), quantity: s.q});
  }
  drawColorbar(lo, hi, Q);
}
/** px per µm: the three cuts side by side fill the panel width (x, x and y extents), capped. */
function sliceScale() {
  const L = Object.fromEntries(AXES.map((a) => { const e = extent(axisInfo(a)); return [a, e[1] - e[0]]; }));
  // panel padding, colour bar, gaps, axis margins, and slack for rounding: the row must not wrap
  const free = $("maps").clientWidth - 28 - CBAR_W - 3 * 18 - 3 * (MARGIN.l + MARGIN.r) - 16;
  return Math.min(Math.max(free, 300) / (2 * L.x + L.y), SLICE_MAX_PX / Math.max(L.x, L.y, L.z));
}
const fmtAttr = (v) => (Number.isFinite(v) ? String(v) : "nan");

function quantity() {
  const Q = QUANTITIES[S.q], u = S.meta && S.meta.units && S.meta.units[S.q];
  // a unit we do not expect: show the stored values as they are, with the stored unit
  if (Q.base && typeof u === "string" && !u.startsWith(Q.base)) return {...Q, k: 1, unit: u};
  return Q;
}

// ---------------------------------------------------------------- probe
async function loadProbe(uid, gen) {
  const [amp, ph] = await Promise.all([getFloat32(uid, "probe_amplitude"), getFloat32(uid, "probe_phase")]);
  if (gen !== S.gen) return;
  const pg = S.meta.probe_grid || {};
  const p1 = pg.p1_m || [], r2 = pg.r2_m || [];
  const rows = p1.length || Math.round(Math.sqrt(amp.length)), cols = amp.length / rows;
  if (!Number.isInteger(cols) || ph.length !== amp.length) throw new Error("probe shape does not match probe_grid");
  const ext = (c, n) => {
    if (c.length < 2) return [0, n];
    const d = (c[c.length - 1] - c[0]) / (c.length - 1) * 1e6;
    return [c[0] * 1e6 - d / 2, c[c.length - 1] * 1e6 + d / 2];
  };
  let amax = 0;
  for (const v of amp) if (v > amax) amax = v;
  const h = ext(r2, cols), v = ext(p1, rows);
  drawImagePlot($("probe"), {
    rows, cols, scale: 220 / Math.max(h[1] - h[0], v[1] - v[0]),
    pixel: (i) => hsv((ph[i] + Math.PI) / (2 * Math.PI), amax > 0 ? Math.min(1, amp[i] / amax) : 0),
    h, v, hLabel: r2.length ? "r2 (µm)" : "r2 (px)", vLabel: p1.length ? "p1 (µm)" : "p1 (px)",
  });
  $("probe").dataset.maxAmplitude = String(amax);
  drawProbeLegend();
}

/** Hue from phase in turns (0 = -π), brightness v in [0, 1]; full saturation. */
function hsv(h, v) {
  h = ((h % 1) + 1) % 1 * 6;
  const i = Math.floor(h) % 6, f = h - Math.floor(h), q = v * (1 - f), t = v * f;
  const c = [[v, t, 0], [q, v, 0], [0, v, t], [0, q, v], [t, 0, v], [v, 0, q]][i];
  return c.map((x) => Math.round(x * 255));
}

function drawProbeLegend() {
  const R = 30, cx = 50, cy = 40, ctx = setupCanvas($("probe-legend"), 100, 104);
  const off = document.createElement("canvas");
  off.width = off.height = 2 * R;
  const octx = off.getContext("2d"), img = octx.createImageData(2 * R, 2 * R);
  for (let y = 0; y < 2 * R; y++) for (let x = 0; x < 2 * R; x++) {
    const dx = x - R + 0.5, dy = R - y - 0.5, r = Math.hypot(dx, dy) / R;
    if (r <= 1) img.data.set([...hsv((Math.atan2(dy, dx) + Math.PI) / (2 * Math.PI), r), 255], 4 * (y * 2 * R + x));
  }
  octx.putImageData(img, 0, 0);
  ctx.drawImage(off, cx - R, cy - R);
  ctx.fillStyle = "#333"; ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
  ctx.fillText("0", cx + R + 7, cy);
  ctx.fillText("±π", cx - R - 8, cy);
  ctx.fillText("phase: angle", cx, cy + R + 10);
  ctx.fillText("|P|: radius", cx, cy + R + 22);
}

// ---------------------------------------------------------------- status, history, metrics
function renderStatus() {
  // frames_measured: frames in the run's spool (streamed or recovered from files); see docs/streaming-protocol.md
  // DF-XRM has no spool count: its maps hold the frames placed
  const st = S.status, rec = (S.tech === "dfxrm" ? st.placed : st.frames_measured) ?? 0, exp = st.frames_expected ?? 0;
  $("frames").textContent = `${rec} / ${exp}`;
  $("progress-fill").style.width = `${exp > 0 ? Math.min(100, 100 * rec / exp) : 0}%`;
  $("state").textContent = st.state || "–";
  $("state").className = "badge state-" + (st.state || "none");
  document.body.dataset.state = st.state || "";
  $("behind").hidden = !st.behind;
  // what to know before trusting the run: queued behind another, frames missing, a refusal, NaN
  const why = Object.entries(st.rejection_reasons || {});
  const msg = st.message || (why.length ? `${st.rejected} frame(s) rejected, first because ${why[0][0]}` : "");
  $("status-msg").textContent = msg;
  $("status-msg").hidden = !msg;
  $("c-rejected").title = why.map(([r, n]) => `${n} x ${r}`).join("\n");
  for (const k of ["placed", "duplicates", "rejected", "missing", "recovered", "iteration", "stage"])
    $("c-" + k).textContent = st[k] ?? "–";
  $("c-error").textContent = typeof st.error === "number" ? st.error.toPrecision(4) : "–";
  $("c-updated").textContent = st.updated ? `${clock(st.updated)} (${ago(Date.now() / 1000 - st.updated)})` : "–";
}

function renderMetrics() {
  const m = S.meta.metrics, dl = $("metrics");
  dl.hidden = !m;
  if (!m) return;
  // the scalar figures of merit a user quotes; the rest stays in Tiled and metrics.json
  const shown = [["object_error", "object error", 1], ["probe_error", "probe error", 1],
                 ["strain_rms_error", "ε_zz RMS error (10⁻⁴)", 1e4], ["tilt_rms_error_rad", "tilt RMS error (mdeg)", 180e3 / Math.PI],
                 ["field_of_view_fraction", "field of view retrieved", 1], ["iterations", "iterations", 1],
                 ["latency_last_frame_to_result_s", "last frame → result (s)", 1], ["device", "device", null]];
  dl.replaceChildren(...shown.filter(([k]) => m[k] !== undefined && m[k] !== null).flatMap(([k, label, f]) => [
    Object.assign(document.createElement("dt"), {textContent: label}),
    Object.assign(document.createElement("dd"), {textContent: f === null ? String(m[k]) : (m[k] * f).toPrecision(3)}),
  ]));
}

/** Error against iteration, log y (the error falls over decades). */
function renderHistory() {
  const hist = S.meta.history || {}, it = hist.iteration || [], err = hist.error || [];
  const W = 340, H = 200, m = {l: 66, r: 14, t: 10, b: 34}, pw = W - m.l - m.r, ph = H - m.t - m.b;
  const cv = $("error-plot"), ctx = setupCanvas(cv, W, H);
  const pts = it.map((x, i) => [x, err[i]]).filter(([x, y]) => Number.isFinite(x) && y > 0);
  cv.dataset.points = String(pts.length);
  ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#333"; ctx.strokeStyle = "#888";
  ctx.strokeRect(m.l, m.t, pw, ph);
  if (!pts.length) { ctx.textAlign = "center"; ctx.fillText("no iterations yet", m.l + pw / 2, m.t + ph / 2); return; }
  let x0 = pts[0][0], x1 = pts[pts.length - 1][0];
  x1 = Math.max(x1, x0 + 5);   // iterations are integers: at least 5 of them so ticks stay whole
  const ymin = Math.min(...pts.map((p) => p[1])), ymax = Math.max(...pts.map((p) => p[1]));
  // y range widened to round values (1, 2, 5 x 10^k; whole decades over two decades) so both ends carry a label
  const mult = Math.log10(ymax / ymin) < 2 ? [1, 2, 5] : [1];
  const marks = [];
  for (let e = Math.floor(Math.log10(ymin)) - 1; e <= Math.ceil(Math.log10(ymax)); e++) for (const f of mult) marks.push(f * 10 ** e);
  let ly0 = Math.log10(Math.max(...marks.filter((y) => y <= ymin * (1 + 1e-9))));
  let ly1 = Math.log10(Math.min(...marks.filter((y) => y >= ymax * (1 - 1e-9))));
  if (ly1 - ly0 < 0.3) { const c = (ly0 + ly1) / 2; ly0 = c - 0.15; ly1 = c + 0.15; }
  const X = (x) => m.l + (x - x0) / (x1 - x0) * pw, Y = (y) => m.t + ph - (Math.log10(y) - ly0) / (ly1 - ly0) * ph;
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let e = Math.floor(ly0); e <= Math.ceil(ly1); e++) for (const f of mult) {
    const y = f * 10 ** e, l = Math.log10(y);
    if (l < ly0 - 1e-9 || l > ly1 + 1e-9) continue;
    ctx.strokeStyle = "#e4e4e4"; line(ctx, m.l, Y(y), m.l + pw, Y(y));
    ctx.fillText(f === 1 ? `10${sup(e)}` : `${f}·10${sup(e)}`, m.l - 4, Y(y));
  }
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const t of niceTicks(x0, x1, 5)) { ctx.strokeStyle = "#888"; line(ctx, X(t), m.t + ph, X(t), m.t + ph + 4); ctx.fillText(fmt(t, 1), X(t), m.t + ph + 6); }
  ctx.fillText("iteration", m.l + pw / 2, H - 13);
  ctx.save(); ctx.translate(4, m.t + ph / 2); ctx.rotate(-Math.PI / 2); ctx.fillText("error", 0, 0); ctx.restore();
  ctx.strokeStyle = "#1f5fa8"; ctx.lineWidth = 1.5; ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
  ctx.stroke();
  const [lx, ly] = pts[pts.length - 1];
  ctx.fillStyle = "#1f5fa8"; ctx.beginPath(); ctx.arc(X(lx), Y(ly), 3, 0, 2 * Math.PI); ctx.fill();
}

// ---------------------------------------------------------------- drawing helpers
function makeLut(hex) {
  const c = hex.map((h) => [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)));
  return Array.from({length: 256}, (_, i) => {
    const t = i / 255 * (c.length - 1), j = Math.min(c.length - 2, Math.floor(t)), f = t - j;
    return c[j].map((v, k) => Math.round(v + (c[j + 1][k] - v) * f));
  });
}

function setupCanvas(cv, w, h) {
  const dpr = window.devicePixelRatio || 1;   // crisp on HiDPI screens
  cv.style.width = w + "px"; cv.style.height = h + "px";
  cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
  const ctx = cv.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}

function line(ctx, x0, y0, x1, y1) { ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke(); }

/** An image of rows x cols cells (row 0 at the bottom) on physical axes h, v (µm), with ticks. */
function drawImagePlot(cv, o) {
  const pw = Math.max(48, Math.round((o.h[1] - o.h[0]) * o.scale)), ph = Math.max(48, Math.round((o.v[1] - o.v[0]) * o.scale));
  const ctx = setupCanvas(cv, MARGIN.l + pw + MARGIN.r, MARGIN.t + ph + MARGIN.b);
  const off = document.createElement("canvas");
  off.width = o.cols; off.height = o.rows;
  const octx = off.getContext("2d"), img = octx.createImageData(o.cols, o.rows);
  for (let r = 0; r < o.rows; r++) for (let c = 0; c < o.cols; c++) {
    const rgb = o.pixel(r * o.cols + c), p = 4 * ((o.rows - 1 - r) * o.cols + c);   // flip: v grows upwards
    img.data[p] = rgb[0]; img.data[p + 1] = rgb[1]; img.data[p + 2] = rgb[2]; img.data[p + 3] = 255;
  }
  octx.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;   // show voxels as voxels
  ctx.drawImage(off, MARGIN.l, MARGIN.t, pw, ph);
  const X = (x) => MARGIN.l + (x - o.h[0]) / (o.h[1] - o.h[0]) * pw, Y = (y) => MARGIN.t + ph - (y - o.v[0]) / (o.v[1] - o.v[0]) * ph;
  if (o.marks) {   // where the two other cuts are
    ctx.save(); ctx.setLineDash([3, 3]); ctx.strokeStyle = "rgba(0,0,0,0.45)";
    line(ctx, X(o.marks.h), MARGIN.t, X(o.marks.h), MARGIN.t + ph); line(ctx, MARGIN.l, Y(o.marks.v), MARGIN.l + pw, Y(o.marks.v));
    ctx.restore();
  }
  ctx.strokeStyle = "#666"; ctx.lineWidth = 1; ctx.strokeRect(MARGIN.l - 0.5, MARGIN.t - 0.5, pw + 1, ph + 1);
  ctx.fillStyle = "#333"; ctx.font = "11px system-ui, sans-serif";
  const ht = niceTicks(o.h[0], o.h[1], Math.max(2, Math.floor(pw / 55))), vt = niceTicks(o.v[0], o.v[1], Math.max(2, Math.floor(ph / 40)));
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const t of ht) { line(ctx, X(t), MARGIN.t + ph, X(t), MARGIN.t + ph + 4); ctx.fillText(fmt(t, ht.step), X(t), MARGIN.t + ph + 5); }
  ctx.fillText(o.hLabel, MARGIN.l + pw / 2, MARGIN.t + ph + 19);
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const t of vt) { line(ctx, MARGIN.l - 4, Y(t), MARGIN.l, Y(t)); ctx.fillText(fmt(t, vt.step), MARGIN.l - 6, Y(t)); }
  ctx.save(); ctx.translate(10, MARGIN.t + ph / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center"; ctx.fillText(o.vLabel, 0, 0); ctx.restore();
}

/** Vertical colour bar, ticks in display units (stored value x Q.k), and a swatch for NaN.
 *  Beside the three cuts unless another canvas and bar height (px) are given. */
function drawColorbar(lo, hi, Q, cv = $("colorbar"), height = null) {
  const bw = 16, x0 = 6, y0 = 36;
  const bh = Math.max(120, height ?? Math.max(...AXES.map((a) => parseFloat($("slice-" + a).style.height) || 0)) - MARGIN.t - MARGIN.b);
  const ctx = setupCanvas(cv, CBAR_W, y0 + bh + 30);
  const lut = LUTS[Q.cmap];
  for (let i = 0; i < bh; i++) { const c = lut[Math.round((1 - i / (bh - 1)) * 255)]; ctx.fillStyle = `rgb(${c})`; ctx.fillRect(x0, y0 + i, bw, 1.5); }
  ctx.strokeStyle = "#666"; ctx.strokeRect(x0 - 0.5, y0 - 0.5, bw + 1, bh + 1);
  const dlo = lo * Q.k, dhi = hi * Q.k, ticks = niceTicks(dlo, dhi, 6);
  ctx.fillStyle = "#333"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
  for (const t of ticks) {
    const y = y0 + bh - (t - dlo) / (dhi - dlo) * bh;
    line(ctx, x0 + bw, y, x0 + bw + 4, y); ctx.fillText(fmt(t, ticks.step), x0 + bw + 6, y);
  }
  ctx.fillStyle = `rgb(${NAN_RGB})`; ctx.fillRect(x0, y0 + bh + 10, bw, 10);
  ctx.fillStyle = "#333"; ctx.fillText("NaN", x0 + bw + 6, y0 + bh + 15);
  ctx.font = "600 12px system-ui, sans-serif";
  ctx.fillText(Q.short, x0 - 4, 8);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(`(${Q.unit})`, x0 - 4, 23);
  Object.assign(cv.dataset, {vmin: String(lo), vmax: String(hi), unit: Q.unit});
}

/** About n round tick values (1, 2, 5 x 10^k) in [a, b]; the array's .step is their spacing. */
function niceTicks(a, b, n) {
  const span = Math.abs(b - a) || 1, raw = span / n, p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * p).reduce((best, s) => (Math.abs(span / s - n) < Math.abs(span / best - n) ? s : best));
  const out = [];
  for (let t = Math.ceil(Math.min(a, b) / step) * step; t <= Math.max(a, b) + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  out.step = step;
  return out;
}
/** v with as many decimals as the tick step needs; never "-0.00". */
function fmt(v, step) {
  const t = v.toFixed(Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9))));
  return /^-0\.?0*$/.test(t) ? t.slice(1) : t;
}
const SUP = {"-": "⁻", 0: "⁰", 1: "¹", 2: "²", 3: "³", 4: "⁴", 5: "⁵", 6: "⁶", 7: "⁷", 8: "⁸", 9: "⁹"};
const sup = (e) => String(e).split("").map((c) => SUP[c]).join("");
const ago = (s) => (s < 90 ? `${Math.max(0, Math.round(s))} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`);
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "–");

function setConn(e) {
  const el = $("conn");
  el.textContent = e ? `⚠ ${e.message} (retrying)` : "";
  el.classList.toggle("bad", !!e);
}

// ---------------------------------------------------------------- controls
function updateURL() {
  const p = new URLSearchParams(location.search);
  S.explicit ? p.set("run", S.explicit) : p.delete("run");
  S.q !== "eps_zz" ? p.set("q", S.q) : p.delete("q");
  history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
}

$("run").addEventListener("change", (ev) => {
  S.explicit = ev.target.value || null;   // "" = follow the most recently updated run
  updateURL();   // the next poll (within a second) switches to it
});
$("quantity").value = S.q;
$("quantity").addEventListener("change", (ev) => {
  S.q = ev.target.value; S.gen++; updateURL();
  if (S.meta && setupGrid()) loadSlices(AXES, S.gen).then(() => $("maps-msg").textContent = "", (e) => { $("maps-msg").textContent = e.message; });
});
window.addEventListener("resize", () => { if (S.meta && Object.keys(S.slices).length) drawMaps(); });
for (const a of AXES) {
  $("slider-" + a).addEventListener("input", (ev) => {
    if (!S.meta) return;
    S.idx[a] = Number(ev.target.value);
    caption(a);
    requestSlice(a);
  });
}

dfxInit();
poll();
