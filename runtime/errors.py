"""lowbit's own errors. The CLI prints their message as one line and exits 1; anything else
keeps its traceback, because it is a bug.

They live in the runtime (the bottom layer that raises them) so that `lowbit.runtime` never
imports from `lowbit`; `lowbit.errors` re-exports them.
"""


class LowbitError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""


class UnsupportedModel(LowbitError):
    """The checkpoint's architecture or layout is not one lowbit can convert or run."""


class ConversionError(LowbitError):
    """The checkpoint cannot be converted as asked (bad tensor, existing output, ...)."""


class InvalidModel(LowbitError, ValueError):
    """A model's config and tensors disagree, or a config value is out of range or of the wrong
    type: the file is refused before any kernel reads it (`runtime.validate`)."""
