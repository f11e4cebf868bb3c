"""docker-compose.yml's `sentinel` profile, read (no Docker engine needed): a plain `docker compose up` is unchanged,
and the profile's worker URL, passwords and names agree with the Redis nodes and Sentinels it points at.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from config.settings import load_settings, sentinel_parts
from tests.deploy.support import REPO

COMPOSE = REPO / "docker-compose.yml"
PROFILE = "sentinel"
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
REDIS_NODES = ("redis-primary", "redis-replica")

_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _interpolated(value: Any) -> str:
    """A value as compose passes it on with none of its variables set: `${VAR:-default}` is the default, `$$` is `$`."""
    return _DEFAULTED.sub(lambda match: match.group(2), str(value)).replace("$$", "$")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose: dict[str, dict[str, dict[str, Any]]] = yaml.safe_load(COMPOSE.read_text())
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {key: _interpolated(value) for key, value in service["environment"].items()}


def _script(service: dict[str, Any]) -> str:
    command = service["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3
    return _interpolated(command[2])


def test_a_plain_up_is_unchanged(services: dict[str, dict[str, Any]]) -> None:
    plain = {name for name, service in services.items() if "profiles" not in service}
    assert plain == {"redis", "simulator", "worker", "webhooks", "submitter"}
    profiled = {name: tuple(service["profiles"]) for name, service in services.items() if name not in plain}
    assert profiled == dict.fromkeys([*REDIS_NODES, *SENTINELS, "worker-sentinel", "submitter-sentinel"], (PROFILE,))
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"
            assert services[dependency].get("profiles", [PROFILE]) == [PROFILE]


def test_the_workers_url_names_the_sentinels_and_the_service_they_monitor(
    services: dict[str, dict[str, Any]],
) -> None:
    monitors = set()
    for name in SENTINELS:
        script = _script(services[name])
        assert "exec docker-entrypoint.sh redis-server /data/sentinel.conf --sentinel" in script
        ((service, host, port, quorum),) = re.findall(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", script, re.M)
        assert (host, port, quorum) == ("redis-primary", "6379", "2")
        assert re.findall(r"^sentinel known-replica (\S+) (\S+) (\d+)$", script, re.M) == [
            (service, "redis-replica", "6379")
        ]
        monitors.add(service)
    (monitored,) = monitors

    for name in ("worker-sentinel", "submitter-sentinel"):
        url = sentinel_parts(_env(services[name])["REDIS_URL"])
        assert url.sentinels == tuple((sentinel, 26379) for sentinel in SENTINELS)
        assert (url.service, url.db, url.tls) == (monitored, 0, False)


def test_the_passwords_agree(services: dict[str, dict[str, Any]]) -> None:
    redis_password = {_env(services[name])["REDIS_PASSWORD"] for name in (*REDIS_NODES, *SENTINELS)}
    sentinel_password = {_env(services[name])["REDIS_SENTINEL_PASSWORD"] for name in SENTINELS}
    assert len(redis_password) == len(sentinel_password) == 1
    for name in ("worker-sentinel", "submitter-sentinel"):
        env = _env(services[name])
        assert sentinel_parts(env["REDIS_URL"]).password in redis_password
        assert {env["REDIS_SENTINEL_PASSWORD"]} == sentinel_password
        settings = load_settings(
            redis_url=env["REDIS_URL"], redis_sentinel_password=env["REDIS_SENTINEL_PASSWORD"], _env_file=None
        )
        assert settings.redis_sentinel_password is not None
    for name in REDIS_NODES:
        script = _script(services[name])
        assert '--requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD"' in script
        assert _env(services[name])["REDISCLI_AUTH"] in redis_password
    for name in SENTINELS:
        script = _script(services[name])
        assert "\nrequirepass $REDIS_SENTINEL_PASSWORD\n" in script
        assert "\nsentinel sentinel-pass $REDIS_SENTINEL_PASSWORD\n" in script
        assert "\nsentinel auth-pass cekura $REDIS_PASSWORD\n" in script
        assert _env(services[name])["REDISCLI_AUTH"] in sentinel_password


def test_every_node_is_known_by_its_service_name(services: dict[str, dict[str, Any]]) -> None:
    for name in REDIS_NODES:
        assert _script(services[name]).endswith(f"--replica-announce-ip {name}")
    ids = set()
    for name in SENTINELS:
        env = _env(services[name])
        assert env["SENTINEL_NAME"] == name
        assert re.fullmatch(r"[0-9a-f]{40}", env["SENTINEL_ID"])
        ids.add(env["SENTINEL_ID"])
        script = _script(services[name])
        for line in ("sentinel resolve-hostnames yes", "sentinel announce-hostnames yes"):
            assert f"\n{line}\n" in script
        assert "\nsentinel announce-ip $SENTINEL_NAME\n" in script
        assert "\nsentinel myid $SENTINEL_ID\n" in script
    assert len(ids) == len(SENTINELS)
