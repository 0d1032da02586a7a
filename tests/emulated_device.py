"""An emulated GPU for CPU-only machines: NumPy arrays behind a wall, with CuPy's rules at the wall.

CI has no GPU, yet the engine must not mix host and device arrays (an ``np.asarray`` of a device
array fails on CuPy) nor synchronise the host inside its position loop (a ``float()`` of a device
scalar waits for the GPU each time). This backend makes both visible on a CPU:

- :class:`DeviceArray` wraps an ``ndarray``; ``np.asarray(d)`` raises ``TypeError`` as CuPy does,
  NumPy functions and ufuncs accept device arrays and scalars but refuse host arrays mixed in,
  and reductions return 0-d device arrays (CuPy does not hand back host scalars);
- every conversion to a host value (``float``, ``int``, ``bool``, ``.item()``, ``.get()``) is a
  *sync* and every host array taken onto the device (``xp.asarray(host)``, a host index array) is
  an *upload*; :data:`COUNTS` tallies both, so a test can assert they do not grow with positions.

Only what the project's array code uses is emulated; a missing piece fails loudly (AttributeError),
which is the point. Results are NumPy's, bit for bit.
"""
from __future__ import annotations

import collections
import types

import numpy as np
import numpy.lib.mixins
import scipy.fft
import scipy.sparse

from bp_plugin.backend import Backend

#: ``{"sync": n, "upload": n}`` since the last :func:`reset_counts`
COUNTS: collections.Counter = collections.Counter()


def reset_counts() -> None:
    COUNTS.clear()


def _is_host_array(x) -> bool:
    return isinstance(x, np.ndarray)


def _unwrap(x, *, allow_host: bool, what: str):
    """The ndarray behind ``x`` (recursively in lists and tuples); host arrays refused unless allowed."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, allow_host=allow_host, what=what) for v in x)
    if _is_host_array(x) and not allow_host:
        raise TypeError(f"{what}: a host numpy array mixed with device arrays (CuPy refuses this); "
                        f"take it to the device once with xp.asarray")
    return x


def _wrap(x):
    if isinstance(x, (np.ndarray, np.generic)) and not isinstance(x, DeviceArray):
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class DeviceArray(numpy.lib.mixins.NDArrayOperatorsMixin):
    """A device array: an ndarray that cannot leave the device without being counted."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        self._a = a

    # --- the wall ---------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (emulated device array): "
                        "use backend.asnumpy() once, outside the loop")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        args = _unwrap(inputs, allow_host=False, what=f"numpy.{ufunc.__name__}")
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _unwrap(out, allow_host=False, what=f"numpy.{ufunc.__name__}(out=)")
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:                               # in place: hand back the caller's array
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        args = _unwrap(args, allow_host=False, what=f"numpy.{func.__name__}")
        kwargs = {k: _unwrap(v, allow_host=False, what=f"numpy.{func.__name__}") for k, v in kwargs.items()}
        return _wrap(func(*args, **kwargs))

    def _sync(self):
        COUNTS["sync"] += 1
        return self._a

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __index__(self):
        return int(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def __complex__(self):
        return complex(self._sync())

    def item(self):
        return self._sync().item()

    def tolist(self):
        return self._sync().tolist()

    def get(self):
        """Explicit copy to the host (CuPy's ``.get()``)."""
        return np.array(self._sync())

    # --- array protocol ---------------------------------------------------------------------
    def __getitem__(self, key):
        if isinstance(key, np.ndarray) or (isinstance(key, tuple) and any(isinstance(k, np.ndarray) for k in key)):
            COUNTS["upload"] += 1                         # CuPy copies a host index array over
        return _wrap(self._a[_unwrap(key, allow_host=True, what="indexing")])

    def __setitem__(self, key, value):
        if isinstance(key, np.ndarray) or (isinstance(key, tuple) and any(isinstance(k, np.ndarray) for k in key)):
            COUNTS["upload"] += 1
        self._a[_unwrap(key, allow_host=True, what="indexing")] = _unwrap(value, allow_host=False,
                                                                          what="assignment")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    @property
    def real(self):
        return DeviceArray(self._a.real)

    @property
    def imag(self):
        return DeviceArray(self._a.imag)

    @property
    def T(self):
        return DeviceArray(self._a.T)

    def __getattr__(self, name):
        if name.startswith("__"):               # __array_interface__ & co would let NumPy through the wall
            raise AttributeError(name)
        attr = getattr(self._a, name)           # shape, dtype, astype, sum, max, reshape, copy, ...
        if not callable(attr):
            return attr

        def method(*args, **kwargs):
            args = _unwrap(args, allow_host=False, what=f"ndarray.{name}")
            kwargs = {k: _unwrap(v, allow_host=False, what=f"ndarray.{name}") for k, v in kwargs.items()}
            return _wrap(attr(*args, **kwargs))
        return method


_CREATION = {"asarray", "array", "ascontiguousarray", "asanyarray"}
_FACTORIES = {"zeros", "ones", "empty", "full", "arange", "linspace", "eye"}


class _Namespace(types.ModuleType):
    """``xp`` of the emulated device: NumPy's functions, device arrays in and out."""

    def __init__(self, name: str, source):
        super().__init__(name)
        self._source = source

    def __getattr__(self, name):
        attr = getattr(self._source, name)
        if isinstance(attr, type) or not callable(attr):
            return attr                                   # dtypes (xp.float32), constants (xp.pi)

        def function(*args, **kwargs):
            if name in _CREATION:
                src = args[0] if args else kwargs.get("a")
                if not isinstance(src, DeviceArray):
                    COUNTS["upload"] += 1
                    args = (np.array(src, copy=True),) + args[1:] if args else args
            host_ok = name in _CREATION or name in _FACTORIES
            args = _unwrap(args, allow_host=host_ok, what=f"xp.{name}")
            kwargs = {k: _unwrap(v, allow_host=host_ok, what=f"xp.{name}") for k, v in kwargs.items()}
            return _wrap(attr(*args, **kwargs))
        return function


class _Sparse:
    """A CSR matrix on the emulated device (``@`` with device arrays only)."""

    def __init__(self, m):
        self._m = scipy.sparse.csr_matrix(m)

    def __matmul__(self, other):
        return _wrap(np.asarray(self._m @ _unwrap(other, allow_host=False, what="sparse @")))


def emulated_backend(workers: int | None = None) -> Backend:
    """A :class:`Backend` with NumPy's results and CuPy's rules (device name ``"emulated"``)."""
    return Backend(xp=_Namespace("emulated_xp", np), fft=_Namespace("emulated_fft", scipy.fft),
                   device="emulated", workers=workers, sparse=_Sparse)
