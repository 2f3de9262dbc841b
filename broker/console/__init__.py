"""The web console: HTML pages over the JSON API, in French and English, no CDN, no build step.

Served by the API application (``broker.api.create_app`` includes the routers, behind the page
guard, and serves ``static/``); the pages' scripts fetch the API with the session the login page
opens (:mod:`broker.access`).
"""

from broker.console.routes import LOGIN, PAGES, STATIC, login_redirect, pages, path_of, public

__all__ = ["LOGIN", "PAGES", "STATIC", "login_redirect", "pages", "path_of", "public"]
