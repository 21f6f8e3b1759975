"""chatbot-api: a self-hosted chatbot API that speaks the OpenAI Chat Completions protocol."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("chatbot-api")
except PackageNotFoundError:  # pragma: no cover - only when run from a source tree never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
