"""The operator's tools: `health.py` (liveness and readiness probes), `summary.py` (`status`), `dead.py`
(`dead list`), `metrics.py` (the counters the data path records) and `exposition.py` (`/metrics`, with gauges read
from Redis at scrape time)."""
