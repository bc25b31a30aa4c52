"""The gateway's I/O layer: picows + uvloop around the Sans-I/O hub."""

from __future__ import annotations

from .config import GatewayConfig
from .connection import Connection
from .gateway import Gateway

__all__ = ["Connection", "Gateway", "GatewayConfig"]
