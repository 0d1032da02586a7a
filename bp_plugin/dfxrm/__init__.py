"""Dark-field x-ray microscopy (DF-XRM): geometry, exact running moments, maps, Nye tensor (arrays only).

Like the ptychography engine, this package never imports bluesky, ZeroMQ or Tiled: it takes frames
and motor positions and returns maps. docs/dfxrm.md states every convention.
"""
from .geometry import DfxrmGeometry
from .maps import MapOptions, compute_maps, nye_components
from .moments import MomentAccumulator

__all__ = ["DfxrmGeometry", "MapOptions", "MomentAccumulator", "compute_maps", "nye_components"]
