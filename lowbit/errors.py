"""lowbit's own errors (defined in `lowbit.runtime.errors`, re-exported here so that every
`from lowbit.errors import ...` keeps working)."""

from lowbit.runtime.errors import ConversionError, InvalidModel, LowbitError, UnsupportedModel

__all__ = ["ConversionError", "InvalidModel", "LowbitError", "UnsupportedModel"]
