"""Stage 2: job state in Redis. `jobs.py` is `JobStore`, the only code that knows a job's Redis layout; `records.py`
the typed values it returns; `scripts/` the Lua behind every atomic step (each script names its inputs at the top
and includes what it uses)."""
