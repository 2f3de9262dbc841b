"""The web console: HTML pages over the JSON API, in French and English, no CDN, no build step.

Served by the API application (``broker.api.create_app`` includes the routers and serves
``static/``); each page declares the permission it needs (``PAGE_PERMISSIONS``), and the pages'
scripts fetch the API with the session the login page opens (:mod:`broker.access`).
"""

from broker.console.routes import (
    LOGIN,
    PAGE_PERMISSIONS,
    PAGES,
    STATIC,
    forbidden_page,
    login_redirect,
    pages,
    path_of,
    public,
)

__all__ = [
    "LOGIN",
    "PAGES",
    "PAGE_PERMISSIONS",
    "STATIC",
    "forbidden_page",
    "login_redirect",
    "pages",
    "path_of",
    "public",
]
