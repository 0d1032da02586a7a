"""DF-XRM results on disk: the maps file (HDF5) and the overview figure (PNG)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .maps import MAP_UNITS, tilt_colour_wheel


def write_maps(path, maps: dict, *, geometry: dict, scan: dict, metrics: dict | None = None, source: str = "") -> Path:
    """``/maps/<name>`` float32 ``(rows, cols)`` (``units`` attribute); ``/`` attributes ``geometry``,
    ``scan``, ``metrics`` (JSON) and ``source``. Written to a temporary name, then renamed."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.h5")
    with h5py.File(tmp, "w") as f:
        g = f.create_group("maps")
        for name, a in maps.items():
            d = g.create_dataset(name, data=np.asarray(a), compression="gzip", compression_opts=1)
            d.attrs["units"] = MAP_UNITS.get(name, "")
        f.attrs["format"] = "dfxrm-maps"
        f.attrs["version"] = 1
        f.attrs["geometry"] = json.dumps(geometry, default=float)
        f.attrs["scan"] = json.dumps(scan, default=float)
        f.attrs["metrics"] = json.dumps(metrics or {}, default=float)
        f.attrs["source"] = source
    tmp.replace(path)
    return path


def read_maps(path) -> tuple[dict, dict]:
    """``(maps, attributes)`` of a maps file (attributes: geometry, scan, metrics decoded)."""
    with h5py.File(path, "r") as f:
        maps = {k: f["maps"][k][()] for k in f["maps"]}
        attrs = {k: (json.loads(v) if k in ("geometry", "scan", "metrics") else v) for k, v in f.attrs.items()}
    return maps, attrs


def _imshow(ax, a, title, unit, cmap, extent, symmetric=False, scale=1.0):
    v = np.asarray(a, float) * scale
    fin = v[np.isfinite(v)]
    if symmetric and fin.size:
        lim = float(np.percentile(np.abs(fin), 99)) or 1.0
        kw = {"vmin": -lim, "vmax": lim}
    elif fin.size:
        kw = {"vmin": float(np.percentile(fin, 1)), "vmax": float(np.percentile(fin, 99))}
    else:
        kw = {}
    im = ax.imshow(v, cmap=cmap, extent=extent, origin="upper", interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, shrink=0.8).set_label(unit, fontsize=8)


def plot_maps(path, maps: dict, pixel_size_m: float, title: str = "") -> Path:
    """Overview PNG: tilt colour wheel (with its key), strain, mosaicity, intensity and Nye ``alpha_zz``;
    axes in um."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = maps["intensity"].shape
    um = pixel_size_m * 1e6
    extent = (0, cols * um, rows * um, 0)
    panels = [k for k in ("tilt", "strain", "fwhm_phi", "fwhm_chi", "nye_zz", "intensity")
              if k in maps or (k == "tilt" and "tilt_phi" in maps and "tilt_chi" in maps)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, panels):
        if k == "tilt":
            rgb = tilt_colour_wheel(maps["tilt_phi"], maps["tilt_chi"])
            ax.imshow(rgb, extent=extent, interpolation="nearest")
            mag = np.hypot(maps["tilt_phi"] - np.nanmedian(maps["tilt_phi"]),
                           maps["tilt_chi"] - np.nanmedian(maps["tilt_chi"]))
            r = float(np.nanpercentile(mag, 98)) if np.isfinite(mag).any() else 0.0
            ax.set_title(f"tilt (hue: direction, saturation: 0 to {r:.3f} deg)", fontsize=9)
            key = ax.inset_axes([0.78, 0.78, 0.2, 0.2])
            yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
            key.imshow(tilt_colour_wheel(np.where(xx**2 + yy**2 <= 1, xx * r, np.nan),
                                         np.where(xx**2 + yy**2 <= 1, -yy * r, np.nan), r or 1.0), origin="upper")
            key.set_xticks([]), key.set_yticks([])
            key.set_xlabel("phi", fontsize=6, labelpad=1)
            key.set_ylabel("chi", fontsize=6, labelpad=1)
        elif k == "strain":
            _imshow(ax, maps[k], "axial strain eps_zz (x 1e-4)", "1e-4", "RdBu_r", extent, True, 1e4)
        elif k == "nye_zz":
            _imshow(ax, maps[k], "Nye alpha_zz (b along Q)", "1/um", "PuOr", extent, True)
        elif k == "intensity":
            _imshow(ax, maps[k], "integrated intensity", "counts", "gray", extent)
        else:
            _imshow(ax, maps[k], f"mosaicity {k[5:]} (FWHM)", "deg", "viridis", extent)
        ax.set_xlabel("x (um)", fontsize=8)
        ax.set_ylabel("y (um)", fontsize=8)
    fig.suptitle(title or "DF-XRM maps", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_topo(path, result: dict, title: str = "") -> Path:
    """Topo-tomography PNG: the first projection, and the reconstructed volume's three slices
    through the grain's centre (w along Q; a, b in the plane normal to it) with the shape's outline
    (:func:`bp_plugin.dfxrm.topotomo.reconstruct_shape` output plus ``projections``); axes in um."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol, shape, ax_m = result["volume"], result["shape"], result["axes_m"]
    centre = [int(round(float(np.mean(i)))) if i.size else n // 2
              for i, n in zip(np.nonzero(shape), shape.shape)]
    um = {k: v * 1e6 for k, v in ax_m.items()}
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    proj = result.get("projections")
    if proj is not None and len(proj):
        p = np.asarray(proj[0], float)
        axes[0].imshow(p, cmap="gray", interpolation="nearest")
        axes[0].set_title("projection at the first omega (counts)", fontsize=9)
        axes[0].set_xlabel("column"), axes[0].set_ylabel("row")
    else:
        axes[0].axis("off")
    cuts = (("w", "b", "a", vol[centre[0]], shape[centre[0]], f"slice normal to Q, w = {um['w'][centre[0]]:.2f} um"),
            ("b", "w", "a", vol[:, centre[1]], shape[:, centre[1]], f"b = {um['b'][centre[1]]:.2f} um"),
            ("a", "w", "b", vol[:, :, centre[2]], shape[:, :, centre[2]], f"a = {um['a'][centre[2]]:.2f} um"))
    for ax, (_, rows, cols, img, sh, t) in zip(axes[1:], cuts):
        ext = (um[cols][0], um[cols][-1], um[rows][-1], um[rows][0])
        ax.imshow(img, cmap="magma", extent=ext, interpolation="nearest")
        ax.contour(sh, levels=[0.5], colors="cyan", linewidths=0.8, extent=(ext[0], ext[1], ext[3], ext[2]))
        ax.set_title(t + " (outline: shape)", fontsize=9)
        ax.set_xlabel(f"{cols} (um)", fontsize=8), ax.set_ylabel(f"{rows} (um)", fontsize=8)
    fig.suptitle(title or f"topo-tomography: grain volume {result['grain_volume_m3'] * 1e18:.3g} um^3 from "
                 f"{result['n_projections']} projections", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
