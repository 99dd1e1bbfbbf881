"""A pydicom decoder plugin for 12-bit JPEG Extended (1.2.840.10008.1.2.4.51), on imagecodecs.

Old CT and MR archives hold much 12-bit lossy JPEG. Among pydicom's own plugins only
pylibjpeg-libjpeg decodes it, and that is GPL-3.0; GDCM's wheel is built without 12-bit
libjpeg ("Unsupported JPEG data precision 12") and Pillow reads 8 bits only. imagecodecs
(BSD-3-Clause) wraps libjpeg-turbo 3, which decodes 12-bit sequential JPEG; on pydicom's
shipped JPGExtended.dcm it agrees with pylibjpeg-libjpeg to within one grey level (the
IDCT's rounding).

The module follows pydicom's plugin contract (`is_available`, `DECODER_DEPENDENCIES`, a
function from one frame's bytes to decoded bytes) and is registered by `register()`.
"""

from __future__ import annotations

import contextlib

from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import JPEGExtended12Bit

__all__ = ["PLUGIN", "register"]

PLUGIN = "imagecodecs"
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("imagecodecs>=2024.1",)}


def is_available(uid: str) -> bool:
    """True for JPEG Extended when imagecodecs and its libjpeg-turbo codec are installed."""
    if uid != JPEGExtended12Bit:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available)


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One JPEG codestream to little-endian samples: 8-bit data in bytes, 12-bit in 16-bit words."""
    import imagecodecs

    array = imagecodecs.jpeg8_decode(src)
    runner.set_option("bits_allocated", 16 if array.dtype.itemsize == 2 else 8)
    if array.ndim == 3:  # libjpeg-turbo converts YCbCr to interleaved RGB itself
        runner.set_option("planar_configuration", 0)
        runner.set_option("photometric_interpretation", "RGB")
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder, once per process."""
    with contextlib.suppress(ValueError):  # pydicom's words for a plugin already added
        get_decoder(JPEGExtended12Bit).add_plugin(PLUGIN, (__name__, "decode_frame"))
