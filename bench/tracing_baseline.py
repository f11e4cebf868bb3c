"""The baseline of `python -m bench --mode tracing`: the service's packages without the tracing work, by default this
tree with the tracing hooks of its data path taken out (`STRIPPED`), or a directory, or a git revision."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bench.pollers import REPO_ROOT

#: The packages a baseline tree needs (the workers import these; the harness and simulator run from this tree).
SOURCE_PACKAGES = ("worker", "actors", "config", "simulator")

#: What `stripped_tree` takes out of a copy of this tree to make the baseline: the tracing hooks of the worker's
#: data path, file by file (text, then its replacement). An entry that no longer matches fails the run, naming it.
STRIPPED: dict[str, tuple[tuple[str, str], ...]] = {
    "actors/jobs.py": (
        ("from worker import tracing\n", ""),
        ("    if tracing.enabled:\n        tracing.note_advance(step, fields)\n", ""),
        (
            "    if tracing.enabled:  # before any call: the lookup below is one of the job's calls too\n"
            "        tracing.enter_job(rt.store, job_id, kind_name)\n",
            "",
        ),
    ),
    "actors/step.py": (
        ("from worker import tracing\n", ""),
        (
            "    step = Step(rt, job_id, phase, claim, claim.job, KINDS[claim.job.kind], age_s)\n"
            "    if tracing.enabled:\n        tracing.enter(step)\n    return step\n",
            "    return Step(rt, job_id, phase, claim, claim.job, KINDS[claim.job.kind], age_s)\n",
        ),
        ("    began_ns = time.time_ns() if tracing.enabled else 0\n", ""),
    ),
    "worker/runtime/app.py": (
        ("    tracing.setup(settings)  # before the Cekura client is made: traced or not\n", ""),
        ("self._cekura = _cekura_client(self.settings)", "self._cekura = CekuraClient(self.settings)"),
    ),
    "worker/store/scripts/_claim.lua": (("'start_claim', 'traceparent', 'tracestate')", "'start_claim')"),),
    "worker/store/records.py": (('    "traceparent",\n    "tracestate",\n)', ")"),),
    "worker/broker/middleware.py": (
        ("from worker import tracing\n", ""),
        (
            "        tracing.leave()  # the thread's next message may be about another job, or about none (on or off:"
            " see leave)\n",
            "",
        ),
        ("        tracing.leave()\n", ""),
    ),
}

#: The hook that ends a job's spans, in `actors/step.py` (two lines, taken out whole).
_ENDED = re.compile(r"    if tracing\.enabled:\n        details = [^\n]*\n        tracing\.ended\([^\n]*\n")


def stripped_tree(into: Path) -> Path:
    """A copy of this tree's packages with the tracing hooks taken out (`STRIPPED`): the same code as the tracing
    variants, less what tracing adds to every step even when off."""
    for package in SOURCE_PACKAGES:
        shutil.copytree(REPO_ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    for relative, edits in STRIPPED.items():
        path = into / relative
        text = path.read_text()
        for old, new in edits:
            if old not in text:
                shown = old.strip()[:60]
                raise RuntimeError(f"bench/tracing_baseline.py: {relative} no longer holds {shown!r}: update STRIPPED")
            text = text.replace(old, new)
        if relative == "actors/step.py":
            text, found = _ENDED.subn("", text)
            if not found:
                raise RuntimeError(
                    "bench/tracing_baseline.py: actors/step.py no longer ends a job's spans as _ENDED expects"
                )
        path.write_text(text)
    return into


def baseline_tree(baseline: str, into: Path) -> Path:
    """A directory holding the service's packages without the tracing work: this tree with its hooks taken out
    (`stripped`, the default), a directory given as it is, or `git archive` of a revision (read-only: nothing in
    the checkout changes)."""
    if baseline == "stripped":
        return stripped_tree(into)
    if Path(baseline).is_dir():
        return Path(baseline).resolve()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", baseline, *SOURCE_PACKAGES], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if (into / "worker" / "tracing").exists():
        print(f"note: the baseline {baseline} already holds worker/tracing/: name the commit before the tracing work")
    return into
