"""The admin API of scripted faults (registered on the admin port by one line).

Routes::

    GET    /api/v1/faults          every loaded fault, its schedule and its counters
    POST   /api/v1/faults          load one fault (a JSON object with the keys of one
                                   ``[[fault]]`` table); 201 with it, 400 with the error
    DELETE /api/v1/faults/{id}     stop one fault (404 if unknown)
    DELETE /api/v1/faults          stop every fault (the scenario's too)

Enabled when the gateway was started with ``--faults FILE`` or ``--test-faults``;
otherwise every route answers 403 (a production gateway's admin port cannot inject
faults). See ``docs/connectivity-testing.md``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..exceptions import ScenarioError
from ..faults import KINDS, parse_fault

if TYPE_CHECKING:
    from .faults import FaultManager
    from .metrics import GatewayView

__all__ = ["register"]

log = logging.getLogger("tickwire.admin")

#: Largest fault body accepted, in bytes.
MAX_BODY = 16 << 10


def _answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return _answer({"error": code, "message": message}, status)


class _FaultRoutes:
    def __init__(self, gateway: GatewayView) -> None:
        self.gateway = gateway
        self._logged: set[str] = set()

    def _manager(self) -> FaultManager | None:
        gateway = self.gateway
        if gateway.faults is not None:
            return gateway.faults
        cfg = gateway.config
        if not (cfg.test_faults or cfg.faults_file):
            return None
        return gateway.enable_faults()

    def _log_once(self, code: str, message: str) -> None:
        if code not in self._logged:
            self._logged.add(code)
            log.info("faults API: %s: %s", code, message)

    def _disabled(self) -> web.Response:
        message = "fault injection is off: start the gateway with --faults FILE or --test-faults"
        self._log_once("disabled", message)
        return _error(403, "faults_disabled", message)

    async def list(self, request: web.Request) -> web.Response:
        manager = self._manager()
        if manager is None:
            return self._disabled()
        return _answer(
            {
                "scenario": manager.scenario_path,
                "kinds": list(KINDS),
                "applied": manager.applied_total,
                "faults": manager.listing(),
            }
        )

    async def add(self, request: web.Request) -> web.Response:
        manager = self._manager()
        if manager is None:
            return self._disabled()
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            return _error(413, "too_big", f"a fault is at most {MAX_BODY} bytes of JSON")
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            self._log_once("bad_json", str(exc))
            return _error(400, "bad_json", f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "bad_fault", "the body must be one JSON object (one fault)")
        try:
            spec = parse_fault(body)
        except ScenarioError as exc:
            self._log_once(f"bad_fault:{exc}", str(exc))
            return _error(400, "bad_fault", str(exc))
        fault = manager.add(spec)
        log.info("faults API: added %d (%s)", fault.id, spec.kind)
        return _answer(manager.faults[fault.id].as_dict(fault.start), 201)

    async def delete(self, request: web.Request) -> web.Response:
        manager = self._manager()
        if manager is None:
            return self._disabled()
        try:
            fault_id = int(request.match_info["id"])
        except ValueError:
            return _error(400, "bad_id", "a fault id is an integer")
        if not manager.remove(fault_id):
            return _error(404, "unknown_fault", f"no fault {fault_id}")
        return _answer({"removed": [fault_id]})

    async def clear(self, request: web.Request) -> web.Response:
        manager = self._manager()
        if manager is None:
            return self._disabled()
        ids = list(manager.faults)
        manager.clear()
        return _answer({"removed": ids})


def register(app: web.Application, gateway: GatewayView) -> None:
    """Add the ``/api/v1/faults`` routes to the admin application."""
    routes = _FaultRoutes(gateway)
    app.router.add_get("/api/v1/faults", routes.list)
    app.router.add_post("/api/v1/faults", routes.add)
    app.router.add_delete("/api/v1/faults", routes.clear)
    app.router.add_delete("/api/v1/faults/{id}", routes.delete)
