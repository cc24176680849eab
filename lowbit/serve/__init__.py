"""`lowbit serve`: an OpenAI-compatible HTTP server (`create_app` returns the ASGI app)."""

from lowbit.serve.app import create_app

__all__ = ["create_app"]
