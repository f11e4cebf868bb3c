"""The process runtime: `app.py` (setup and the per-process Runtime), `process.py` (one worker process),
`supervisor.py` (`cekura-worker run`), `heartbeat.py`, `reconciler.py`, `connection.py` (Redis), `logging.py`."""
