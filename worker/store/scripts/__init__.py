"""The Lua scripts behind every atomic step, and a lean way to call them.

A script names what it uses at its top, `-- #include _now.lua` (the server's clock and the shared helpers) and
`-- #include _claim.lua` (the claim function), and the loader puts those files in place of the lines: nothing a
script relies on is added out of sight.

Each script is sent once (SCRIPT LOAD) and then called by its SHA with EVALSHA; a Redis that restarted and
forgot it gets it again on NOSCRIPT. This is what `redis.commands.core.Script` does, minus the per-call
overhead that showed up in profiles of the poll path (about a third of each call's client CPU).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import redis

from worker.runtime.connection import thread_connections

_DIR = Path(__file__).parent

#: A line that includes a shared file (`_now.lua`, `_claim.lua`) in its place.
_INCLUDE = re.compile(r"^-- #include (_\w+\.lua)$", re.M)


def source(name: str) -> str:
    """The text of `<name>.lua` with its `-- #include` lines replaced by the files they name."""
    return _INCLUDE.sub(lambda m: (_DIR / m.group(1)).read_text().rstrip("\n"), (_DIR / f"{name}.lua").read_text())


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


def load(client: redis.Redis, name: str, *, per_thread: bool = False) -> LuaScript:
    """The script `worker/store/scripts/<name>.lua`, includes in place."""
    return LuaScript(client, source(name), per_thread=per_thread)
