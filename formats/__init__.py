"""The `.lowbit` file format: one packed, memory-mappable file per model (see SPEC.md)."""

from lowbit.formats.constants import ALIGNMENT, MAGIC, VERSION_MAJOR, VERSION_MINOR
from lowbit.formats.encodings import ENCODINGS, EncodedTensor, get_encoding
from lowbit.formats.errors import FormatError
from lowbit.formats.reader import LowbitReader, TensorEntry
from lowbit.formats.writer import LowbitWriter

__all__ = [
    "ALIGNMENT",
    "ENCODINGS",
    "MAGIC",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "EncodedTensor",
    "FormatError",
    "LowbitReader",
    "LowbitWriter",
    "TensorEntry",
    "get_encoding",
]
