/*
 * The DF-XRM panel's in-situ series (plans/time_series.py): a run that is one repetition of a
 * series carries `series` in its metadata (uid, index, n, name, units, setpoint, readback); the
 * Time slider steps through the series' runs, found in Tiled by `series.uid`, in index order.
 * Loaded before viewer_dfxrm.js, whose state (D) and viewer.js's globals these use at call time.
 */
"use strict";

const DFX_SERIES_REFRESH_MS = 3000;   // later repetitions are published while the series runs

/** The Time control of the run on screen: hidden unless it belongs to a series. */
async function dfxSeriesControl(gen) {
  const ctl = $("dfx-series-ctl"), ser = (D.meta || {}).series;
  ctl.hidden = !ser;
  if (!ser) { delete document.body.dataset.seriesIndex; return; }
  const S_ = D.seriesList;
  if (!S_ || S_.uid !== ser.uid || Date.now() - S_.at > DFX_SERIES_REFRESH_MS) {
    const q = "filter%5Beq%5D%5Bcondition%5D%5Bkey%5D=series.uid" +
              `&filter%5Beq%5D%5Bcondition%5D%5Bvalue%5D=${encodeURIComponent(JSON.stringify(ser.uid))}`;
    let body;
    try {
      body = await getJSON(`${API}/search/dfxrm?${q}&fields=metadata&select_metadata=series&page%5Blimit%5D=300`);
    } catch (e) {      // the maps of this run are still worth drawing: the series control waits
      ctl.hidden = true;
      $("dfx-msg").textContent = `The series of this run could not be listed (${e.message}); retrying.`;
      return;
    }
    if (gen !== S.gen) return;
    const runs = body.data.map((d) => ({id: d.id, s: (d.attributes.metadata || {}).selected || {}}))
      .filter((r) => Number.isInteger(r.s.index)).sort((a, b) => a.s.index - b.s.index);
    D.seriesList = {uid: ser.uid, at: Date.now(), runs};
  }
  const sl = $("dfx-series"), n = Math.max(ser.n || 0, D.seriesList.runs.length);
  sl.max = String(Math.max(0, n - 1));
  sl.value = String(ser.index);
  const v = ser.readback ?? ser.setpoint;
  $("dfx-series-num").textContent = `${ser.index + 1} / ${n} · ${ser.name || "setpoint"} ` +
    (v === undefined || v === null ? "?" : `${fmtSig(v, 4)} ${ser.units || ""}`) +
    ` · ${D.seriesList.runs.length} published`;
  document.body.dataset.seriesIndex = String(ser.index);
}

/** Show repetition `i` of the series: the viewer switches to its run on the next poll. */
function dfxSelectRepetition(i) {
  const r = ((D.seriesList || {}).runs || []).find((x) => x.s.index === i);
  if (!r) {
    $("dfx-msg").textContent = `Repetition ${i + 1} of the series is not published (yet).`;
    return;
  }
  S.explicit = r.id;
  updateURL();
}
