"""`python -m simulator`: serve the Cekura API simulator (the same as `cekura-worker simulate`)."""

from simulator import main

raise SystemExit(main())
