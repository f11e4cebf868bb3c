"""`setup()` and the actors: imports run one way, and settings that change after actors are bound either work or
are refused with a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config.settings import Settings, load_settings
from worker.errors import ConfigError
from worker.runtime.app import Runtime, setup


def test_a_second_setup_with_another_queue_is_refused_once_actors_are_bound(rt: Runtime, settings: Settings) -> None:
    other = load_settings(**{**settings.model_dump(), "cekura_queue": "elsewhere"})
    with pytest.raises(ConfigError, match="CEKURA_QUEUE can't change"):
        setup(other)
    assert setup(settings).settings.cekura_queue == settings.cekura_queue  # the process still works as it was


def test_a_second_setup_with_another_prefix_moves_the_actors_to_the_new_namespace(
    rt: Runtime, settings: Settings
) -> None:
    from actors import jobs

    other = setup(load_settings(**{**settings.model_dump(), "cekura_key_prefix": "moved"}))
    try:
        assert other.broker.namespace == "moved:dramatiq"
        assert other.store.job_prefix == "moved:job:"
        assert jobs.poll.broker is other.broker  # sends go to the new namespace
        message = jobs.poll.send("moved-job", 1)
        queue = f"moved:dramatiq:{settings.cekura_queue}"
        assert other.redis.hexists(f"{queue}.msgs", message.options["redis_message_id"])
    finally:
        back = setup(settings)
    assert jobs.poll.broker is back.broker and back.broker.namespace == "cekura:dramatiq"


def test_importing_the_runtime_never_imports_the_actors() -> None:
    code = "import worker.runtime.app, worker.client, worker.cli, sys; print('actors.jobs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_cli_runs_as_python_dash_m_worker() -> None:
    result = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "usage: cekura-worker" in result.stdout
