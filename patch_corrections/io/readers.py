"""What every volume format's reader shares: header information, the reader protocol, and
the checks of damaged or foreign files.

Every array here is ``(z, y, x)``; the format modules convert to and from their files'
order.
"""

from __future__ import annotations

import bz2
import gzip
import io
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import InputError, warn
from .geometry import Geometry, Index3, axes_listed

READ_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # UnicodeDecodeError among them
    OSError,  # gzip.BadGzipFile among them
    EOFError,
    zlib.error,
    struct.error,
    ArithmeticError,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,
    StopIteration,
)
"""What the format libraries raise on a damaged or foreign file (each adds its own)."""

_CHUNK = 1 << 20

_REASON_LIMIT = 120
"""The most characters of a library's message that an error repeats."""
_QUOTE_LIMIT = 60
"""The most characters of a value read from a file that a message quotes (but a path)."""
PATH_LIMIT = 400
"""The most characters of a path read from a file that a message quotes."""
_BYTES = re.compile(r"""(\s*\()?(?<!\w)b(['"])(?:\\.|(?!\2).)*\2(?(1)\))""")
"""A bytes literal in a message (``b'\\x1f'``, or ``(b'\\x1f')``): bytes of the file."""
_QUOTED = re.compile(r"""(?<!\w)(['"])(.*?)\1(?!\w)""")
"""A quoted value in a message (``'abc'``), not an apostrophe inside a word."""
_SHORT_VALUE = re.compile(r"[\w.+-]{1,16}")
"""A quoted value kept in a message: one short word or number (a mode, a codec)."""
_ALIGNED = 1e-5
"""Off-diagonal steps up to this fraction of an axis's step count as axis-aligned (noise
from float32 headers)."""


@dataclass(frozen=True)
class VolumeInfo:
    """What a volume file's header says.

    ``shape`` is ``(z, y, x)``. ``geometry`` is ``None`` when the file carries no spacing
    (an MRC voxel size of 0, an NRRD without ``space directions`` or ``spacings``).
    """

    path: Path
    shape: Index3
    dtype: np.dtype
    geometry: Geometry | None


class VolumeReader(Protocol):
    """A volume opened for reading blocks of it, without loading it whole."""

    info: VolumeInfo

    def read_block(self, start: Index3, stop: Index3) -> np.ndarray:
        """Return the in-bounds block ``[start, stop)``, ``(z, y, x)``, as a new array."""
        ...

    def close(self) -> None: ...


class ArrayReader:
    """A reader over an array already read (NRRD) or a lazy array proxy (NIfTI).

    ``data`` is indexed ``(z, y, x)``; a format whose array is in another order overrides
    ``_read``.
    """

    def __init__(self, info: VolumeInfo, data: Any):
        self.info = info
        self._data = data

    read_errors: tuple[type[Exception], ...] = (ValueError, OSError, EOFError, zlib.error)
    """What a damaged file raises only when its data is read (nibabel and zarr read
    lazily); a format's reader may name more."""

    def read_block(self, start: Index3, stop: Index3) -> np.ndarray:
        try:
            return self._read(start, stop)
        except self.read_errors as exc:
            raise InputError(f"{self.info.path}: cannot read its data ({reason(exc)})") from None

    def _read(self, start: Index3, stop: Index3) -> np.ndarray:
        (z0, y0, x0), (z1, y1, x1) = start, stop
        return np.array(self._data[z0:z1, y0:y1, x0:x1])

    def close(self) -> None:
        self._data = None


def orthogonal_planes(
    reader: VolumeReader, centre: Index3, low: Index3, high: Index3
) -> list[np.ndarray]:
    """The x-y, x-z and y-z planes through ``centre`` ``(z, y, x)`` of ``reader``'s volume,
    within ``[low, high)``: ``(y, x)``, ``(z, x)``, ``(z, y)``."""
    cz, cy, cx = centre
    (z0, y0, x0), (z1, y1, x1) = low, high
    return [
        reader.read_block((cz, y0, x0), (cz + 1, y1, x1))[0],
        reader.read_block((z0, cy, x0), (z1, cy + 1, x1))[:, 0],
        reader.read_block((z0, y0, cx), (z1, y1, cx + 1))[:, :, 0],
    ]


def basic_dtype(dtype: npt.DTypeLike) -> np.dtype:
    """``dtype`` as formats without bool or float16 store it (NRRD by pynrrd, NIfTI by nibabel).

    bool becomes uint8 and float16 becomes float32; every other dtype is kept.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def as_3d(path: Path, shape: tuple[int, ...]) -> Index3:
    """Drop singleton axes beyond three (MITK and others save 4D with one channel).

    Raises
    ------
    InputError
        If ``shape`` does not come down to three axes; the message names ``path``.
    """
    dims = list(shape)
    while len(dims) > 3 and 1 in dims:
        dims.remove(1)
    if len(dims) != 3:
        raise InputError(f"{path}: expected a 3D volume, found shape {tuple(shape)}")
    if min(dims) < 1:
        raise InputError(
            f"{path}: the header declares shape {tuple(shape)}; every axis needs a voxel or more"
        )
    return (dims[0], dims[1], dims[2])


def reason(exc: BaseException) -> str:
    """A library's message for ``exc``: one short printable line that quotes no file.

    Libraries quote what they read (gzip its first bytes, parsers a header's value), and a
    file named by another may be anything; so bytes are dropped, quoted values longer than
    one short word are elided, other unprintable characters become ``?`` and the whole is
    cut to a few words. Its type name when nothing is left.
    """
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror  # without the file name: every message names its file already
    else:
        text = str(exc)
    text = _BYTES.sub(lambda m: "" if m[1] else "…", " ".join(text.split()))
    text = _QUOTED.sub(lambda m: m[0] if _SHORT_VALUE.fullmatch(m[2]) else "'…'", text)
    return _printable(text, _REASON_LIMIT) or type(exc).__name__


def quoted(value: object, limit: int = _QUOTE_LIMIT) -> str:
    """``value`` (text read from a file) quoted for a message: printable, at most ``limit``
    characters."""
    return repr(_printable(str(value), limit))


def _printable(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def warn_unless_axis_aligned(
    path: Path, steps: Sequence[np.ndarray] | np.ndarray, source: str
) -> None:
    """Warn that ``path``'s orientation is dropped unless its axes are axis-aligned.

    ``steps`` holds three rows of three: row ``i`` is the step in space of one voxel along
    axis ``i``, ``x`` first (an NRRD's ``space directions``; a NIfTI affine's columns).
    Geometry keeps only each step's length and the origin, so a rotation, shear or axis
    swap (steps off the diagonal) or a flip (a negative step) is lost; ``source`` names the
    header field.
    """
    if len(steps) != 3 or any(np.shape(step) != (3,) for step in steps):
        return  # not three axes in a 3D space: nothing to compare
    matrix = np.asarray(steps, float)
    if not np.all(np.isfinite(matrix)):
        return
    lengths = np.linalg.norm(matrix, axis=1)
    off_diagonal = np.abs(matrix - np.diag(np.diag(matrix)))
    if np.any(off_diagonal > _ALIGNED * lengths[:, None]):
        what, dropped = "its axes are rotated or sheared in space", "rotation"
    elif np.any(np.diag(matrix) < 0):
        flipped = [axis for axis, step in zip("xyz", np.diag(matrix)) if step < 0]
        axes = axes_listed(flipped)
        runs = "axis runs" if len(flipped) == 1 else "axes run"
        what, dropped = f"its {axes} {runs} backwards in space", "flip"
    else:
        return
    warn(
        f"{path}: {what} ({source}); the {dropped} is dropped and only the voxel size and "
        "origin are used, so patches overlay it only as an axis-aligned volume"
    )


def decompressed_size(path: Path, stream: IO[bytes], encoding: str = "gzip") -> int:
    """Read a gzip or bzip2 stream to its end, verifying it; the bytes it decompresses to.

    nibabel stops reading where the data it needs ends, before the checksums, and pynrrd
    takes a stream that lacks them; so damaged data can be read without error. Read to the
    end here, every gzip member's CRC-32 and length and every bzip2 block's CRC are
    checked. ``stream`` is read from its current position; memory stays at one chunk.

    Raises
    ------
    InputError
        If the stream is cut short or fails a check; the message names ``path``.
    """
    buffer = memoryview(bytearray(_CHUNK))
    total = 0
    try:
        with _decompressing(stream, encoding) as decompressed:
            while count := decompressed.readinto(buffer):
                total += count
    except EOFError:
        message = f"its {encoding} data ends early; the file is truncated"
        raise InputError(f"{path}: {message}") from None
    except (OSError, zlib.error) as exc:
        text = reason(exc)
        if text.startswith("CRC check failed"):
            text = "CRC check failed"
        elif text.startswith("Incorrect length"):
            text = "length check failed"
        message = f"corrupt {encoding} data ({text}); the file is damaged"
        raise InputError(f"{path}: {message}") from None
    return total


def _decompressing(stream: IO[bytes], encoding: str) -> io.BufferedIOBase:
    if encoding == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    return bz2.BZ2File(stream, "rb")
