"""The browser doors: server-rendered pages (Jinja2 templates in `templates/`, package data). `auth` serves
sign-in under `/auth/`; the console and the session proxy build on its `browser_principal`."""
