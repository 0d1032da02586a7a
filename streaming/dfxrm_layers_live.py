"""Live DF-XRM volumes of a layer scan: each layer's running moments, the growing volume in Tiled.

A layer scan (:func:`plans.dfxrm_layers.layer_scan`) is a mosaicity scan per layer, frames in
acquisition order, ``layer_points`` per layer. Frame ``k`` belongs to layer ``k // layer_points``
and folds into that layer's own exact running sums (:class:`bp_plugin.dfxrm.MomentAccumulator`).
A layer whose frames have all come is finished: the worker computes its maps once and its sums
are dropped, so only the layers being measured hold sums (the receiver thread only adds frames). The published volumes (``(layers, ny, cols)``,
:func:`bp_plugin.dfxrm.layers.stack_layer_maps`, the batch path's own function) hold the finished
layers, the current one as it stands, and NaN for the layers to come.

No checkpoint: a restarted service reads every frame back from the camera files at the stop, as
for a weak-beam series.
"""
from __future__ import annotations

import numpy as np

from bp_plugin.dfxrm.layers import LayerGeometry, fullest_layer, stack_layer_maps
from bp_plugin.dfxrm.maps import compute_maps
from bp_plugin.dfxrm.moments import MomentAccumulator

from .dfxrm_live import DfxrmLive, DfxrmRun


class DfxrmLayerRun(DfxrmRun):
    """One layer scan being received (``scan.kind = "layers"``); see the module docstring."""

    volume_kind = "layers"

    def __init__(self, header: dict, folder, *, xp=np):
        super().__init__(header, folder, xp=xp)
        s = self.scan
        self.layer_points = int(s["layer_points"])
        self.heights_m = np.asarray(s["heights_m"], float)
        self.n_layers = len(self.heights_m)
        if self.layer_points * self.n_layers != self.n_frames_expected:
            raise ValueError(f"layer scan of {self.n_layers} layers x {self.layer_points} frames, but "
                             f"{self.n_frames_expected} frames announced")
        self.layer_geometry = LayerGeometry(tth_deg=float(s["tth_deg"]), pixel_size_m=self.geometry.pixel_size_m,
                                            frame_shape=self.shape)
        self.accs: dict[int, MomentAccumulator] = {}    # sums of the layers being measured (_new_acc)
        self.full: dict[int, MomentAccumulator] = {}    # finished layers' sums, their maps not yet computed
        self.done: dict[int, dict] = {}       # finished layers' maps

    def checkpoint(self) -> None:
        """None for layer scans (see the module docstring)."""

    def _add(self, k: int, frame: np.ndarray, angles: np.ndarray) -> bool:
        layer = k // self.layer_points
        with self.lock:
            if self.seen[k]:
                return False
            acc = self.accs.get(layer)
            if acc is None:
                acc = self.accs[layer] = self._new_acc()
            acc.add(frame, angles)
            self.seen[k] = True
            lo = layer * self.layer_points
            # no frame can join a full layer: its sums leave the ones being filled, and the worker
            # computes its maps once (the receiver thread only folds frames in: 1.3 s of maps at
            # 2048 x 2048 here would hold up the frames behind it)
            if self.seen[lo:lo + self.layer_points].all():
                self.full[layer] = self.accs.pop(layer)
        return True

    def layer_maps(self) -> list:
        """Each layer's maps as they stand (None: not started); a layer finished since the last
        call has its maps computed now, once (the worker's thread)."""
        with self.lock:
            full = dict(self.full)
            done = dict(self.done)
            live = {k: a.copy() for k, a in self.accs.items()}
        finished = {k: compute_maps(a, self.geometry, self.map_options) for k, a in full.items()}
        if finished:            # the sums go only once their maps exist (a failure keeps them)
            with self.lock:
                self.done.update(finished)
                for k in finished:
                    self.full.pop(k, None)
            done.update(finished)
        return [done[k] if k in done else compute_maps(live[k], self.geometry, self.map_options) if k in live
                else None for k in range(self.n_layers)]

    def maps(self) -> dict:
        return stack_layer_maps(self.layer_maps(), self.heights_m, self.layer_geometry)

    def metadata(self, state: str, metrics: dict | None = None) -> dict:
        md = super().metadata(state, metrics)
        with self.lock:
            done = sorted({*self.done, *self.full})
        md["layers"] = {"heights_m": self.heights_m.tolist(), "finished": done, "layer_points": self.layer_points,
                        "voxel_m": list(self.layer_geometry.volume_voxel_m(self.heights_m)), "dims": ["h", "y", "x"],
                        "tth_deg": self.layer_geometry.tth_deg}
        return md


class DfxrmLayerLive(DfxrmLive):
    """The worker's side of a layer scan: :class:`DfxrmLive` with volumes; its figure is the
    most complete layer's maps."""

    def complete(self, pub, tick=None) -> dict:
        run = self.run
        figures, self.figures = self.figures, False
        try:
            out = super().complete(pub, tick)
        finally:
            self.figures = figures
        if figures:
            from bp_plugin.dfxrm.output import plot_maps

            per = run.layer_maps()
            k = fullest_layer(per)
            if per[k] is not None:
                # the layer's image maps; no Nye: the image's rows are not the sample's y step
                # (the Nye volumes are taken on the volume's voxels: stack_layer_maps)
                plot_maps(run.folder / "maps.png", {n: v for n, v in per[k].items()
                                                    if not n.startswith(("com_", "nye_"))},
                          run.geometry.pixel_size_m, title=f"DF-XRM layer {k} of scan {run.uid[:8]} "
                          f"(h = {run.heights_m[k] * 1e6:.2f} um)")
        return out
