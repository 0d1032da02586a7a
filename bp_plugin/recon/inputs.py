"""What the engine accepts: the scan's arrays checked once, with the fix in the message."""
from __future__ import annotations

import numpy as np

from ..geometry import ExperimentGeometry


def check_scan_arrays(geometry: ExperimentGeometry, frames, translations_m, mask) -> np.ndarray:
    """``frames`` as an array ``(n_angles, n_positions, N1, N2)`` after checking it and ``mask``
    ``(N1, N2)`` against the geometry and the ``(n_positions, 3)`` translations; a ValueError that
    names the problem otherwise (no array is copied)."""
    frames = np.asarray(frames)
    crop = tuple(geometry.crop)
    want = (geometry.n_angles, len(translations_m)) + crop
    if frames.shape != want:
        raise ValueError(f"frames must be (n_angles, n_positions, N1, N2) = {want}, got {frames.shape}")
    if np.shape(mask) != crop:
        raise ValueError(f"mask must be (N1, N2) = {crop}, the frames' shape, got {np.shape(mask)}")
    if not np.isfinite(frames).all() or (frames < 0).any():
        raise ValueError("frames hold NaN, infinite or negative values: fix or mask them before reconstructing")
    return frames
