"""Exact per-pixel moments of DF-XRM scans, accumulated frame by frame (no stack held in memory).

For a scan over angles ``x = (x_1, ..., x_n)`` (phi, chi, 2theta, in deg) every pixel's moments are
sums over frames ``k`` of ``I_k * m(x_k - c)`` with monomials ``m``: ``1``, ``u_a``, ``u_a u_b``
(and ``u_a^3``, ``u_a^4`` at order 4), taken about a fixed centre ``c`` (the scan centre) so that the
variances do not suffer from cancellation. The sums do not depend on the order frames arrive in, so
the live maps after the last frame equal the batch maps of the recorded scan.

Speed: frames are buffered (``batch`` frames, float32) and folded into the float64 sums with one
matrix product ``coeffs (P, B) @ frames (B, pixels)``: one pass over each frame instead of one pass
per moment (benchmarks/bench_dfxrm.py).
"""
from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np


def monomials(n_axes: int, order: int = 2) -> list[tuple[int, ...]]:
    """Exponent tuples of the accumulated monomials: ``()`` is the count, ``(a,)`` is ``u_a``,
    ``(a, b)`` is ``u_a u_b``, ``(a, a, a)`` / ``(a, a, a, a)`` the 3rd / 4th powers (order 4)."""
    if order not in (2, 4):
        raise ValueError(f"order must be 2 (mean and covariance) or 4 (plus skewness and kurtosis), got {order}")
    rows: list[tuple[int, ...]] = [()]
    rows += [(a,) for a in range(n_axes)]
    rows += list(combinations_with_replacement(range(n_axes), 2))
    if order == 4:
        rows += [(a,) * 3 for a in range(n_axes)] + [(a,) * 4 for a in range(n_axes)]
    return rows


class MomentAccumulator:
    """Running sums of ``I * monomial(angles - centre)`` per pixel.

    Args:
        shape: frame shape ``(rows, cols)``.
        axes: names of the scanned angles, e.g. ``("phi", "chi")`` or ``("phi", "chi", "tth")``.
        centre_deg: the centre ``c`` the monomials are taken about (deg), one per axis; None: the
            angles of the first frame added (any value near the scan gives exact sums; a centre far
            from the scan, e.g. 0 for a 2theta of 20 deg, would lose the widths to cancellation).
        order: 2 (counts, centre of mass, covariance) or 4 (plus 3rd and 4th powers per axis).
        background: counts per pixel subtracted from every frame (scalar or ``(rows, cols)`` dark
            image).
        floor: after the subtraction, values below ``floor`` counts are set to 0: the background's
            photon noise in the far tails of the scan would otherwise dominate the second moments
            (it is weighted by ``u^2``). A per-frame operation, so the sums stay order-independent.
            With a floor the per-pixel maximum of the frames is kept too (``peak``): the maps use it
            to undo the truncation of the rocking curve's tails (``maps.truncation_factor``).
        batch: frames buffered before they are folded into the sums.
        xp: array module (NumPy or CuPy).
    """

    def __init__(self, shape, axes, centre_deg=None, *, order: int = 2, background=0.0, floor: float = 0.0,
                 batch: int = 32, xp=np):
        self.shape = tuple(int(v) for v in shape)
        self.axes = tuple(axes)
        if not self.axes:
            raise ValueError("a DF-XRM scan needs at least one scanned angle (phi, chi or tth)")
        n = len(self.axes)
        self.centre = None if centre_deg is None else np.asarray(centre_deg, float).reshape(n)
        self.order = order
        self.rows = monomials(n, order)
        self.xp = xp
        npix = self.shape[0] * self.shape[1]
        self.sums = xp.zeros((len(self.rows), npix), np.float64)
        self._buf = xp.empty((int(batch), npix), np.float32)
        self._coef = np.zeros((len(self.rows), int(batch)), np.float32)
        self._k = 0
        self._prod = None
        self.n_frames = 0
        bg = np.asarray(background, np.float32)
        if bg.ndim not in (0, 2) or (bg.ndim == 2 and bg.shape != self.shape):
            raise ValueError(f"background must be a number or a {self.shape} image, got shape {bg.shape}")
        self._bg = None if not bg.any() else xp.asarray(bg.reshape(-1) if bg.ndim else bg)
        self.floor = float(floor)
        if not (np.isfinite(self.floor) and self.floor >= 0):
            raise ValueError(f"floor must be a finite number of counts >= 0, got {floor!r}")
        self.peak = xp.zeros(npix, np.float32) if self.floor > 0 else None

    def _monomial_values(self, u: np.ndarray) -> np.ndarray:
        return np.array([np.prod(u[list(r)]) if r else 1.0 for r in self.rows])

    def add(self, frame, angles_deg) -> None:
        """Add one frame ``(rows, cols)`` measured at ``angles_deg`` (one per axis, deg)."""
        if tuple(frame.shape) != self.shape:
            raise ValueError(f"frame of shape {tuple(frame.shape)}; this scan's frames are {self.shape}")
        a = np.asarray(angles_deg, float).reshape(-1)
        if a.size != len(self.axes) or not np.all(np.isfinite(a)):
            raise ValueError(f"angles {angles_deg!r} must be {len(self.axes)} finite numbers ({', '.join(self.axes)})")
        if self.centre is None:
            self.centre = a.copy()
        row, src = self._buf[self._k], self.xp.asarray(frame).reshape(-1)
        if self.xp is np:
            # chunks that stay in the CPU cache: cast, background, floor and peak in one trip to memory
            for s in range(0, row.size, self.CHUNK):
                self._prepare(row[s:s + self.CHUNK], src[s:s + self.CHUNK], slice(s, s + self.CHUNK))
        else:
            self._prepare(row, src, slice(None))
        self._coef[:, self._k] = self._monomial_values(a - self.centre)
        self._k += 1
        self.n_frames += 1
        if self._k == len(self._buf):
            self.flush()

    CHUNK = 1 << 17                  # pixels per chunk of add (NumPy): 2048² bg+floor 11.4 -> 8.8 ms/frame

    def _prepare(self, row, src, sl) -> None:
        """``row = max(src - background, 0 if below the floor)`` as float32, the peak updated."""
        xp = self.xp
        row[...] = src                                       # the cast to float32 happens in the copy
        if self._bg is not None:
            xp.subtract(row, self._bg if self._bg.ndim == 0 else self._bg[sl], out=row)
        if self.floor > 0:
            xp.multiply(row, row >= self.floor, out=row)
            xp.maximum(self.peak[sl], row, out=self.peak[sl])

    def add_many(self, frames, angles_deg) -> None:
        """Add a stack ``(n, rows, cols)`` with its angles ``(n, n_axes)``."""
        for f, a in zip(frames, np.asarray(angles_deg, float).reshape(len(frames), -1)):
            self.add(f, a)

    def flush(self) -> None:
        """Fold the buffered frames into the sums (done automatically; call before reading)."""
        k = self._k
        if k == 0:
            return
        coef = self.xp.asarray(self._coef[:, :k])
        if self._prod is None:
            self._prod = self.xp.empty(self.sums.shape, np.float32)
        self.xp.matmul(coef, self._buf[:k], out=self._prod)
        self.sums += self._prod                               # float32 products, float64 running sums
        self._k = 0

    def moment(self, exponents: tuple[int, ...]):
        """The flushed sum for one monomial, ``(rows, cols)`` float64 (e.g. ``()`` = total counts)."""
        self.flush()
        key = tuple(sorted(exponents))
        return self.sums[self.rows.index(key)].reshape(self.shape)

    # --- checkpoint -----------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue later (host arrays and plain values)."""
        self.flush()
        def to_np(a):                     # copies: the caller may write them while frames keep coming
            return None if a is None else np.array(a.get() if hasattr(a, "get") else a, copy=True)
        return {"sums": to_np(self.sums), "peak": to_np(self.peak), "n_frames": self.n_frames,
                "axes": list(self.axes), "centre_deg": None if self.centre is None else self.centre.tolist(),
                "order": self.order, "shape": list(self.shape), "floor": self.floor}

    def load_state(self, state: dict) -> None:
        """Continue from :meth:`state` of the same scan (sums, peak, frame count, centre)."""
        if tuple(int(v) for v in np.asarray(state["shape"]).reshape(-1)) != self.shape or \
                int(state["order"]) != self.order or np.asarray(state["sums"]).shape != tuple(self.sums.shape):
            raise ValueError("the saved moments belong to another scan (shape, order or axes differ)")
        self.reset()
        self.sums[...] = self.xp.asarray(state["sums"])
        if self.peak is not None and state.get("peak") is not None:
            self.peak[...] = self.xp.asarray(state["peak"])
        c = state.get("centre_deg")
        self.centre = None if c is None or np.asarray(c).size == 0 else np.asarray(c, float).reshape(len(self.axes))
        self.n_frames = int(state["n_frames"])

    def reset(self) -> None:
        """Forget every frame (the centre stays if it was given)."""
        self.sums[...] = 0
        if self.peak is not None:
            self.peak[...] = 0
        self._k = 0
        self.n_frames = 0

    def copy(self) -> "MomentAccumulator":
        """A flushed snapshot (sums and peak copied), to compute maps from while frames keep coming."""
        self.flush()
        new = object.__new__(MomentAccumulator)
        new.__dict__.update(self.__dict__)
        new.sums = self.sums.copy()
        new.peak = None if self.peak is None else self.peak.copy()
        new.centre = None if self.centre is None else self.centre.copy()
        new._buf = self._buf[:0]          # a snapshot takes no frames
        new._k, new._prod = 0, None
        return new

    def merge(self, other: "MomentAccumulator") -> None:
        """Add another accumulator's sums (same axes, centre and order), e.g. frames recovered later."""
        if other.n_frames == 0:
            return
        same_centre = self.centre is None or np.allclose(other.centre, self.centre, rtol=0.0, atol=1e-9)
        if (other.axes, other.order, other.shape, other.floor) != (self.axes, self.order, self.shape, self.floor) or \
                not same_centre:
            raise ValueError("accumulators of different scans cannot be merged")
        if self.centre is None:
            self.centre = other.centre.copy()
        self.flush()
        other.flush()
        self.sums += self.xp.asarray(other.sums)
        if self.peak is not None:
            self.xp.maximum(self.peak, self.xp.asarray(other.peak), out=self.peak)
        self.n_frames += other.n_frames
