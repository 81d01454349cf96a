"""The console's routes: each area's module lists its own (`ROUTES`), and `install` adds them all, with the
static files (htmx, the style sheet) served from package data under `/console/static/`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from byoi.console import admin, domains, home, images, sessions, versions
from byoi.console.pages import STATIC, Route

AREAS = (home, images, versions, domains, sessions, admin)


def routes() -> list[Route]:
    return [route for area in AREAS for route in area.ROUTES] + home.CATCH_ALL


def install(app: FastAPI, state: dict[str, Any]) -> None:
    """Add the console to `app`; `state` is filled by the app's lifespan (services, dispatcher)."""
    app.state.byoi_state = state
    app.mount(STATIC, StaticFiles(packages=[("byoi.console", "static")]), name="console-static")
    for path, method, endpoint in routes():
        app.router.add_route(path, endpoint, methods=[method], include_in_schema=False)
