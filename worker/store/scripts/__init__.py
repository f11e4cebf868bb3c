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

from worker.runtime.connection import thread_connections

_DIR = Path(__file__).parent

#: Prepended to scripts that need the time: the Redis server's clock in ms, the same for every container.
PRELUDE = (_DIR / "_now.lua").read_text()


class LuaScript:
    """One script, called as `script(keys=[...], args=[...])` on the client it was loaded for.

    With `per_thread`, calls go over the calling thread's own connection (`ThreadConnections`): for the
    worker's hot path, whose threads make one call at a time. Other callers (a producer embedded in a web
    server with a thread per request, say) share the client's pool.
    """

    def __init__(self, client: redis.Redis, source: str, *, per_thread: bool = False) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._execute = thread_connections(client).execute if per_thread else client.execute_command

    def __call__(self, *, keys: list[Any], args: list[Any]) -> Any:
        try:
            return self._execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.client.script_load(self.source)
            return self._execute("EVALSHA", self.sha, len(keys), *keys, *args)


#: Scripts that call the shared `claim` function get `_claim.lua` prepended too.
_USES_CLAIM = frozenset({"claim", "fetch"})


def load(client: redis.Redis, name: str, *, clock: bool = True, per_thread: bool = False) -> LuaScript:
    """The script `worker/store/scripts/<name>.lua`, with the clock prelude unless `clock` is False."""
    source = (_DIR / f"{name}.lua").read_text()
    if name in _USES_CLAIM:
        source = (_DIR / "_claim.lua").read_text() + source
    return LuaScript(client, PRELUDE + source if clock else source, per_thread=per_thread)
