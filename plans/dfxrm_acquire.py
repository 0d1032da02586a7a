"""One DF-XRM acquisition on the simulated microscope, recorded in Tiled (``bp-plugin dfxrm acquire``).

The acquisition driver every technique shares (:mod:`plans.recording`): embedded Tiled server
unless one is given, a RunEngine, bluesky's ``TiledWriter`` behind a queue, the camera's HDF5 files
written first; callbacks that need the devices (the frame streamer) come from ``callbacks_for``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .recording import TILED_BATCH

SCAN_KINDS = ("mosaicity", "strain", "combined", "weak_beam", "layers", "topotomo")
#: the layers of a ``layers`` scan by default: sample heights (um), the simulated 3D grain's middle
LAYER_HEIGHTS_UM = (-2.0, -1.333, -0.667, 0.0, 0.667, 1.333, 2.0)
#: how far the simulated sub-grains' seeds move per kelvin in a temperature series (1 um per 200 K)
SERIES_DRIFT_M_PER_K = 5e-9


@dataclass
class DfxrmAcquireOptions:
    """Settings of :func:`acquire_dfxrm`.

    Attributes:
        preset: simulated microscope (tiny, small, full).
        scan: ``mosaicity`` (phi x chi), ``strain`` (2theta), ``combined``, ``weak_beam``,
            ``layers`` (a mosaicity grid at each height of a simulated 3D grain, ``heights_um``) or
            ``topotomo`` (a phi rocking at each ``omegas_deg`` about Q of a simulated 3D grain).
        out: output folder (``detector/`` HDF5 frames, ``tiled/`` embedded server).
        detector_dir: where the camera writes (default ``out/detector``); a Tiled server must be
            allowed to read it to serve the frames.
        tiled_url, api_key: an existing Tiled server (default: start the embedded one).
        seed: sample layout and photon noise.
        n_phi, n_chi, n_tth: points per axis (None: the preset's).
        weak_beam_offsets_deg: (dphi, dchi, dtth) offsets of a weak-beam series.
        heights_um: the layers of a ``layers`` scan (sample heights, um).
        omegas_deg: the projections of a ``topotomo`` scan (None: the plan's full turn).
        temperatures_K: repeat the scan at each of these sample temperatures, one run each, linked
            as a series (None: one scan). The simulated grain is then the 3D one (a 2D scan
            images its middle layer), its boundaries moving :data:`SERIES_DRIFT_M_PER_K`.
        count_time: exposure per frame (s; None: the preset's).
        order: moments kept (2, or 4 for skewness and kurtosis too).
        realtime: exposures last ``count_time`` as on the real camera.
        batch_size: events per Tiled write.
        md: extra start-document metadata.
    """

    preset: str = "tiny"
    scan: str = "mosaicity"
    out: Path = Path("out/dfxrm")
    detector_dir: Path | None = None
    tiled_url: str | None = None
    api_key: str | None = field(default=None, repr=False)    # never in a log line
    seed: int = 0
    n_phi: int | None = None
    n_chi: int | None = None
    n_tth: int | None = None
    weak_beam_offsets_deg: tuple = ((0.02, 0.0, 0.0), (-0.02, 0.0, 0.0), (0.0, 0.03, 0.0), (0.0, -0.03, 0.0))
    heights_um: tuple = LAYER_HEIGHTS_UM
    omegas_deg: tuple | None = None
    temperatures_K: tuple | None = None
    count_time: float | None = None
    order: int = 2
    realtime: bool = False
    batch_size: int = TILED_BATCH
    md: dict = field(default_factory=dict)


def dfxrm_plan(mic, opts: DfxrmAcquireOptions):
    """The plan of ``opts.scan`` on the microscope ``mic`` with the preset's ranges; with
    ``opts.temperatures_K``, that scan repeated at each temperature (:func:`plans.time_series.time_series`)."""
    if opts.temperatures_K:
        from .time_series import time_series

        return time_series(lambda md: _one_scan(mic, opts, md), mic.temperature, list(opts.temperatures_K),
                           md=opts.md)
    return _one_scan(mic, opts, opts.md)


def _one_scan(mic, opts: DfxrmAcquireOptions, md: dict):
    from . import dfxrm

    p, geo, det = mic.preset, mic.geometry, [mic.detector]
    n_phi, n_chi, n_tth = opts.n_phi or p.n_phi, opts.n_chi or p.n_chi, opts.n_tth or p.n_tth
    tilt = {"phi_range_deg": p.phi_range_deg, "n_phi": n_phi, "chi_range_deg": p.chi_range_deg, "n_chi": n_chi,
            "count_time": opts.count_time, "order": opts.order}
    if opts.scan == "mosaicity":
        return dfxrm.mosaicity_scan(det, mic.phi, mic.chi, geo, md=md, **tilt)
    if opts.scan == "strain":
        return dfxrm.strain_scan(det, mic.tth, geo, tth_range_deg=p.tth_range_deg, n_tth=n_tth, md=md,
                                 count_time=opts.count_time, order=opts.order)
    if opts.scan == "combined":
        return dfxrm.combined_scan(det, mic.phi, mic.chi, mic.tth, geo, tth_range_deg=p.tth_range_deg,
                                   n_tth=opts.n_tth or 7, md=md, **tilt)
    if opts.scan == "layers":
        from .dfxrm_layers import layer_scan

        strain = {"tth": mic.tth, "tth_range_deg": p.tth_range_deg, "n_tth": opts.n_tth} if opts.n_tth else {}
        return layer_scan(det, mic.z, mic.phi, mic.chi, geo, list(opts.heights_um), md=md, **tilt, **strain)
    if opts.scan == "topotomo":
        from .dfxrm_topo import topo_scan

        kw = {"n_phi": opts.n_phi} if opts.n_phi else {}
        return topo_scan(det, mic.omega, mic.phi, geo, opts.omegas_deg, count_time=opts.count_time, md=md, **kw)
    if opts.scan == "weak_beam":
        return dfxrm.weak_beam_series(det, mic.phi, mic.chi, mic.tth, geo, opts.weak_beam_offsets_deg, md=md,
                                      count_time=opts.count_time)
    raise ValueError(f"unknown DF-XRM scan {opts.scan!r}; choose one of {SCAN_KINDS}")


def sim_microscope(opts: DfxrmAcquireOptions, write_dir):
    """The simulated microscope ``opts.scan`` needs: the preset's 2D grain, or a 3D one under a
    line beam (layers) or lit whole with the rotation about Q (topotomo)."""
    from sim_devices.dfxrm_microscope import SimDfxrmMicroscope, get_dfxrm_preset
    from sim_devices.dfxrm_topo import topo_grain
    from sim_devices.dfxrm_volume import Grain3DConfig

    kw = dict(write_dir=write_dir, seed=opts.seed, realtime=opts.realtime)
    drift = {"boundary_drift_m_per_K": SERIES_DRIFT_M_PER_K} if opts.temperatures_K else {}
    if opts.scan == "topotomo":
        p = get_dfxrm_preset(opts.preset)
        return SimDfxrmMicroscope(p, volume=replace(topo_grain(p.shape, p.geometry().pixel_size_m), **drift),
                                  imaging="projections", **kw)
    if opts.scan == "layers" or drift:       # a series: the 3D grain (its middle layer for a 2D scan)
        return SimDfxrmMicroscope(opts.preset, volume=Grain3DConfig(**drift), **kw)
    return SimDfxrmMicroscope(opts.preset, **kw)


def acquire_dfxrm(opts: DfxrmAcquireOptions, *, server=None, callbacks_for=None) -> dict:
    """Run a DF-XRM plan on the simulated microscope, recorded in Tiled (:func:`plans.recording.record_run`).

    Returns: ``uid``, ``tiled_url``, ``api_key``, ``n_events``, ``seconds``, ``detector_files``,
    ``exit_status``.
    """
    from .recording import record_run

    out = Path(opts.out)
    result, _ = record_run(
        lambda det_dir: sim_microscope(opts, det_dir),
        lambda mic: dfxrm_plan(mic, opts), out=out,
        detector_dir=Path(opts.detector_dir) if opts.detector_dir else out / "detector", server=server,
        tiled_url=opts.tiled_url, api_key=opts.api_key, batch_size=opts.batch_size, callbacks_for=callbacks_for)
    return result
