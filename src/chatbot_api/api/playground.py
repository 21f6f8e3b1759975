"""The chat playground: one page and its files, served from the installed package.

The page talks to this server's own OpenAI API from the browser, with the key the person
types in; it needs nothing from outside (see ``playground/static/vendor/README.md``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

__all__ = ["PAGE_PATHS", "STATIC_PREFIX", "install_playground"]

#: Where the page is, and where its scripts and styles are.
PAGE_PATHS = ("/", "/playground")
STATIC_PREFIX = "/playground/static"

_HERE = Path(str(files("chatbot_api") / "playground"))

router = APIRouter(include_in_schema=False)


@router.get(PAGE_PATHS[0])
@router.get(PAGE_PATHS[1])
async def page() -> FileResponse:
    return FileResponse(_HERE / "index.html", media_type="text/html; charset=utf-8")


def install_playground(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=_HERE / "static"), name="playground")
