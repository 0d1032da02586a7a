"""PNG figures of a reconstruction, in the style of the paper's Figs. 3-5."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .figures import complex_to_rgb  # noqa: E402


def _scale_bar(ax, extent_um, length_um=None):
    width = extent_um[1] - extent_um[0]
    length = length_um or float(10 ** math.floor(math.log10(max(width / 4, 1e-3))))
    x0, y0 = extent_um[0] + 0.05 * width, extent_um[2] + 0.06 * (extent_um[3] - extent_um[2])
    ax.plot([x0, x0 + length], [y0, y0], "k-", lw=3)
    ax.text(x0 + length / 2, y0, f"{length * 1e3:g} nm", ha="center", va="bottom", fontsize=8)


def maps_figure(maps: dict, origin_m, voxel_m: float, out_path, *, title: str = "", mask=None,
                slices: tuple[int, int] | None = None) -> None:
    """Mid-foil (z) slice and a y-z section of amplitude, phase, eps_zz, omega_x, omega_y.

    ``maps`` are lab-grid arrays (z, y, x); colour bars in physical units (eps_zz in 1e-4,
    tilts in mrad); voxels outside ``mask`` (default: amplitude under 30 % of its 99th
    percentile) are blank. ``slices = (z index, x index)`` fixes the slices (so two figures
    show the same planes); by default the fullest z plane and the middle x plane of the mask.
    """
    amp = maps["amplitude"]
    ref = np.percentile(amp[amp > 0], 99) if (amp > 0).any() else 1
    inside = (amp > 0.3 * ref) if mask is None else mask
    nz, ny, nx = amp.shape
    k, i_x = slices if slices is not None else default_slices(inside)
    ext_xy = [origin_m[0] * 1e6, (origin_m[0] + nx * voxel_m) * 1e6, origin_m[1] * 1e6, (origin_m[1] + ny * voxel_m) * 1e6]
    ext_yz = [origin_m[1] * 1e6, (origin_m[1] + ny * voxel_m) * 1e6, origin_m[2] * 1e6, (origin_m[2] + nz * voxel_m) * 1e6]
    panels = [("amplitude", "amplitude (arb.)", "gray", 1.0, False),
              ("phase", "phase (rad)", "twilight", 1.0, True),
              ("eps_zz", "eps_zz (1e-4)", "coolwarm", 1e4, True),
              ("omega_x", "omega_x (mrad)", "coolwarm", 1e3, True),
              ("omega_y", "omega_y (mrad)", "coolwarm", 1e3, True)]
    fig, axes = plt.subplots(2, 5, figsize=(22, 8.5), gridspec_kw={"height_ratios": [3, 1.3]})
    for col, (key, label, cmap, scale, masked) in enumerate(panels):
        for row, (sl, ext, xl, yl) in enumerate([((k, slice(None), slice(None)), ext_xy, "x (um)", "y (um)"),
                                                  ((slice(None), slice(None), i_x), ext_yz, "y (um)", "z (um)")]):
            ax = axes[row, col]
            data = maps[key][sl] * scale
            m = inside[sl]
            shown = np.ma.masked_array(data, ~m) if masked else data
            if key == "phase":
                kw = dict(vmin=-math.pi, vmax=math.pi)
            elif masked:
                lim = np.percentile(np.abs(data[m]), 98) if m.any() else 1.0
                kw = dict(vmin=-lim, vmax=lim)
            else:
                kw = {}
            im = ax.imshow(shown, origin="lower", extent=ext, cmap=cmap, aspect="equal", **kw)
            fig.colorbar(im, ax=ax, shrink=0.8, label=label)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{label.split(' (')[0]}, {'z' if row == 0 else 'x'} = "
                         f"{(origin_m[2] + k * voxel_m if row == 0 else origin_m[0] + i_x * voxel_m) * 1e6:.3f} um",
                         fontsize=10)
            _scale_bar(ax, ext, 0.1 if (ext[1] - ext[0]) > 0.3 else 0.05)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def default_slices(mask: np.ndarray) -> tuple[int, int]:
    """(z index of the fullest plane, middle x index) of a (z, y, x) mask."""
    cols = np.nonzero(mask.any(axis=(0, 1)))[0]
    return int(np.argmax(mask.sum(axis=(1, 2)))), (int(np.median(cols)) if cols.size else mask.shape[2] // 2)


def probe_and_convergence_figure(probe2d, p1_m, r2_m, history: list[dict], out_path, *, truth=None,
                                 coverage=None) -> None:
    """Probe section (hue = phase), its profiles, and the error curve of every iteration.

    ``coverage`` (``(np1, N2)``, peak 1): how much each section pixel lit the crystal; its 1 %
    contour is drawn, since outside it the data did not constrain the probe."""
    fig, axes = plt.subplots(1, 3 if truth is None else 4, figsize=(17 if truth is None else 22, 5))
    ext = [r2_m[0] * 1e6, r2_m[-1] * 1e6, p1_m[0] * 1e6, p1_m[-1] * 1e6]
    axes[0].imshow(complex_to_rgb(probe2d), origin="lower", extent=ext, aspect="auto")
    axes[0].set_xlabel("r2 = -p2, horizontal (um)")
    axes[0].set_ylabel("p1, vertical (um)")
    axes[0].set_title("reconstructed probe (hue = phase)")
    if coverage is not None and np.ptp(coverage) > 0:
        # unused section rows (no voxel extrudes from them) read 0: smooth over them for the contour
        cov = np.maximum(coverage, np.maximum(np.roll(coverage, 1, 0), np.roll(coverage, -1, 0)))
        axes[0].contour(r2_m * 1e6, p1_m * 1e6, cov, levels=[0.01], colors="w", linewidths=1, linestyles="--")
        axes[0].set_title("reconstructed probe (hue = phase); dashed: where it met the crystal")
    i = np.abs(probe2d) ** 2
    k1, k2 = np.unravel_index(np.argmax(i), i.shape)
    axes[1].semilogy(p1_m * 1e6, i[:, k2] / i.max(), label="vertical (p1)")
    axes[1].semilogy(r2_m * 1e6, i[k1, :] / i.max(), label="horizontal (r2)")
    if truth is not None:
        it = np.abs(truth) ** 2
        axes[1].semilogy(p1_m * 1e6, it[:, k2] / it.max(), "k:", label="true, vertical")
        axes[1].semilogy(r2_m * 1e6, it[k1, :] / it.max(), "k--", label="true, horizontal")
        axes[3].imshow(complex_to_rgb(truth), origin="lower", extent=ext, aspect="auto")
        axes[3].set_title("true probe (hue = phase)")
        axes[3].set_xlabel("r2 = -p2, horizontal (um)")
    axes[1].set_ylim(1e-4, 1.5)
    axes[1].set_xlabel("position (um)")
    axes[1].set_ylabel("intensity / max")
    axes[1].set_title("probe profiles through the maximum")
    axes[1].legend(fontsize=8)
    its = np.array([h["iteration"] for h in history])
    err = np.array([h["error"] for h in history])
    ml = np.array([h.get("stage") == "ml" for h in history])
    axes[2].semilogy(its[~ml], err[~ml], "-", label="joint updates")
    if ml.any():
        axes[2].semilogy(its[ml], err[ml], "-", label="maximum likelihood")
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("sum w (sqrt I - sqrt h)^2 / sum w I")
    axes[2].set_title("convergence")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
