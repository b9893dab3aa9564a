"""FastAPI (or any ASGI app): configure in the lifespan's start-up, shut down at its end.

    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme uvicorn examples.fastapi_app:app

- ``configure()`` in the lifespan checks the settings before the app serves anything:
  a missing write key stops uvicorn at start-up instead of failing every request.
- In ``async def`` endpoints, ``analytics.track(...)`` is fine as it is: it checks the
  message and appends it to the queue in microseconds, and never waits on the network.
- At the end of the lifespan (uvicorn got SIGTERM or Ctrl-C and finished the requests
  in flight), ``shutdown()`` delivers what is queued. It waits on a thread so the event
  loop stays free; ``analytics_vitally.AsyncClient`` does the same for flush/shutdown.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict

from fastapi import FastAPI

import analytics_vitally as analytics


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    analytics.configure()  # VITALLY_WRITE_KEY, and VITALLY_SUBDOMAIN or VITALLY_HOST, from the environment
    yield
    await asyncio.to_thread(analytics.shutdown, 5.0)


app = FastAPI(lifespan=lifespan)


@app.post("/signup/{user_id}")
async def signup(user_id: str) -> Dict[str, Any]:
    queued, message = analytics.track(user_id, "signed-up", {"via": "api"}, account_id="acct-1")
    return {"queued": queued, "messageId": message["messageId"], "worker": os.getpid()}
