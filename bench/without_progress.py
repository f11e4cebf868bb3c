"""`python -m bench.without_progress run ...`: `cekura-worker` with every kind's progress rule taken out.

The learn mode's `learned` groups run this, so that they poll as the service did before progress-aware polling
(issue 21), beside the `progress` group that runs the worker as shipped. A progress rule is part of a kind's
declaration (`JobKind.progress_of`), not a setting, so the benchmark removes it here, at import: in this process
and, since the supervisor spawns its worker processes and each re-imports this main module (as `__mp_main__`),
in every worker process too.
"""

from __future__ import annotations

from dataclasses import replace

from actors.kinds import KINDS
from actors.kinds.base import no_progress

for _name, _kind in list(KINDS.items()):
    KINDS[_name] = replace(_kind, progress_of=no_progress)

if __name__ == "__main__":
    from worker.cli import main

    raise SystemExit(main())
