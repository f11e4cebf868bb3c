"""Stage 4: the Cekura HTTP client. `client.py` makes the calls and sorts errors into permanent and transient;
`transport.py` bounds each call's total time at every socket operation; `backoff.py` says when to poll and retry."""
