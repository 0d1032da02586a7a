"""Joint object, probe and background refinement (physics.md section 3), NumPy or CuPy.

Forward model for position ``j`` (box of shape ``(N3, N1, N2)``):
``psi_j = P_j * rho[view_j]``, ``Psi_j = F psi_j`` (sheared, unitary), ``h_j = |Psi_j|^2 + b`` on the
measured planes (or, for frames integrated over their rocking step, the mean of ``|Psi_j|^2`` over
the step's planes plus ``b``: :mod:`bp_plugin.recon.exposure`). The corrected field (Eq. 13) is
``Psi'_j = Psi_j (1 + w (sqrt(I_j / h_j) - 1))`` with ``w = 1`` on valid pixels of measured frames and 0 elsewhere (virtual up-sampled planes,
gaps, bad pixels and frames not yet measured are left free: ``Psi' = Psi`` there, where Eq. 13
as printed would shrink them by ``|Psi| / sqrt(h)``).

Updates (Eqs. 5-11), with ``d = psi' - psi``:
``rho <- rho + (P* d - mu_j (1 - S) rho) / ((1 - beta)|P|^2 + beta max|P|^2 + mu_j (1 - S))``,
``P2 <- P2 + R[rho* d / ((1 - alpha)|rho|^2 + alpha max|rho|^2)]`` then the NA constraint,
``b <- b ((1 - gamma) + gamma sqrt(I / h))^2``. ``mu_j = mu max|P|^2``.

On several processes (``comm``, :mod:`bp_plugin.recon.comm`) each holds a block of positions and
runs the iteration on them; :mod:`bp_plugin.recon.merge` then takes the ranks' consensus. The
engine takes arrays and returns arrays; it never imports bluesky, ZeroMQ, Tiled or mpi4py.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..backend import Backend, get_backend
from ..geometry import ExperimentGeometry
from ..sheared_fft import ShearedFFT, modulation
from . import cpu_kernels
from .batched import batched_pass
from .comm import SERIAL
from .config import ReconConfig
from .exposure import RockingExposure
from .inputs import check_scan_arrays
from .layout import ScanLayout, slab_orientation, slab_support, thin_foil_warning
from .merge import IterationStart
from .probe_ops import ProbeOperator, na_focus
from .sequential import sequential_pass
from .support import shrinkwrap
from .updates import upsampling_ratio


class Reconstructor:
    """State and iterations of one reconstruction.

    Args:
        geometry: the experiment; ``config.upsampling`` (if set) replaces its up-sampling ratio,
            else :meth:`ExperimentGeometry.upsampling_default` does (never less than its own).
        frames: ``(n_angles, n_positions, N1, N2)`` counts (any real dtype).
        translations_m: ``(n_positions, 3)`` sample translations (m, lab frame).
        mask: ``(N1, N2)`` bool, True = valid pixel.
        measured: ``(n_angles, n_positions)`` bool, frames available (default: all).
        config: :class:`ReconConfig`.
        probe2d: initial probe section on the operator's grid ``(np1, N2)``; default: the
            aberration-free focus of the geometry's NA.
        backend: array backend (default: CuPy if a GPU is usable, else NumPy).
        comm: the processes this reconstruction runs on (:mod:`bp_plugin.recon.comm`; default one).
            Each holds its share of the positions (their frames only) and the whole object; the
            iterations end with the merge of :mod:`bp_plugin.recon.merge`.
        scale_probe: scale the probe to the data now (:meth:`scale_probe_to_data`, a sum over the
            processes); False leaves it to the caller, so that the constructor makes no collective
            call (the ranks first agree that every one opened: :func:`bp_plugin.recon.comm.together`).
    """

    @classmethod
    def from_scan(cls, scan, *, config: ReconConfig | None = None, probe2d=None,
                  backend: Backend | None = None, comm=None, scale_probe: bool = True) -> "Reconstructor":
        """From one scan: anything with ``geometry``, ``frames``, ``translations_m``, ``mask`` and
        ``measured`` as above (:class:`bp_plugin.dataset.ScanDataset` is one; the engine reads the
        fields and never imports the I/O layer)."""
        return cls(scan.geometry, scan.frames, scan.translations_m, scan.mask, scan.measured, config=config,
                   probe2d=probe2d, backend=backend, comm=comm, scale_probe=scale_probe)

    def __init__(self, geometry: ExperimentGeometry, frames, translations_m, mask, measured=None, *,
                 config: ReconConfig | None = None, probe2d=None, backend: Backend | None = None, comm=None,
                 scale_probe: bool = True):
        self.config = config or ReconConfig()
        self.comm = comm or SERIAL
        #: one line per doubtful choice (forced up-sampling below the need, ...), for the user
        self.warnings: list[str] = []
        ratio, why = upsampling_ratio(geometry, self.config.upsampling)
        self.warnings += [why] if why else []
        geometry = replace(geometry, upsampling=ratio)
        self.geometry = geometry
        self.backend = backend or get_backend("auto")
        xp = self.backend.xp
        frames = check_scan_arrays(geometry, frames, translations_m, mask)
        n_a, n_p = frames.shape[:2]
        self.layout = ScanLayout.from_scan(geometry, translations_m)
        self.slab_tilt_deg, self.slab_tilt_source, why = slab_orientation(self.config.slab_tilt_deg,
                                                                          geometry.sample_tilt_deg)
        self.warnings += [why] if why else []
        why = thin_foil_warning(geometry, self.slab_tilt_deg, self.slab_tilt_source)
        self.warnings += [why] if why else []
        self.probe_op = ProbeOperator(self.layout, self.backend, subsample=self.config.probe_subsample,
                                      na_factor=self.config.na_factor)
        # the "modulated" layout: no shifts on the hot path; the object is stored times the
        # modulation g of the box (see bp_plugin.sheared_fft), which a box sees up to a constant
        self.fft = ShearedFFT.from_geometry(geometry, self.backend, layout="modulated")
        g = [modulation(nb, no) for nb, no in zip(self.layout.box_shape, self.layout.object_shape)]
        self._mod = xp.asarray(np.einsum("i,j,k->ijk", *g).astype(np.complex64))
        own = self.comm.share(n_p)
        self.owned = np.zeros(n_p, bool)
        self.owned[own] = True
        self._slot = np.full(n_p, -1)                 # a position's row in amp (its own positions only)
        self._slot[own] = np.arange(len(own))
        # (n_own, n_a, N1, N2)
        self.amp = xp.asarray(np.sqrt(frames[:, own].astype(np.float32)).transpose(1, 0, 2, 3).copy())
        self.mask = xp.asarray(np.asarray(mask, bool).astype(np.float32))
        self.measured = np.ones((n_a, n_p), bool) if measured is None else np.asarray(measured, bool).copy()
        self._measured_seen = None                    # the host mask behind _measured_dev (see weights)
        fast = self.config.kernels == "fast"
        self.exposure = RockingExposure(self.layout.planes, geometry.n_planes, geometry.upsampling,
                                        geometry.rocking_exposure, xp, prune=fast)
        self.background = xp.full((n_a,) + tuple(geometry.crop), self.config.background_init, np.float32)
        self.support = xp.asarray(self._slab(0))
        self._obj = self.support.astype(np.complex64) * self._mod
        self._initial_probe2d = na_focus(self.probe_op) if probe2d is None else np.asarray(probe2d, np.complex64)
        if self._initial_probe2d.shape != self.probe_op.shape2d:
            raise ValueError(f"probe2d must have the section shape {self.probe_op.shape2d}, "
                             f"got {self._initial_probe2d.shape}")
        #: one pass per step on a CPU where numba is there (the same to float32 rounding; see cpu_kernels)
        self.fused = fast and self.backend.device == "cpu" and cpu_kernels.available
        self._fused_modulus = self.fused and not self.exposure.integrated and self.exposure.frames_are_planes
        self.restart_probe(scale=scale_probe)
        self.iteration = 0
        self.history: list[dict] = []
        # called between positions (and batches, and ML gradient terms): a host that must stay
        # responsive (the streaming service's receiver) can make the engine wait there
        self.pause_hook = None

    # --- set-up helpers ----------------------------------------------------------------------
    def _slab(self, iteration: int) -> np.ndarray:
        c = self.config
        return slab_support(self.layout, c.slab_factor_at(iteration) * self.geometry.thickness_m, *self.slab_tilt_deg)

    def scale_probe_to_data(self) -> None:
        """Scale the probe so the model's total intensity matches the data's (valid, measured pixels)."""
        model = data = 0.0
        for j in self.active_positions():
            _, _, inten, _, a, w = self.model(j, (self.probe3d(j) * self._obj[self.layout.view(j)])[None])
            model = model + self.total(w * inten)
            data = data + self.total(w * a ** 2)
        model, data = float(self.comm.sum(model)), float(self.comm.sum(data))   # the one wait for the device
        if model > 0 and data > 0:
            self.probe2d *= np.float32(np.sqrt(data / model))

    def total(self, a):
        """``sum(a)`` as a float64 device scalar: positions' sums accumulate on the device (the
        float32 sum of each, added in float64 as Python floats were), read once per pass."""
        return self.backend.xp.sum(a).astype(np.float64)

    def active_positions(self) -> np.ndarray:
        """Indices of this process's positions with at least one measured frame (all processes':
        :meth:`measured_positions`)."""
        return np.nonzero(self.measured.any(0) & self.owned)[0]

    def measured_positions(self) -> np.ndarray:
        """Indices of every position with at least one measured frame, whichever process holds it."""
        return np.nonzero(self.measured.any(0))[0]

    def amplitudes(self, j: int):
        """The measured amplitudes of position ``j`` (one of this process's), ``(n_a, N1, N2)``."""
        return self.amp[self._slot[j]]

    def weights(self, js):
        """``w`` of the measured planes: ``(n_a, N1, N2)`` for position ``js`` (an int), ``(B, n_a, N1, N2)``
        for several (1D). The measured mask lives on the device and is uploaded again only when
        the host's :attr:`measured` changed (a streamed frame, the curriculum): no copy per position."""
        return self.mask * self._rows(self._measured_rows(), js)[..., None, None]

    def _measured_rows(self):
        """:attr:`measured` on the device as float32 ``(n_p, n_a)``, uploaded again when it changed."""
        if self._measured_seen is None or not np.array_equal(self._measured_seen, self.measured):
            self._measured_seen = self.measured.copy()
            self._measured_dev = self.backend.xp.asarray(self.measured.T.astype(np.float32))
        return self._measured_dev

    def _rows(self, a, js):
        """``a[js]`` without a host index array on the device: a view for one position (an int), a
        stack for several."""
        if np.ndim(js) == 0:
            return a[int(js)]
        return self.backend.xp.stack([a[int(j)] for j in js])

    def model(self, js, psi):
        """Forward model of positions ``js`` (an int, B = 1, or 1D) for exit waves ``psi`` ``(B, N3, N1, N2)``.

        Returns ``(Psi on the frames' planes (B, n_u, N1, N2) (:attr:`RockingExposure.used`), Psi on
        each frame's plane (point frames; None otherwise), model intensity
        of the frames (B, n_a, N1, N2) (without background), sqrt(h), measured amplitudes, w)``;
        the frames' intensity is :attr:`exposure`'s.
        """
        xp = self.backend.xp
        big = self.fft.forward(psi, self.exposure.used)          # (B, n_u, N1, N2): the frames' planes
        inten, bm = self.exposure.intensity(big)                 # (B, n_a, N1, N2)
        sqrt_h = xp.sqrt(xp.maximum(inten + self.background, 1e-12))
        if np.ndim(js) == 0:
            j = int(js)
            return big, bm, inten, sqrt_h, self.amplitudes(j)[None], self.weights(j)[None]
        return big, bm, inten, sqrt_h, self._rows(self.amp, self._slot[js]), self.weights(js)

    def _section_at(self, j: int):
        """The probe section shifted by position ``j``'s sub-voxel remainder."""
        s1, s2 = self.probe_op.subvoxel_shift_m(self.layout.subvoxel[j])
        return self.probe_op.shift(self.probe2d, s1, s2)

    def probe3d(self, j: int):
        """The probe of position ``j`` on its box, sub-voxel shift included, complex64 ``(N3, N1, N2)``."""
        return self.probe_op.extrude(self._section_at(j))

    def probe3d_with_intensity(self, j: int, box_intensity: bool = True):
        """``probe3d(j)`` and ``(|P|^2 on the box (float32; None without box_intensity), its max)``,
        the intensity taken on the section before extrusion (one real gather in place of a complex
        pass over the box)."""
        section = self._section_at(j)
        i2 = section.real ** 2 + section.imag ** 2
        return (self.probe_op.extrude(section),
                (self.probe_op.extrude(i2) if box_intensity else None, i2[self.probe_op.rows_used].max()))

    # --- one position (the update equations: :mod:`bp_plugin.recon.updates`) -------------------
    def fourier(self, js, psi, update_background: bool, gradient: bool = False):
        """Exit-wave correction of positions ``js`` (int or 1D array) with exit waves ``psi``
        (``(N3, N1, N2)`` or ``(B, N3, N1, N2)``, batched in one FFT call).

        Returns ``(d = psi' - psi, cost, data norm)``, ``d`` shaped like ``psi``, the two sums
        float64 device scalars (read once per iteration, not per position); with ``gradient``,
        ``d`` is such that ``-P* d`` is the cost's gradient (see :meth:`RockingExposure.correction`).
        """
        xp = self.backend.xp
        single = np.ndim(js) == 0
        if single and self._fused_modulus:
            big = self.fft.forward(psi[None], self.exposure.used)
            cost, norm = cpu_kernels.modulus(big, self.amplitudes(int(js)), self.mask, self._measured_rows()[int(js)],
                                             self.background, self.config.gamma, update_background)
            return self.fft.adjoint(big, self.exposure.used)[0], cost, norm
        big, bm, _, sqrt_h, a, w = self.model(js, psi[None] if single else psi)
        cost = self.total(w * (a - sqrt_h) ** 2)
        norm = self.total(w * a * a)
        dbig = self.exposure.correction(big, w * (a / sqrt_h - 1), planes_field=bm, gradient=gradient)
        if update_background:
            g = self.config.gamma
            factor = ((1 - g) + g * a / sqrt_h) ** 2
            hits = w.sum(0)
            mean = xp.where(hits > 0, (w * factor).sum(0) / xp.maximum(hits, 1), 1)
            self.background = self.background * mean
        d = self.fft.adjoint(dbig, self.exposure.used)
        return (d[0] if single else d), cost, norm

    # --- iterations --------------------------------------------------------------------------
    @property
    def schedule_iteration(self) -> int:
        """The iteration within the schedule: negative during the probe warm-up."""
        return self.iteration - self.config.probe_warmup

    def restart_probe(self, scale: bool = True) -> None:
        """The probe given at construction (else the NA focus) again, scaled to the data measured so
        far (``scale``; a sum over the processes)."""
        self.probe2d = self.backend.xp.array(self._initial_probe2d)     # a copy: the scaling is in place
        if scale:
            self.scale_probe_to_data()

    def restart_object(self) -> None:
        """Object, support and background back to their initial state (the probe is kept): the end
        of a probe warm-up, or the start of the final schedule after a live phase."""
        xp = self.backend.xp
        self.support = xp.asarray(self._slab(0))
        self._obj = self.support.astype(np.complex64) * self._mod
        self.background[...] = self.config.background_init

    def _apply_schedule(self) -> None:
        c, it, xp = self.config, self.schedule_iteration, self.backend.xp
        if it < 0:
            return                                  # warm-up: the first slab, no shrink-wrap
        if it == 0 and c.probe_warmup > 0:
            self.restart_object()
        if it < c.shrinkwrap_start:
            if it in c.slab_steps:
                self.support = xp.asarray(self._slab(it))
        elif it < c.shrinkwrap_stop and (it - c.shrinkwrap_start) % c.shrinkwrap_every == 0:
            self.support = shrinkwrap(self.support, self._obj, c.shrinkwrap_threshold, c.shrinkwrap_sigma, xp)

    def position_order(self) -> np.ndarray:
        """This iteration's order of this process's measured positions."""
        # the order depends only on (seed, iteration), so a resumed run repeats an uninterrupted one
        return np.random.default_rng((self.config.seed, self.iteration)).permutation(self.active_positions())

    def begin_schedule(self, config: ReconConfig | None = None, *, keep_history: bool = True) -> None:
        """The schedule of ``config`` (else the one in force) starts now from the current state: the
        iteration count goes back to 0, so slab steps, shrink-wrap, warm-up and ML count from here
        (after an angle curriculum or a live phase). ``keep_history=False`` empties the history
        (a caller that set the earlier iterations aside)."""
        if config is not None:
            self.config = config
        self.iteration = 0
        if not keep_history:
            self.history = []

    def step(self, *, hold_probe: bool = False, stage: str | None = None) -> float:
        """One iteration (every measured position once); returns the normalised cost.

        Args:
            hold_probe: keep the probe this iteration whatever the configuration says (a live phase
                or a curriculum before enough frames are in).
            stage: recorded in the iteration's history entry (default: ``"warmup"`` during the
                probe warm-up, none otherwise).
        """
        self._apply_schedule()
        it = self.schedule_iteration
        update_probe = (self.config.probe_update and not hold_probe
                        and (it if it >= 0 else self.iteration) >= self.config.probe_freeze)
        t0 = time.perf_counter()
        start = IterationStart(self) if self.comm.size > 1 else None
        t_start = time.perf_counter() - t0
        if self.config.mode == "sequential":
            cost, norm = sequential_pass(self, update_probe)
        else:
            cost, norm = batched_pass(self, update_probe)
        t_merge = time.perf_counter()
        if start is not None:
            start.merge(self)
        cost, norm = float(self.comm.sum(cost)), float(self.comm.sum(norm))   # the iteration's one wait
        merge = {"merge_seconds": t_start + time.perf_counter() - t_merge} if start is not None else {}
        err = cost / norm if norm > 0 else float("nan")
        self.history.append({"iteration": self.iteration, "error": err, "seconds": time.perf_counter() - t0,
                             "probe_update": bool(update_probe), **merge,
                             **({"stage": stage} if stage else {"stage": "warmup"} if it < 0 else {})})
        self.iteration += 1
        return err

    def run(self, callback=None) -> None:
        """The whole schedule from where the state is: the joint updates up to
        ``config.iterations``, then ``config.ml_iterations`` of maximum-likelihood refinement;
        ``callback(self)`` after each iteration. Resuming a saved state continues the count."""
        from .ml import ml_refine

        c = self.config
        while self.iteration < c.probe_warmup + c.iterations:
            self.step()
            if callback is not None:
                callback(self)
        remaining = c.probe_warmup + c.iterations + c.ml_iterations - self.iteration
        if remaining > 0:
            ml_refine(self, remaining, callback)

    @property
    def total_iterations(self) -> int:
        return self.config.probe_warmup + self.config.iterations + self.config.ml_iterations

    # --- results -----------------------------------------------------------------------------
    def set_frame(self, angle_index: int, position_index: int, frame) -> None:
        """Place a newly measured frame (streaming): it joins the next iteration."""
        xp = self.backend.xp
        if self.owned[position_index]:               # another process's frame: only its mark here
            self.amp[self._slot[position_index], angle_index] = xp.sqrt(xp.asarray(frame, dtype=np.float32))
        self.measured[angle_index, position_index] = True

    @property
    def object(self):
        """The complex density on the object grid (device array, axis order 3, 1, 2)."""
        return self._obj * self.backend.xp.conj(self._mod)

    @object.setter
    def object(self, value) -> None:
        self._obj = self.backend.xp.asarray(value, dtype=np.complex64) * self._mod

    @property
    def modulated(self):
        """The object in the form the updates work on: the density times the Bragg carrier
        (device array, axis order 3, 1, 2); the ML refinement reads and sets it."""
        return self._obj

    @modulated.setter
    def modulated(self, value) -> None:
        self._obj = value

    def illumination(self, local: bool = False):
        """``sum_j |P_j|^2`` over the measured positions, on the object grid (float32, device array);
        ``local``: over this process's positions only (else summed over the processes: collective)."""
        xp = self.backend.xp
        out = xp.zeros(self._obj.shape, np.float32)
        for j in self.active_positions():
            out[self.layout.view(j)] += xp.abs(self.probe3d(j)) ** 2
        return out if local else self.comm.sum(out)

    def state(self) -> dict:
        """Host copies of everything needed to resume or analyse: object, probe, background, support."""
        a = self.backend.asnumpy
        return {"object": a(self.object), "probe2d": a(self.probe2d), "background": a(self.background),
                "support": a(self.support), "iteration": self.iteration, "history": list(self.history),
                "slab_tilt_deg": list(self.slab_tilt_deg), "slab_tilt_source": self.slab_tilt_source}

    def load_state(self, state: dict) -> None:
        """Resume from :meth:`state` output (same layout)."""
        xp = self.backend.xp
        for key in ("object", "probe2d", "background", "support"):
            cur = getattr(self, key)
            arr = np.asarray(state[key])
            if arr.shape != cur.shape:
                raise ValueError(f"cannot resume: {key} has shape {arr.shape}, this scan needs {cur.shape}")
            setattr(self, key, xp.asarray(arr.astype(cur.dtype)))
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))
        if state.get("slab_tilt_deg") is not None:          # the run's own, whatever this process was told
            self.slab_tilt_deg = tuple(float(t) for t in state["slab_tilt_deg"])
            self.slab_tilt_source = str(state.get("slab_tilt_source", "result file"))
