"""Parameters of the reconstruction, with the paper's values as defaults (physics.md section 3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..defaults import PAPER, Schedule

KERNELS = ("fast", "reference")


@dataclass(frozen=True)
class ReconConfig:
    """Joint object / probe / background refinement and its schedule.

    Update parameters (Eqs. 5-11): ``mu`` (support regulariser, ``mu_j = mu max|P|^2``),
    ``alpha`` (probe step normaliser), ``beta`` (object step normaliser), ``gamma``
    (background relaxation). Iteration counts are in iterations (one pass over all positions).

    Attributes:
        iterations: joint updates (the paper: 1000).
        ml_iterations: maximum-likelihood refinement iterations after the joint updates (500).
        probe_update: refine the probe (False: the paper's "former approach" keeps it fixed).
        probe_freeze: iterations before the probe is first updated (5), counted from the start
            of the schedule and again from the start of the warm-up.
        probe_warmup: joint iterations run before the schedule to learn the probe from a poor
            first guess (e.g. a plain Gaussian); then the object, support and background go back
            to their initial state and the schedule starts with the learned probe (0: none). An
            object refined with a wrong probe keeps phase vortices and amplitude holes that no
            later probe removes; restarting it from the slab with a good probe does (docs/validation.md).
        probe_norm: "line" (default) normalises the probe step by the object's intensity
            averaged along the beam, "paper" by Eq. 10 per voxel (see :func:`bp_plugin.recon.updates.probe_increment`).
        background_update: refine the incoherent background.
        background_init: initial flat background (counts per pixel).
        mode: "sequential" (the paper's ePIE order, one position at a time) or "batched".
        batch_size: positions per update in batched mode.
        batched_beta: ``beta`` of the batched object step, applied to the summed illumination of
            a batch (the paper's 0.5 suits one position at a time; on a sum it throttles the
            weakly lit voxels, so batched mode uses a smaller value).
        slab_tilt_deg: tilt (about x, then about y; deg) of the slab supports; ``None`` (default):
            the geometry's ``sample_tilt_deg`` (what the user knows of the sample), else none
            (a specular reflection: the foil's normal along Q), with a warning. No constant
            default: a foil's tilt is the sample's, and one equal to a test sample's encodes it.
        slab_thickness_factors: thickness steps of the initial slab support, in units of the
            nominal sample thickness of the geometry (0.45 um x (1.1, 1.55, 2.0) = the paper's
            0.5, 0.7, 0.9 um).
        slab_steps: first iteration of each thickness step.
        shrinkwrap_start, shrinkwrap_stop, shrinkwrap_every, shrinkwrap_threshold: shrink-wrap
            window (iterations) and the fraction of max|rho| under which voxels leave the support.
        shrinkwrap_sigma: the threshold applies to |rho| smoothed by a Gaussian of this many
            voxels (:mod:`bp_plugin.recon.support`; 0: to |rho| itself, the paper's wording).
            A raw threshold cut surface voxels of foils 2-3 voxels thick for good: on the family
            of ``benchmarks/bench_family.py`` (8 members) at the full schedule, median object error
            0.197 raw, 0.160 at 1 voxel (max 0.316 -> 0.201); at 60 + 20 no gain (0.145 -> 0.168,
            member 5 better, 6 worse; docs/family.md).
        upsampling: angular up-sampling ratio (None: ``geometry.upsampling_default()``, the ratio a
            beam filling the detector's window needs, never less than the geometry's own).
        probe_subsample: p1 samples of the probe section per ``sin(2 tB) dr3``. Each voxel takes
            the nearest sample, so the sampling is also the extrusion's error. Measured on tiny and
            the family of ``benchmarks/bench_family.py`` (8 members, tilt unknown): 4 against 2 cut
            tiny's probe error from 0.116 to 0.041 and the family's largest from 0.183 to 0.164, at
            the same median object error (0.148, 0.149); 6 and 8 cut some probes further but left
            other members' objects in worse minima (member 4: 0.375 at 6).
        na_factor: NA constraint rectangle in units of the numerical aperture.
        seed: seed of the position order.
        kernels: "fast" (default: far fields on the frames' planes only, and on a CPU with numba
            the fused update kernels of :mod:`bp_plugin.recon.cpu_kernels`) or "reference" (the
            equations as NumPy / CuPy expressions on whole boxes: the yardstick of tests and
            benchmarks). Both give the same reconstruction to float32 rounding.
    """

    iterations: int = PAPER.iterations
    ml_iterations: int = PAPER.ml_iterations
    probe_update: bool = True
    probe_freeze: int = 5
    probe_warmup: int = 0
    probe_norm: str = "line"
    background_update: bool = True
    background_init: float = 0.1
    mu: float = 0.02
    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 0.1
    mode: str = "sequential"
    batch_size: int = 4
    batched_beta: float = 0.1
    slab_tilt_deg: tuple[float, float] | None = None
    slab_thickness_factors: tuple[float, ...] = (1.1, 1.55, 2.0)
    slab_steps: tuple[int, ...] = (0, 100, 200)
    shrinkwrap_start: int = 300
    shrinkwrap_stop: int = 500
    shrinkwrap_every: int = 5
    shrinkwrap_threshold: float = 0.15
    shrinkwrap_sigma: float = 1.0
    upsampling: int | None = None
    probe_subsample: int = 4
    na_factor: float = 1.5
    seed: int = 0
    kernels: str = "fast"

    def __post_init__(self) -> None:
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {self.kernels!r}")
        if self.probe_norm not in ("line", "paper"):
            raise ValueError(f"probe_norm must be 'line' or 'paper', got {self.probe_norm!r}")
        if self.mode not in ("sequential", "batched"):
            raise ValueError(f"mode must be 'sequential' or 'batched', got {self.mode!r}")
        if len(self.slab_thickness_factors) != len(self.slab_steps):
            raise ValueError("slab_thickness_factors and slab_steps must have the same length")
        if self.probe_warmup < 0:
            raise ValueError(f"probe_warmup must be >= 0 iterations, got {self.probe_warmup}")
        if self.probe_warmup and (not self.probe_update or self.probe_warmup <= self.probe_freeze):
            raise ValueError(f"a probe warm-up of {self.probe_warmup} iterations never updates the probe "
                             f"(probe_update={self.probe_update}, probe_freeze={self.probe_freeze}): "
                             "make it longer than probe_freeze, or drop it with a fixed probe")
        if self.shrinkwrap_sigma < 0:
            raise ValueError(f"shrinkwrap_sigma must be >= 0 voxels, got {self.shrinkwrap_sigma}")
        for name in ("alpha", "beta", "gamma"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def slab_factor_at(self, iteration: int) -> float:
        """Slab thickness (in units of the nominal thickness) in force at ``iteration``."""
        t = self.slab_thickness_factors[0]
        for start, thick in zip(self.slab_steps, self.slab_thickness_factors):
            if iteration >= start:
                t = thick
        return t

    def scaled(self, iterations: int, ml_iterations: int | None = None) -> "ReconConfig":
        """The same schedule compressed to ``iterations`` joint updates: slab steps, shrink-wrap
        window and warm-up scaled alike, and the ML share too unless ``ml_iterations`` is given."""
        f = iterations / self.iterations
        # replace() runs __post_init__ again: e.g. a warm-up compressed below probe_freeze is refused
        return replace(self, iterations=iterations,
                       ml_iterations=int(round(self.ml_iterations * f)) if ml_iterations is None else int(ml_iterations),
                       slab_steps=tuple(int(round(s * f)) for s in self.slab_steps),
                       shrinkwrap_start=int(round(self.shrinkwrap_start * f)),
                       shrinkwrap_stop=int(round(self.shrinkwrap_stop * f)),
                       shrinkwrap_every=max(1, int(round(self.shrinkwrap_every * f))),
                       probe_warmup=int(round(self.probe_warmup * f)))

    def with_schedule(self, schedule: Schedule) -> "ReconConfig":
        """:meth:`scaled` to a named schedule of :mod:`bp_plugin.defaults` (e.g. ``SHORT``, 60 + 20)."""
        return self.scaled(schedule.iterations, schedule.ml_iterations)

    def on_first_slab(self, **changes) -> "ReconConfig":
        """This configuration without its schedule: endless joint iterations on the first slab, no
        thickness steps, no shrink-wrap, no ML, no warm-up (the live phase of a streamed run and the
        angle curriculum); ``changes`` override further fields."""
        return replace(self, **{**dict(iterations=1 << 62, ml_iterations=0, slab_steps=(0,),
                                       slab_thickness_factors=self.slab_thickness_factors[:1], shrinkwrap_start=1 << 62,
                                       shrinkwrap_stop=1 << 62, probe_warmup=0), **changes})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ReconConfig":
        """From :meth:`to_dict` output, e.g. a result file's ``config_json``; keys that older
        versions wrote and this one no longer has (``extra``) are dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})
