"""lowbit's own errors. The CLI prints their message as one line and exits 1; anything else
keeps its traceback, because it is a bug."""


class LowbitError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""


class UnsupportedModel(LowbitError):
    """The checkpoint's architecture or layout is not one lowbit can convert or run."""


class ConversionError(LowbitError):
    """The checkpoint cannot be converted as asked (bad tensor, existing output, ...)."""
