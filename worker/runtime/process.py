"""One worker process: a Dramatiq `Worker` on the Cekura queue plus the intake, reconciler and heartbeat threads.

SIGTERM (or SIGINT) stops it gracefully: intake stops reading, worker threads finish the message in hand
(HTTP calls are bounded by `CEKURA_HTTP_TIMEOUT_S`), prefetched messages go back to Redis, and the process
exits within `CEKURA_SHUTDOWN_TIMEOUT_S`.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

import dramatiq
import structlog

from config.settings import get_settings
from worker.broker.redis_broker import CekuraBroker
from worker.intake.stream import Intake
from worker.runtime.app import bind_actors, setup
from worker.runtime.heartbeat import Heartbeat, LocalBeat
from worker.runtime.reconciler import Reconciler

log = structlog.get_logger(__name__)


def threads_alive(broker: CekuraBroker, *services: threading.Thread) -> bool:
    """True while every Dramatiq worker and consumer thread on `broker` (`ThreadRoster`), and every one of
    `services` (the intake and the reconciler), is running: the heartbeat asks this, so the probes fail when one
    has died."""
    return broker.threads.alive() and all(thread.is_alive() for thread in services)


def _stop_when_gone(parent: BaseProcess, stopping: threading.Event) -> None:
    wait([parent.sentinel])
    log.warning("worker_orphaned", hint="the supervisor is gone; stopping")
    stopping.set()


def main(threads: int) -> None:
    """Run until SIGTERM/SIGINT. The entry point of each process the supervisor starts."""
    settings = get_settings()
    rt = setup(settings)
    bind_actors()
    cekura = rt.cekura  # fail fast (ConfigError) when CEKURA_API_KEY is missing
    stopping = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("worker_stopping", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A supervisor killed outright must not leave its workers running unsupervised.
        threading.Thread(target=_stop_when_gone, args=(parent, stopping), name="cekura-orphan", daemon=True).start()

    worker = dramatiq.Worker(rt.broker, worker_threads=threads, worker_timeout=settings.cekura_idle_wake_ms)
    worker.start()
    intake, reconciler = Intake(rt), Reconciler(rt)

    def alive() -> bool:  # what every beat of this process stands for
        return threads_alive(rt.broker, intake, reconciler)

    services: list[Intake | Reconciler | Heartbeat | LocalBeat] = [
        intake,
        reconciler,
        Heartbeat(rt.redis, settings, alive),
        LocalBeat(settings, alive),
    ]
    for service in services:
        service.start()
    log.info(
        "worker_started",
        threads=threads,
        queue=settings.cekura_queue,
        redis=settings.redis_url_redacted,
        cekura_api_url=settings.cekura_api_url,
    )
    stopping.wait()
    for service in services:
        service.stop()
    worker.stop(timeout=int(settings.cekura_shutdown_timeout_s * 1000))
    for service in services:
        service.join(timeout=2)
    cekura.close()
    log.info("worker_stopped")
