"""Side-by-side benchmark of cekura-worker against a bare Dramatiq poller and a Celery poller.

Run with ``python -m bench --mode short`` (``make bench``) or ``--mode long`` (``make bench-long``); see
bench/README.md for what is measured and how.
"""
