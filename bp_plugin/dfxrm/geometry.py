"""DF-XRM geometry: the reflection, the effective pixel in the sample plane, the nominal motor positions.

Frame convention (docs/dfxrm.md): sample axes x (image columns) and y (image rows) span the imaged
layer, z is along the nominal scattering vector Q. The tilt axes: ``phi`` rotates about y, ``chi``
about x, with positive senses chosen so that a positive offset brings into the Bragg condition a
region whose local Q is tilted towards -x (phi) or -y (chi): the region where ``du_z/dx`` (``du_z/dy``)
is positive, since the local scattering vector is ``Q (z - grad u_z)``. So ``tilt_phi = beta_zx``
and ``tilt_chi = beta_zy`` (rad) with ``beta_zj = du_z/dx_j``. ``tth`` is the 2theta arm that carries
the objective and the detector together.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..geometry import HC_KEV_ANGSTROM

HC_KEV_M = HC_KEV_ANGSTROM * 1e-10      # h c in keV m (one definition: bp_plugin.geometry)


@dataclass
class DfxrmGeometry:
    """Geometry of one DF-XRM measurement.

    Attributes:
        energy_kev: photon energy (keV).
        d_spacing_m: lattice spacing of the reflection (m); default Al (111).
        pixel_size_m: effective pixel in the sample plane (detector pixel x binning / magnification), m.
        phi0_deg, chi0_deg: motor positions of the nominal (reference) lattice orientation; tilts are
            offsets from them.
        tth0_deg: 2theta of the unstrained reference lattice (None: 2 theta_B from d and energy).
        magnification: objective magnification (recorded, informative).
    """

    energy_kev: float = 17.0
    d_spacing_m: float = 2.3381e-10
    pixel_size_m: float = 150e-9
    phi0_deg: float = 0.0
    chi0_deg: float = 0.0
    tth0_deg: float | None = None
    magnification: float = 17.9

    def __post_init__(self):
        for name in ("energy_kev", "d_spacing_m", "pixel_size_m", "phi0_deg", "chi0_deg"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"DF-XRM geometry: {name} must be a finite number, got {v!r}")
        if not (self.energy_kev > 0 and self.d_spacing_m > 0 and self.pixel_size_m > 0):
            raise ValueError(f"DF-XRM geometry: energy_kev ({self.energy_kev}), d_spacing_m ({self.d_spacing_m}) "
                             f"and pixel_size_m ({self.pixel_size_m}) must be positive")
        lam = self.wavelength_m
        if lam / (2 * self.d_spacing_m) >= 1:
            raise ValueError(f"no Bragg reflection: lambda {lam:.3e} m > 2 d = {2 * self.d_spacing_m:.3e} m; "
                             "raise the energy or choose a reflection with a larger d spacing")
        if self.tth0_deg is not None:
            if not (isinstance(self.tth0_deg, (int, float)) and 0 < self.tth0_deg < 180):
                raise ValueError(f"DF-XRM geometry: tth0_deg must be in (0, 180) deg, got {self.tth0_deg!r}")
            if abs(self.tth0_deg - 2 * math.degrees(self.theta_bragg_rad)) > 1.0:
                raise ValueError(f"DF-XRM geometry: tth0_deg {self.tth0_deg} is more than 1 deg from 2 theta_B = "
                                 f"{2 * math.degrees(self.theta_bragg_rad):.4f} deg of d = {self.d_spacing_m} m at "
                                 f"{self.energy_kev} keV; check the energy and the reflection")

    @property
    def wavelength_m(self) -> float:
        return HC_KEV_M / self.energy_kev

    @property
    def theta_bragg_rad(self) -> float:
        return math.asin(self.wavelength_m / (2 * self.d_spacing_m))

    @property
    def tth_ref_deg(self) -> float:
        """2theta of the reference lattice (deg)."""
        return self.tth0_deg if self.tth0_deg is not None else 2 * math.degrees(self.theta_bragg_rad)

    def strain_from_tth(self, tth_deg):
        """Axial strain ``eps = -cot(theta_ref) (2theta - 2theta_ref) / 2`` (2theta in deg; array or float).

        ``theta_ref = tth_ref_deg / 2``: the Bragg angle of the reference lattice, the measured
        ``tth0_deg`` when given (the derivative of Bragg's law is taken where the lattice is)."""
        return -(tth_deg - self.tth_ref_deg) * (math.pi / 360.0) / self._tan_ref

    def tth_from_strain(self, eps):
        """Inverse of :meth:`strain_from_tth`: the 2theta (deg) where a lattice of strain ``eps`` diffracts."""
        return self.tth_ref_deg - eps * self._tan_ref * (360.0 / math.pi)

    @property
    def _tan_ref(self) -> float:
        return math.tan(math.radians(self.tth_ref_deg / 2.0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DfxrmGeometry":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class ImagingGeometry:
    """What a 3D DF-XRM reconstruction needs of the imaging: 2theta, the pixel, the image size
    (:class:`bp_plugin.dfxrm.layers.LayerGeometry`, :class:`bp_plugin.dfxrm.topotomo.TopoGeometry`).

    Attributes:
        tth_deg: 2theta of the imaged reflection (deg).
        pixel_size_m: the image pixel in the sample plane (m).
        frame_shape: the image (rows, cols).
    """

    tth_deg: float
    pixel_size_m: float
    frame_shape: tuple[int, int]

    #: how an error message names the geometry
    what = "imaging geometry"

    def __post_init__(self):
        if not 0 < self.tth_deg < 180:
            raise ValueError(f"{self.what}: 2theta {self.tth_deg} deg must be in (0, 180)")
        if not self.pixel_size_m > 0:
            raise ValueError(f"{self.what}: pixel_size_m {self.pixel_size_m} must be positive")
