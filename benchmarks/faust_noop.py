"""A do-nothing Faust agent with the worker's own Faust settings: the framework's ceiling.

`python -m meterline.benchmarks.faust_noop` (settings from METERLINE_ variables, as a worker):
it counts the usage topic's events and serves the count at /count.
"""

from __future__ import annotations

import sys

from faust.web import Request, Response, View

from meterline.lifetime import stop_with_parent
from meterline.processors.app import create_faust_app, prepare_process
from meterline.settings import load_settings


def main() -> None:
    argv = prepare_process("faust-noop", "warn")  # first: it picks the event loop
    settings = load_settings()
    if settings.worker_parent_pid is not None:  # spawned by the pipeline benchmark: gone with it
        stop_with_parent(settings.worker_parent_pid)
    app = create_faust_app(settings)
    topic = app.topic(settings.usage_topic, key_serializer="raw", value_serializer="raw")
    seen = [0]

    async def count(stream):  # type: ignore[no-untyped-def]  # Faust agents are untyped
        async for _event in stream.events():
            seen[0] += 1

    app.agent(topic, name="noop")(count)

    @app.page("/count")
    class Count(View):
        async def get(self, request: Request) -> Response:
            return self.json({"events": seen[0]})

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"ok": True})

    sys.argv = argv
    app.main()


if __name__ == "__main__":
    main()
