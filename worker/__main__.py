"""`python -m worker`: the `cekura-worker` command."""

from worker.cli import main

raise SystemExit(main())
