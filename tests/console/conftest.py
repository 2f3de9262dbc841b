"""Console test set-up: Starlette's TestClient imported once without its httpx warning."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    import fastapi.testclient  # noqa: F401
