"""Numbers fixed by SPEC.md: magic, version, alignment, limits and part dtypes."""

import numpy as np

MAGIC = b"\x89LOWBIT\n"
VERSION_MAJOR = 1
VERSION_MINOR = 0
PREFIX_SIZE = 32
PREFIX_FORMAT = "<8sHHIQQ"  # magic, major, minor, header crc32, header_len, data_offset
ALIGNMENT = 64
MAX_HEADER_BYTES = 64 * 1024 * 1024

# dtype names used in the header -> numpy dtypes (always little-endian)
DTYPES: dict[str, np.dtype] = {
    "u8": np.dtype("<u1"),
    "i8": np.dtype("<i1"),
    "u16": np.dtype("<u2"),
    "i16": np.dtype("<i2"),
    "u32": np.dtype("<u4"),
    "i32": np.dtype("<i4"),
    "f16": np.dtype("<f2"),
    "f32": np.dtype("<f4"),
}
DTYPE_NAMES = {dt: name for name, dt in DTYPES.items()}


def align(n: int, alignment: int = ALIGNMENT) -> int:
    """Round n up to a multiple of alignment."""
    return -(-n // alignment) * alignment


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
