"""What every volume format's reader shares: header information, the reader protocol, and
the checks of damaged or foreign files.

Every array here is ``(z, y, x)``; the format modules convert to and from their files'
order.
"""

from __future__ import annotations

import bz2
import gzip
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from .geometry import Geometry, Index3

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

    def read_block(self, start: Index3, stop: Index3) -> np.ndarray:
        try:
            return self._read(start, stop)
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            # nibabel reads lazily: a truncated or corrupt file shows up only now.
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
    """A library's message for ``exc`` on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


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
