"""PNG figures a beamline user looks at first (matplotlib, headless Agg backend)."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, hsv_to_rgb  # noqa: E402


def complex_to_rgb(a: np.ndarray) -> np.ndarray:
    """Hue = phase, value = amplitude / max: the usual rendering of a complex probe, ``(..., 3)`` float."""
    amp = np.abs(a)
    v = amp / amp.max() if amp.max() > 0 else amp
    h = (np.angle(a) + math.pi) / (2 * math.pi)
    return hsv_to_rgb(np.stack([h, np.ones_like(h), v], axis=-1))


def overview_figure(ds, out_path) -> None:
    """Overview of a scan dataset (:class:`bp_plugin.dataset.ScanDataset`) written to ``out_path`` (PNG).

    Panels: the frame at the Bragg peak of the central position (log scale, masked pixels grey);
    the rocking curve (central position and scan sum); the integrated-intensity map over the
    raster; and, when the file has ground truth, the probe (hue = phase), and the mid-foil
    slices of the density phase, eps_zz and omega_x.
    """
    frames = np.asarray(ds.frames, dtype=np.float64) * ds.mask          # (n_a, n_p, n1, n2)
    measured = ds.measured
    geo = ds.geometry
    n_a, n_p = frames.shape[:2]
    per_frame = frames.sum(axis=(2, 3))                                   # (n_a, n_p)
    centre = int(np.argmin(np.linalg.norm(ds.translations_m[:, :2] - ds.translations_m[:, :2].mean(0), axis=1)))
    i_peak = int(np.argmax(per_frame[:, centre]))
    gt = ds.ground_truth
    has_gt = "density" in gt
    fig, axes = plt.subplots(2, 4 if has_gt else 2, figsize=(18 if has_gt else 10, 8.5))
    axes = np.atleast_2d(axes)

    ax = axes[0, 0]
    img = np.ma.masked_array(frames[i_peak, centre], ~ds.mask)
    cmap = plt.get_cmap("inferno").copy()
    cmap.set_bad("0.6")
    im = ax.imshow(img, norm=LogNorm(vmin=1, vmax=max(2, img.max())), cmap=cmap, origin="lower")
    ax.set_title(f"frame at the Bragg peak\nangle {i_peak}, position {centre} (log counts)")
    ax.set_xlabel("n2 (pixel)")
    ax.set_ylabel("n1 (pixel)")
    fig.colorbar(im, ax=ax, shrink=0.8)

    ax = axes[0, 1]
    ang = ds.angles_deg - math.degrees(geo.theta_bragg_rad)
    ax.semilogy(ang * 1e3, np.maximum(per_frame[:, centre], 1), "o-", label=f"position {centre}")
    ax.semilogy(ang * 1e3, np.maximum(per_frame.sum(1) / n_p, 1), "s--", label="mean over the raster")
    ax.set_xlabel("rocking angle - theta_B (mdeg)")
    ax.set_ylabel("integrated counts per frame")
    ax.set_title(f"rocking curve ({n_a} angles, step {geo.rocking_step_deg * 1e3:g} mdeg)")
    ax.legend()

    ax = axes[1, 0]
    integ = np.where(measured.any(0), per_frame.sum(0), np.nan)
    t = ds.translations_m * 1e6
    sc = ax.scatter(t[:, 0], t[:, 1], c=integ, s=max(10, 4000 / n_p), marker="s", cmap="viridis")
    ax.set_aspect("equal")
    ax.set_xlabel("sample x (um)")
    ax.set_ylabel("sample y (um)")
    ax.set_title("integrated intensity over the raster")
    fig.colorbar(sc, ax=ax, shrink=0.8, label="counts")

    ax = axes[1, 1]
    ax.imshow(measured, aspect="auto", cmap="Greens", vmin=0, vmax=1, origin="lower", interpolation="nearest")
    ax.set_xlabel("position index")
    ax.set_ylabel("angle index")
    ax.set_title(f"frames measured: {int(measured.sum())} / {measured.size}")

    if has_gt:
        _ground_truth_panels(fig, axes, gt, ds.ground_truth_attrs)
    fig.suptitle(f"{ds.metadata.get('preset', '')} scan: {n_a} angles x {n_p} positions, "
                 f"{frames.shape[2]} x {frames.shape[3]} pixels, E = {geo.energy_kev:g} keV, "
                 f"hkl {tuple(geo.hkl)}", fontsize=13)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def _ground_truth_panels(fig, axes, gt, attrs) -> None:
    amp = gt["amplitude"]
    v = float(attrs.get("grid_voxel_m", 1.0))
    ny, nx = amp.shape[1:]
    extent = [-nx * v / 2e-6, nx * v / 2e-6, -ny * v / 2e-6, ny * v / 2e-6]
    k = int(np.argmax(amp.sum(axis=(1, 2))))   # the slice through the middle of the foil
    inside = amp[k] > 0.5
    panels = [("phase", "phase (rad)", "twilight", None),
              ("eps_zz", "eps_zz", "coolwarm", 1.0),
              ("omega_x", "omega_x (mrad)", "coolwarm", 1e3)]
    for ax, (key, label, cmap, scale) in zip([axes[0, 2], axes[1, 2], axes[1, 3]], panels):
        data = np.ma.masked_array(gt[key][k] * (scale or 1.0), ~inside)
        lim = np.percentile(np.abs(data.compressed()), 99) if data.count() else 1
        kw = dict(vmin=-math.pi, vmax=math.pi) if key == "phase" else dict(vmin=-lim, vmax=lim)
        im = ax.imshow(data, origin="lower", extent=extent, cmap=cmap, **kw)
        ax.set_title(f"ground truth {label}, mid-foil slice")
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = axes[0, 3]
    p1, p2 = gt["probe_p1_m"] * 1e6, gt["probe_p2_m"] * 1e6
    ax.imshow(complex_to_rgb(gt["probe"]), origin="lower", extent=[p2[0], p2[-1], p1[0], p1[-1]])
    ax.set_xlabel("p2, horizontal (um)")
    ax.set_ylabel("p1, vertical (um)")
    ax.set_title("probe (hue = phase, value = amplitude)")
