"""The gateway's I/O layer: picows + uvloop around the Sans-I/O hub."""

from __future__ import annotations

from .gateway import Connection, Gateway, GatewayConfig

__all__ = ["Connection", "Gateway", "GatewayConfig"]
