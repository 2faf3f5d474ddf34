"""How long one full cyclic garbage collection holds the GIL (and so the
event loop) in a started server, with and without ``serving.app.serve``'s
``gc.freeze()`` of what was imported before the models load: the App is
started on ``models/`` (ports picked by the OS, 127.0.0.1), then
``gc.collect()`` is timed five times.

    .venv/bin/python -m benchmarks.gc_pause          # both, each in a fresh process
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent


async def _measure(freeze: bool) -> None:
    from serving.app import App
    from serving.settings import ServingSettings

    if freeze:  # as serve() does before it builds the App
        gc.collect()
        gc.freeze()
    settings = ServingSettings(
        model_repository=ROOT / "models", host="127.0.0.1", grpc_port=0, metrics_port=0,
        http_port=0,
    )  # fmt: skip
    app = App(settings)
    await app.start()
    pauses = []
    for _ in range(5):
        start = time.perf_counter()
        gc.collect()
        pauses.append((time.perf_counter() - start) * 1000)
    shown = ", ".join(f"{p:.1f}" for p in pauses)
    print(f"{'frozen' if freeze else 'not frozen':10}  tracked objects {len(gc.get_objects()):6}  "
          f"full collection ms: {shown}")  # fmt: skip
    app.request_stop()
    await app.wait()
    await app.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("0", "1"):
        uvloop.run(_measure(sys.argv[1] == "1"))
    else:
        for mode in ("0", "1"):  # a fresh process each: freezing cannot be undone cleanly
            subprocess.run([sys.executable, "-m", "benchmarks.gc_pause", mode], check=True)
