"""Child processes of the benchmark: started in their own process group, always killed on the way out.

Every subprocess the harness starts (simulator, redis-server, worker processes) goes through `spawn()`, which puts
it in a new session so the whole tree can be signalled at once, and registers it so that `stop_all()` (run from
`finally`, `atexit` and the SIGTERM/SIGINT handlers) leaves nothing behind, even on Ctrl-C. Killing a process group
and picking a free port are `tests/support.py`'s, the one copy the tests use too.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import psutil

from tests.support import kill_group

#: Seconds a process group gets between SIGTERM and SIGKILL.
DEFAULT_STOP_GRACE_S = 5.0

_running: list[Child] = []


@dataclass
class Child:
    """One subprocess started by the benchmark, the leader of its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes] | None = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        """The leader's pid (also the process-group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the leader is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's combined stdout/stderr, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = DEFAULT_STOP_GRACE_S) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after `grace_s`."""
        kill_group(self.popen, grace_s=grace_s, reap_timeout_s=grace_s)
        if self in _running:
            _running.remove(self)
        if self._log_file is not None:
            self._log_file.close()

    def tree(self) -> list[psutil.Process]:
        """The leader and all its live descendants."""
        try:
            leader = psutil.Process(self.pid)
            return [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return []


def spawn(name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None) -> Child:
    """Start `argv` in a new session with stdout+stderr going to `log_dir/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("wb")
    popen = subprocess.Popen(
        list(argv),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    child = Child(name=name, popen=popen, log_path=log_path, _log_file=log_file)
    _running.append(child)
    return child


def stop_all() -> None:
    """Stop every child still running, newest first (workers before the servers they talk to)."""
    for child in reversed(list(_running)):
        child.stop(grace_s=2.0)


def tree_of(children: Sequence[Child]) -> list[psutil.Process]:
    """All live processes in the trees of `children`."""
    return [proc for child in children for proc in child.tree()]


@dataclass(frozen=True)
class TreeUsage:
    """CPU seconds and resident memory summed over a set of process trees at one instant."""

    cpu_s: float
    rss_bytes: int
    rss_by_pid: dict[int, int]
    #: What each process is: "main" (a group leader we started), "worker", or "resource-tracker".
    role_by_pid: dict[int, str]


def usage_of(children: Sequence[Child]) -> TreeUsage:
    """User+system CPU and RSS of every process in the trees of `children` (exited processes no longer count)."""
    cpu = 0.0
    rss: dict[int, int] = {}
    roles: dict[int, str] = {}
    leaders = {child.pid for child in children}
    for proc in tree_of(children):
        with contextlib.suppress(psutil.Error), proc.oneshot():
            times = proc.cpu_times()
            cpu += times.user + times.system
            rss[proc.pid] = proc.memory_info().rss
            roles[proc.pid] = "main" if proc.pid in leaders else _role(proc)
    return TreeUsage(cpu_s=cpu, rss_bytes=sum(rss.values()), rss_by_pid=rss, role_by_pid=roles)


def _role(proc: psutil.Process) -> str:
    """A child's role, from its command line (multiprocessing's resource tracker is not a worker)."""
    return "resource-tracker" if "resource_tracker" in " ".join(proc.cmdline()) else "worker"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt so the harness unwinds through its `finally` blocks."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """Kill all children when the block ends, however it ends (also registered with atexit)."""
    atexit.register(stop_all)
    previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        yield
    finally:
        stop_all()
        signal.signal(signal.SIGTERM, previous)
