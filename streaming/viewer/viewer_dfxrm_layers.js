/*
 * The DF-XRM panel's layer scans (docs/dfxrm.md, "Layers"): the layer slider, and the two cuts
 * through the layers (h x x at one y, h x y at one x) beside the layer view. Loaded before
 * viewer_dfxrm.js, whose functions and state (D) these use at call time.
 */
"use strict";

/** The layer slider of a layer scan: follows the newest finished layer until the user picks one
 *  (a topo-tomography's stacks: dfxTopoControl). */
function dfxLayerControl() {
  const ctl = $("dfx-layer-ctl"), sl = $("dfx-layer"), L = D.layers;
  ctl.hidden = !L;
  if (!L) { D.layer = null; return; }
  if (D.meta.topotomo) return dfxTopoControl(sl, L);
  $("dfx-layer-name").textContent = "Layer";
  const fin = ((D.meta.layers || {}).finished || []);
  if (!D.layerPicked || D.layer === null || D.layer >= L) D.layer = fin.length ? Math.max(...fin) : 0;
  sl.max = String(L - 1);
  sl.value = String(D.layer);
  const h = ((D.meta.layers || {}).heights_m || [])[D.layer];
  $("dfx-layer-num").textContent = `${D.layer + 1} / ${L}` + (h === undefined ? "" : ` · h ${fmtSig(h * 1e6, 3)} µm`) +
    (fin.includes(D.layer) ? "" : " (measuring or to come)");
  document.body.dataset.layer = String(D.layer);
}

/** Another layer of the volumes: fetch its slices of the maps shown and draw them. */
async function dfxSelectLayer(k) {
  D.layer = k; D.layerPicked = true;
  dfxLayerControl();
  D.snap++; D.arrays = {};
  try {
    if (!(await dfxFetch(S.run, dfxDrawnNames(), S.gen))) return;
    dfxDraw();
  } catch (e) {
    $("dfx-msg").textContent = e.message;
  }
}

// ---------------------------------------------------------------- a layer scan's two other cuts
/** The shown map cut through the volume at one y (h x x) and at one x (h x y), on the colour scale
 *  of the layer view (redrawn with the range of all three); the tilts' colour wheel stays on the
 *  layer view, whose dashed lines mark where the cuts are. */
async function dfxCuts(scale) {
  const name = dfxShown(), sh = D.shapes[name], L = D.layers, gen = S.gen, snap = D.snap;
  $("dfx-cuts").hidden = !name;
  if (!name) return;
  const [ny, nx] = sh, vox = (D.meta.layers || {}).voxel_m || [1e-6, 1e-6, 1e-6];
  for (const a of ["y", "x"]) {
    const n = a === "y" ? ny : nx;
    if (D.cut[a] === null || D.cut[a] >= n) D.cut[a] = Math.floor(n / 2);
    const sl = $(`dfx-cut-${a}-pos`);
    sl.max = String(n - 1); sl.value = String(D.cut[a]);
  }
  const key = `${name}|${D.cut.y}|${D.cut.x}|${snap}`;
  if (D.cuts.key !== key) {
    const [cy, cx] = await Promise.all([getFloat32(S.run, name, `:,${D.cut.y},:`, L * nx),
                                        getFloat32(S.run, name, `:,:,${D.cut.x}`, L * ny)]);
    // a newer run, snapshot or cut meanwhile: that call draws (an older answer must not win)
    if (gen !== S.gen || snap !== D.snap || key !== `${name}|${D.cut.y}|${D.cut.x}|${D.snap}`) return;
    D.cuts = {key, y: cy, x: cx};
  }
  // one colour scale for the layer and both cuts: the layers differ, and the cuts cross them all
  const Q = dfxQuantity(name), lut = LUTS[Q.cmap];
  const all = new Float32Array(D.arrays[name].length + D.cuts.y.length + D.cuts.x.length);
  all.set(D.arrays[name]); all.set(D.cuts.y, D.arrays[name].length); all.set(D.cuts.x, D.arrays[name].length + D.cuts.y.length);
  const [lo, hi] = colourRange(all, Q.cmap);
  dfxDrawScalar(scale, [lo, hi]);
  const px = (data) => (i) => { const v = data[i]; return v === v ? lut[Math.max(0, Math.min(255, Math.round((v - lo) / (hi - lo) * 255)))] : NAN_RGB; };
  const um = (v) => v * 1e6, hs = (D.meta.layers || {}).heights_m || [];
  const h0 = hs.length ? um(Math.min(...hs)) - um(vox[0]) / 2 : 0;
  const views = {y: {cols: nx, d: um(vox[2]), hLabel: "x (µm)", other: "y", at: D.cut.y * um(vox[1])},
                 x: {cols: ny, d: um(vox[1]), hLabel: "y (µm)", other: "x", at: D.cut.x * um(vox[2])}};
  for (const [a, v] of Object.entries(views)) {
    const cv = $(`dfx-cut-${a}`), data = D.cuts[a];
    drawImagePlot(cv, {rows: L, cols: v.cols, scale, h: [0, v.cols * v.d], v: [h0, h0 + L * um(vox[0])],
                       hLabel: v.hLabel, vLabel: "h (µm)", pixel: px(data)});
    $(`dfx-cut-${a}-cap`).textContent = `${Q.name} · cut at ${a} = ${fmtSig(v.at, 3)} µm (h × ${v.other === "y" ? "x" : "y"})`;
    const ext = finiteRange(data);
    Object.assign(cv.dataset, {map: name, index: String(D.cut[a]), min: fmtAttr(ext[0]), max: fmtAttr(ext[1])});
  }
}

async function dfxSelectCut(a, k) {
  D.cut[a] = k;
  try { await dfxCuts(dfxScale()); } catch (e) { $("dfx-msg").textContent = e.message; }
}

// ---------------------------------------------------------------- a topo-tomography's stacks
/** The slider over a topo-tomography's projections (one per omega; opens on the newest complete
 *  one) or its volume's slices along Q (opens on the middle one). */
function dfxTopoControl(sl, L) {
  const T = D.meta.topotomo, proj = dfxShown() === "projections", fin = T.finished || [];
  if (!D.layerPicked || D.layer === null || D.layer >= L) D.layer = proj ? (fin.length ? Math.max(...fin) : 0) : Math.floor(L / 2);
  sl.max = String(L - 1);
  sl.value = String(D.layer);
  $("dfx-layer-name").textContent = proj ? "Projection" : "Slice";
  const p = (D.meta.geometry || {}).pixel_size_m || 0, om = (T.omegas_deg || [])[D.layer];
  $("dfx-layer-num").textContent = proj
    ? `${D.layer + 1} / ${L}` + (om === undefined ? "" : ` · ω ${fmtSig(om, 4)}°`) + (fin.includes(D.layer) ? "" : " (rocking to come)")
    : `${D.layer + 1} / ${L} · w ${fmtSig((D.layer - Math.floor(L / 2)) * p * 1e6, 3)} µm along Q`;
  document.body.dataset.layer = String(D.layer);
}
