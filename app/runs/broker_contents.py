"""What the broker still holds for a task: the first argument of every message
waiting in a queue or delivered and not yet acknowledged.

The reconciler compares this with Postgres to find runs whose message the broker
lost (a Redis restart without persistence, a flush, a crash between commit and
publish). Kombu's Redis transport keeps a queue as one list per priority step
and unacknowledged deliveries in the ``unacked`` hash; its filesystem transport
keeps one file per message in the queue folder. Messages are Celery protocol 2:
the task name is in the headers, the body (base64 JSON) is ``[args, kwargs, embed]``.
Nothing here is ever unpickled: the app only accepts JSON messages.
"""

import base64
import json
from pathlib import Path
from typing import Any

import redis

from app.settings import Settings

# kombu's Redis transport: default priority steps and the separator of the
# per-priority list names ("gpu", "gpu\x06\x163", ...)
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEP = "\x06\x16"
_UNACKED = "unacked"


def _first_arg(message: dict[str, Any], task_name: str) -> str | None:
    headers = message.get("headers") or {}
    if headers.get("task") != task_name:
        return None
    body = message.get("body", "")
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    try:
        args = json.loads(body)[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return str(args[0]) if isinstance(args, list) and args else None


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _redis_args(url: str, queue: str, task_name: str) -> set[str]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        found: set[str] = set()
        names = [queue if p == 0 else f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]
        for name in names:
            for raw in client.lrange(name, 0, -1):
                message = _parse(raw)
                if message and (arg := _first_arg(message, task_name)):
                    found.add(arg)
        for raw in client.hvals(_UNACKED):
            entry = _parse(raw) if raw else None
            # an unacked entry is [message, exchange, routing_key]; the hash is
            # shared by every queue on this Redis database
            if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], dict)
                    and entry[2] == queue and (arg := _first_arg(entry[0], task_name))):
                found.add(arg)
        return found
    finally:
        client.close()


def _folder_args(folder: Path, queue: str, task_name: str) -> set[str]:
    found: set[str] = set()
    for path in folder.glob(f"*.{queue}.msg"):
        try:
            message = _parse(path.read_bytes())
        except FileNotFoundError:  # consumed while we listed
            continue
        if message and (arg := _first_arg(message, task_name)):
            found.add(arg)
    return found


def pending_args(settings: Settings, queue: str, task_name: str) -> set[str] | None:
    """First arguments of ``task_name`` messages the broker holds for ``queue``;
    None when this broker cannot be inspected (then nothing can be called lost)."""
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _redis_args(url, queue, task_name)
    if url.startswith("filesystem"):
        return _folder_args(settings.broker_folder / "queue", queue, task_name)
    return None
