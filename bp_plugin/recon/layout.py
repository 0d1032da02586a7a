"""Where every scan position looks into the object, and which planes were measured.

The object lives on a grid of the reconstruction frame (voxels ``dr3, dr1, dr2``, axis order
3, 1, 2) in *sample* coordinates (the lab frame of the sample at zero translation). Each scan
position sees a box of the reconstruction's shape ``(N3, N1, N2)``: object voxels
``offset[j] + m``. The beam centre, at sample point ``-s_j`` for a sample translation ``s_j``,
falls ``subvoxel[j]`` voxels (each in [-0.5, 0.5]) away from the box centre ``N // 2``; the
probe is shifted by that remainder (a Fourier shift of its 2D section), never rounded.

Angular up-sampling: the box has ``N3 = n_angles * upsampling`` planes; measured angle ``a``
(centred on ``n_angles // 2`` = theta_B) is plane ``N3 // 2 + (a - n_angles // 2) * upsampling``;
the other planes are virtual (weight 0, free).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..geometry import ExperimentGeometry, lab_to_recon


@dataclass(frozen=True)
class ScanLayout:
    """Object grid, per-position boxes and measured planes of one scan.

    Attributes:
        geometry: the experiment (``upsampling`` sets ``N3``).
        box_shape: ``(N3, N1, N2)``.
        voxel_m: ``(dr3, dr1, dr2)`` (m), axis order (3, 1, 2).
        object_shape: object grid shape, axis order (3, 1, 2).
        object_origin: integer voxel index (3, 1, 2) of object voxel 0: its position is
            ``(object_origin + k) * voxel_m`` along each axis of the reconstruction frame.
        offsets: ``(n_positions, 3)`` int, object index of box voxel 0 for each position.
        subvoxel: ``(n_positions, 3)`` float, beam-centre remainder in voxels.
        planes: ``(n_angles,)`` int, box plane of each measured angle.
    """

    geometry: ExperimentGeometry
    box_shape: tuple[int, int, int]
    voxel_m: tuple[float, float, float]
    object_shape: tuple[int, int, int]
    object_origin: tuple[int, int, int]
    offsets: np.ndarray
    subvoxel: np.ndarray
    planes: np.ndarray

    @classmethod
    def from_scan(cls, geometry: ExperimentGeometry, translations_m: np.ndarray, *,
                  margin_voxels: tuple[int, int, int] = (0, 0, 0)) -> "ScanLayout":
        """Layout for a geometry and sample translations ``(n_positions, 3)`` (m, lab frame)."""
        t = np.asarray(translations_m, float)
        if t.ndim != 2 or t.shape[1] != 3:
            raise ValueError(f"translations must be (n_positions, 3) in metres, got shape {t.shape}")
        box = geometry.box_shape
        dr1, dr2, dr3 = geometry.voxel_size_m
        voxel = (dr3, dr1, dr2)
        r = lab_to_recon(-t, geometry.theta_bragg_rad)[:, [2, 0, 1]]   # beam centre, sample frame
        q = r / np.asarray(voxel)
        qi = np.rint(q).astype(np.int64)
        half = np.array(box) // 2
        margin = np.asarray(margin_voxels, dtype=np.int64)
        origin = qi.min(0) - half - margin
        offsets = qi - half - origin
        shape = tuple(int(v) for v in offsets.max(0) + np.asarray(box) + margin)
        n_a, up = geometry.n_angles, geometry.upsampling
        planes = box[0] // 2 + (np.arange(n_a) - n_a // 2) * up
        return cls(geometry, tuple(box), voxel, shape, tuple(int(v) for v in origin), offsets, q - qi, planes)

    @property
    def n_positions(self) -> int:
        return len(self.offsets)

    def view(self, j: int) -> tuple[slice, slice, slice]:
        """Slices of the object array seen by position ``j``."""
        o = self.offsets[j]
        return tuple(slice(int(o[k]), int(o[k]) + self.box_shape[k]) for k in range(3))

    def object_coordinates_m(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1D coordinates (m) of the object voxels along r3, r1, r2 (sample frame)."""
        return tuple((self.object_origin[k] + np.arange(self.object_shape[k])) * self.voxel_m[k] for k in range(3))

    def object_lab_points(self) -> np.ndarray:
        """Lab (sample-frame) ``(x, y, z)`` of every object voxel, float64 ``object_shape + (3,)``."""
        from ..geometry import recon_basis

        e = recon_basis(self.geometry.theta_bragg_rad)
        r3, r1, r2 = self.object_coordinates_m()
        return (r3[:, None, None, None] * e[2] + r1[None, :, None, None] * e[0]
                + r2[None, None, :, None] * e[1])

    def lab_footprint(self, lab_voxel_m: float, reach: float = 1.0) -> np.ndarray:
        """Lab-grid offsets within ``reach`` reconstruction voxels of a point along each axis.

        The parallelepiped spanned by ``+-reach`` voxels along ``r3, r1, r2``, sampled on a lab
        grid of spacing ``lab_voxel_m``: bool ``(nz, ny, nx)`` (odd sizes, centred), a structuring
        element for erosions. A reconstruction voxel is far from a surface when this element
        around it lies inside the crystal, which depends on the voxel's extent along the surface
        normal, not on its longest edge (at a low Bragg angle, dr3 is long but lies nearly in the
        foil's plane).
        """
        from ..geometry import recon_basis

        e = recon_basis(self.geometry.theta_bragg_rad)[[2, 0, 1]]          # rows along r3, r1, r2
        edges = e * (reach * np.asarray(self.voxel_m))[:, None]          # (3 edges, xyz)
        half = np.ceil(np.abs(edges).sum(0) / lab_voxel_m).astype(int)   # (x, y, z) half-sizes
        z, y, x = np.meshgrid(*(np.arange(-h, h + 1) for h in half[::-1]), indexing="ij")
        pts = np.stack([x, y, z], -1) * lab_voxel_m
        coords = pts @ np.linalg.inv(edges)                              # in units of the edges
        return np.all(np.abs(coords) <= 1 + 1e-9, axis=-1)

    def describe(self) -> str:
        n3, n1, n2 = self.object_shape
        return (f"object grid {n3} x {n1} x {n2} voxels ({', '.join(f'{v * 1e9:.1f}' for v in self.voxel_m)} nm), "
                f"box {self.box_shape}, {self.n_positions} positions, {len(self.planes)} measured of "
                f"{self.box_shape[0]} planes")


def slab_normal(tilt_x_deg: float, tilt_y_deg: float) -> np.ndarray:
    """Unit normal (lab x, y, z) of a foil tilted by ``tilt_x`` about x, then ``tilt_y`` about y (deg):
    z rotated so, the sample model's convention."""
    ax, ay = math.radians(tilt_x_deg), math.radians(tilt_y_deg)
    return np.array([math.cos(ax) * math.sin(ay), -math.sin(ax), math.cos(ax) * math.cos(ay)])


def slab_support(layout: ScanLayout, thickness_m: float, tilt_x_deg: float, tilt_y_deg: float,
                 *, lateral_limit_m: float | None = None) -> np.ndarray:
    """Initial support: a slab of ``thickness_m`` through the origin with the given tilt (bool, object shape).

    The tilt convention is the sample model's: normal = z rotated by ``tilt_x`` about x, then by
    ``tilt_y`` about y. ``lateral_limit_m`` also cuts the slab to ``|x|, |y| <= limit``.
    """
    n = slab_normal(tilt_x_deg, tilt_y_deg)
    xyz = layout.object_lab_points()
    s = np.abs(xyz @ n) <= thickness_m / 2
    if lateral_limit_m is not None:
        s &= (np.abs(xyz[..., 0]) <= lateral_limit_m) & (np.abs(xyz[..., 1]) <= lateral_limit_m)
    return s


#: the warning of a reconstruction that had to assume the sample's orientation
ASSUMED_SPECULAR = ("the sample's tilt is unknown: the slab supports assume its surface normal along Q "
                    "(a specular reflection); a foil tilted by more than a degree or two reconstructs "
                    "better when the tilt is stated (--sample-tilt TX TY, or sample_tilt_deg in the geometry)")


def slab_orientation(configured, from_geometry) -> tuple[tuple[float, float], str, str | None]:
    """The slab's tilt (deg, about x and y) is the sample's, from what the user states: the
    reconstruction's configuration, then the geometry (the scan's metadata), else a specular
    reflection (normal along Q), never a constant of a test sample.

    Returns ``(tilt, source, warning)``, source one of ``"config"``, ``"geometry"``,
    ``"assumed specular"`` (the one with a warning; None otherwise)."""
    if configured is not None:
        tilt, source = configured, "config"
    elif from_geometry is not None:
        tilt, source = from_geometry, "geometry"
    else:
        tilt, source = (0.0, 0.0), "assumed specular"
    return (tuple(float(t) for t in tilt), source,
            ASSUMED_SPECULAR if source == "assumed specular" else None)


#: below this many reconstruction voxels across the foil, nearly every voxel is a surface voxel
#: (docs/family.md: the family members under it have its largest object and probe errors)
MIN_VOXELS_ACROSS = 2.0


def voxels_across(geometry: ExperimentGeometry, tilt_deg: tuple[float, float]) -> float:
    """How many reconstruction voxels the foil's thickness spans along its normal.

    A voxel (``dr1 x dr2 x dr3`` along the orthogonal ``e1, e2, e3``) extends
    ``sum_k |n . e_k| dr_k`` along the unit normal ``n``; the foil's ``thickness_m`` over that.
    At a low Bragg angle ``dr3 = lambda / (2 n_angles dtheta sin(theta_B) cos(theta_B))`` grows
    and a foil of a few hundred nm spans one or two voxels."""
    from ..geometry import recon_basis

    n = slab_normal(*tilt_deg)
    extent = sum(abs(float(e @ n)) * d for e, d in zip(recon_basis(geometry.theta_bragg_rad), geometry.voxel_size_m))
    return geometry.thickness_m / extent


def angles_for_voxels_across(geometry: ExperimentGeometry, tilt_deg: tuple[float, float],
                             target: float = MIN_VOXELS_ACROSS) -> int | None:
    """The fewest rocking angles at the scan's step (``rocking_step_deg``) for which the foil spans
    ``target`` reconstruction voxels along its normal, or None when ``dr1, dr2`` alone (the
    detector's sampling) already exceed the room: more angles shorten only ``dr3``."""
    from ..geometry import recon_basis

    n = slab_normal(*tilt_deg)
    a1, a2, a3 = (abs(float(e @ n)) for e in recon_basis(geometry.theta_bragg_rad))
    dr1, dr2, _ = geometry.voxel_size_m
    room = geometry.thickness_m / target - a1 * dr1 - a2 * dr2      # what dr3 may take (m)
    if room <= 0 or a3 <= 0:
        return None
    tb = geometry.theta_bragg_rad
    need_deg = math.degrees(geometry.wavelength_m * a3 / (2 * room * math.sin(tb) * math.cos(tb)))
    return math.ceil(need_deg / geometry.rocking_step_deg)


def thin_foil_warning(geometry: ExperimentGeometry, tilt_deg: tuple[float, float], source: str) -> str | None:
    """A warning (or None) when the foil spans fewer than :data:`MIN_VOXELS_ACROSS` voxels along
    its normal, with the rocking range (``n_angles x step``) that would give that many."""
    across = voxels_across(geometry, tilt_deg)
    if across >= MIN_VOXELS_ACROSS:
        return None
    need = angles_for_voxels_across(geometry, tilt_deg)
    step = geometry.rocking_step_deg
    if need is not None:
        fix = (f"{need} angles or more at this rocking step (now {geometry.n_angles}: a range of "
               f"{geometry.n_angles * step:.3g} deg, {need * step:.3g} needed) give {MIN_VOXELS_ACROSS:g}")
    else:
        fix = "the detector's sampling (dr1, dr2) alone is too coarse: a larger crop gives finer voxels"
    normal = "assumed along Q" if source == "assumed specular" else f"from the {source}"
    return (f"the foil ({geometry.thickness_m * 1e6:.3g} um) spans {across:.2f} reconstruction voxels along "
            f"its normal ({normal}): nearly every voxel is a surface voxel, so expect larger density and probe errors and "
            f"little or no strain away from the surfaces; {fix}")
