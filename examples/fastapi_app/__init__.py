"""FastAPI app that runs beatleader's beat for as long as the app is served (its lifespan).

Run it with several workers; each is a contender and one of them sends the periodic tasks::

    uvicorn --workers 2 examples.fastapi_app:app

uvicorn starts each worker as a new process (not a fork of a process that already started the
beat), and the lifespan runs in each worker: the beat starts there and stops at shutdown, which
hands leadership over at once. ``GET /beat`` answers this process's ``EmbeddedBeat.status()``,
and ``/beatleader/`` is the read-only web dashboard (``beatleader.web.AsgiDashboard``, docs/web.md);
a mounted app gets no lifespan of its own, so the app's lifespan closes the dashboard's client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from beatleader import EmbeddedBeat
from beatleader.web import AsgiDashboard, make_dashboard
from examples.plain.proj import app as celery_app

dashboard = make_dashboard(celery_app)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    beat = EmbeddedBeat(celery_app).start()
    app.state.beat = beat
    try:
        yield
    finally:
        await asyncio.to_thread(beat.stop)  # joins the beat thread: keep the event loop free
        await asyncio.to_thread(dashboard.close)


app = FastAPI(lifespan=lifespan)
app.mount("/beatleader", AsgiDashboard(dashboard))


@app.get("/beat")
def beat_status(request: Request) -> dict[str, Any]:
    status: dict[str, Any] = request.app.state.beat.status()
    return status
