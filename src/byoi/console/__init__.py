"""The console: server-rendered pages under `/console/` (Jinja2, htmx for the live parts), a door of its own.

A page is signed in with the browser sign-in (`byoi.web.auth`), reads and changes everything through
`Dispatcher.dispatch` as the browser's principal, and holds no access rule: what a person may see or do is
decided by the same policy as the API (`byoi.auth.policy`). The shared machinery (sign-in, CSRF, rendering,
errors in words) is `byoi.console.pages`; each area of the console is one module with its `ROUTES`, gathered
by `byoi.console.routes.install`.
"""
