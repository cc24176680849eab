"""lowbit: run extremely low-bit LLMs on ordinary CPUs."""

__version__ = "0.1.0"
