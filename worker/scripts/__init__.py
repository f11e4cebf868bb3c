"""The Lua scripts behind every atomic step, and a lean way to call them.

Each script is sent once (SCRIPT LOAD) and then called by its SHA with EVALSHA; a Redis that restarted and
forgot it gets it again on NOSCRIPT. This is what `redis.commands.core.Script` does, minus the per-call
overhead that showed up in profiles of the poll path (about a third of each call's client CPU).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import redis

_DIR = Path(__file__).parent

#: Prepended to scripts that need the time: the Redis server's clock in ms, the same for every container.
PRELUDE = (_DIR / "_now.lua").read_text()


class LuaScript:
    """One script, called as `script(keys=[...], args=[...])` on the client it was loaded for."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, *, keys: list[Any], args: list[Any]) -> Any:
        try:
            return self.client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.client.script_load(self.source)
            return self.client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def load(client: redis.Redis, name: str, *, clock: bool = True) -> LuaScript:
    """The script `worker/scripts/<name>.lua`, with the clock prelude unless `clock` is False."""
    source = (_DIR / f"{name}.lua").read_text()
    return LuaScript(client, PRELUDE + source if clock else source)
