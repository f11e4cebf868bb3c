"""`python -m worker.schemas`: write (or `--check`) the generated schema files."""

from worker.schemas import main

raise SystemExit(main())
