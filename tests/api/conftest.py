"""API test set-up: import Starlette's TestClient once, without its httpx deprecation warning.

Starlette warns at import time when ``httpx2`` is not installed (pytest turns warnings into
errors). The warning concerns the test client's transport only, so it is silenced here, once,
before the test modules import ``fastapi.testclient``.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    import fastapi.testclient  # noqa: F401
