"""Allow ``python -m chatbot_api``."""

from chatbot_api.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through the console script in tests
    raise SystemExit(main())
