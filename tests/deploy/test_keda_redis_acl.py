"""The ACL line in deploy/README.md for KEDA's read-only Redis user, applied to a private `redis-server`: the
commands KEDA's redis-streams scaler sends in lagCount mode pass (log-in with HELLO or AUTH, SELECT, PING, INFO,
XINFO GROUPS, XLEN on the request stream), and writes, other keys and other commands are refused.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.deploy.support import DEPLOY
from tests.support import RedisServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

STREAM = "cekura:requests"
GROUP = "cekura-worker"
PASSWORD = "keda-test-password"


def _acl_line() -> list[str]:
    """The README's `ACL SETUSER cekura-keda ...` line, as arguments, with the test's password."""
    (line,) = re.findall(r"^ACL SETUSER cekura-keda .*$", (DEPLOY / "README.md").read_text(), re.MULTILINE)
    args = shlex.split(line)
    return [f">{PASSWORD}" if arg.startswith(">") else arg for arg in args]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[redis.Redis]:
    """A private redis-server with the KEDA user created by the README's line, a request stream and its group."""
    server = RedisServer(dir=tmp_path)
    server.start()
    client = server.client()
    try:
        client.execute_command(*_acl_line())
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        client.xadd(STREAM, {"request": "{}"})
        client.set("cekura:job:1", "secret state")
        yield client
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("protocol", [3, 2])  # go-redis logs in with HELLO 3 AUTH, and falls back to AUTH
def test_the_keda_user_runs_what_the_lag_scaler_sends(admin: redis.Redis, protocol: int) -> None:
    port = admin.connection_pool.connection_kwargs["port"]
    keda = redis.Redis(port=port, username="cekura-keda", password=PASSWORD, protocol=protocol)
    try:
        assert keda.execute_command("SELECT", 0)
        assert keda.ping()
        assert int(str(keda.info()["redis_version"]).split(".")[0]) >= 7
        (group,) = keda.xinfo_groups(STREAM)
        assert group["name"] in (GROUP, GROUP.encode()) and group["lag"] == 1
        assert keda.xlen(STREAM) == 1
    finally:
        keda.close()


@pytest.mark.parametrize(
    "command",
    [
        ("XADD", STREAM, "*", "request", "{}"),
        ("XGROUP", "CREATE", STREAM, "other", "0"),
        ("XREADGROUP", "GROUP", GROUP, "keda", "STREAMS", STREAM, ">"),
        ("XACK", STREAM, GROUP, "0-1"),
        ("DEL", STREAM),
        ("XINFO", "STREAM", STREAM),
        ("XLEN", "cekura:results"),
        ("GET", "cekura:job:1"),
        ("KEYS", "*"),
        ("CONFIG", "GET", "*"),
        ("PUBLISH", "any", "x"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_the_keda_user_can_do_nothing_else(admin: redis.Redis, command: tuple[str, ...]) -> None:
    port = admin.connection_pool.connection_kwargs["port"]
    keda = redis.Redis(port=port, username="cekura-keda", password=PASSWORD)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.execute_command(*command)
    finally:
        keda.close()
    assert admin.xlen(STREAM) == 1
