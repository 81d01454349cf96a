"""`/console/`: where the console starts. An administrator sees the areas they manage; a user sees their
domain, the images attached for them and the way to RStudio."""

from __future__ import annotations

from starlette.responses import Response

from byoi.auth.browser import LAUNCHER_PAGE
from byoi.console.pages import PREFIX, Page, Route, error_page, page_route


async def home(page: Page) -> Response:
    me = page.principal
    if me.is_admin:
        return page.render("home.html", domain=None, effective=[])
    mine = {"DomainId": me.domain_id, "UserProfileName": me.user_profile_name}
    domain = await page.call("DescribeDomain", {"DomainId": me.domain_id})
    effective = await page.ext("ListEffectiveImages", mine)
    return page.render(
        "home.html", domain=domain, effective=effective.get("EffectiveImages", []), launcher=LAUNCHER_PAGE
    )


async def slash(page: Page) -> Response:
    return page.redirect(PREFIX + "/")


async def not_found(page: Page) -> Response:
    """Any other path under /console/: a 404 page, after sign-in (what exists is not told to strangers)."""
    return error_page(404, "Not found", "There is no console page at this address.", page.principal)


# Added after every area's routes (byoi.console.routes), so it only answers what none of them does.
CATCH_ALL: list[Route] = [(PREFIX + "/{rest:path}", method, page_route(not_found)) for method in ("GET", "POST")]

ROUTES: list[Route] = [
    (PREFIX + "/", "GET", page_route(home)),
    (PREFIX, "GET", page_route(slash)),
]
