"""The format's own errors: every problem with a file raises a subclass of FormatError whose
message is one line naming the file, tensor or field at fault."""


class FormatError(Exception):
    """Base class of everything the reader, writer and encodings raise for bad input."""


class TruncatedFile(FormatError):
    pass


class BadMagic(FormatError):
    pass


class UnsupportedVersion(FormatError):
    pass


class HeaderTooLarge(FormatError):
    pass


class InvalidHeader(FormatError):
    pass


class InvalidOffset(FormatError):
    pass


class OverlappingRecords(FormatError):
    pass


class ChecksumMismatch(FormatError):
    pass


class UnknownEncoding(FormatError):
    pass


class InvalidTensor(FormatError):
    """A tensor's params, parts, dtypes or shapes do not match its encoding."""


class WriteError(FormatError):
    """The file cannot be written (disk full, permissions, another writer holds the target)."""
