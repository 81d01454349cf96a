"""Console area: sessions (to be filled in)."""

from __future__ import annotations

from byoi.console.pages import Route

ROUTES: list[Route] = []
