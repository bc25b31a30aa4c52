"""Replay control on the admin port: one shared clock for every client of the gateway.

Routes (``docs/venue-feeds.md``)::

    GET  /api/v1/replay               the replay's state: data time, position, speed,
                                      paused, seeking, done, file progress, problems
    POST /api/v1/replay/pause         freeze the data time (clients get nothing but
                                      heartbeats)
    POST /api/v1/replay/resume        run again from where it stood
    POST /api/v1/replay/speed?x=10    10, x10, 0.5 or max
    POST /api/v1/replay/seek?to=T     T: ISO 8601 (2024-03-01T00:00:05Z) or epoch ms;
                                      answers once the books are at T (a new epoch:
                                      every client gets a snapshot), 202 if it takes
                                      longer than SEEK_WAIT_S

Every answer is the state as JSON; a bad request is 400 and a gateway whose source is
not a replay 409, each with ``{"error", "message"}``. A control acts on the source from
the gateway's own event loop, between two ticks: a pause takes effect before the next.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from ..exceptions import ReplayControlError
from ..replayclock import parse_factor, parse_time
from .metrics import GatewayView

__all__ = ["Replayable", "register"]

#: Seconds a seek request waits for the books to reach the target before answering 202.
SEEK_WAIT_S = 30.0


@runtime_checkable
class Replayable(Protocol):
    """A source the replay API can drive (recordings, tardis CSVs)."""

    @property
    def seeking(self) -> bool: ...

    def replay_state(self, now: float) -> dict[str, Any]: ...

    def pause(self, now: float) -> None: ...

    def resume(self, now: float) -> None: ...

    def set_speed(self, speed: float, now: float) -> None: ...

    def seek(self, target_ns: int, now: float) -> None: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


class _Routes:
    def __init__(self, gateway: GatewayView) -> None:
        self.gateway = gateway

    def _source(self) -> Replayable:
        source = self.gateway.source
        if not isinstance(source, Replayable):
            kind = source.stats().get("kind", type(source).__name__)
            raise ReplayControlError(
                f"this gateway's source ({kind}) is not a replay: start it with "
                "--source FILE.ndjson or --source tardis:FILE.csv.gz",
                409,
            )
        return source

    async def handle(self, request: web.Request) -> web.Response:
        action = request.match_info.get("action", "")
        try:
            source = self._source()
            now = time.monotonic()
            if action == "":
                return _json(source.replay_state(now))
            if action == "pause":
                source.pause(now)
            elif action == "resume":
                source.resume(now)
            elif action == "speed":
                raw = request.query.get("x")
                if raw is None:
                    raise ReplayControlError("speed needs x: ?x=10, ?x=0.5 or ?x=max")
                source.set_speed(parse_factor(raw), now)
            elif action == "seek":
                raw = request.query.get("to")
                if raw is None:
                    raise ReplayControlError(
                        "seek needs to: ?to=2024-03-01T00:00:05Z or ?to=<epoch ms>"
                    )
                source.seek(parse_time(raw), now)
                deadline = now + SEEK_WAIT_S
                while source.seeking and time.monotonic() < deadline:  # noqa: ASYNC110
                    # The tick loop does the seek; a poll every 5 ms costs nothing.
                    await asyncio.sleep(0.005)
                if source.seeking:
                    return _json(source.replay_state(time.monotonic()), 202)
            else:
                raise ReplayControlError(
                    f"no replay action {action[:32]!r}: pause, resume, speed or seek", 404
                )
            return _json(source.replay_state(time.monotonic()))
        except ReplayControlError as exc:
            code = {400: "bad_request", 404: "not_found", 409: "not_a_replay"}.get(
                exc.status, "bad_request"
            )
            return _json({"error": code, "message": exc.message}, exc.status)


def register(app: web.Application, gateway: GatewayView) -> None:
    """Add the replay routes to the admin ``app``."""
    routes = _Routes(gateway)
    app.router.add_get("/api/v1/replay", routes.handle)
    app.router.add_post("/api/v1/replay/{action}", routes.handle)
