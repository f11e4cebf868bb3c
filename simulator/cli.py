"""The simulator's command line (`cekura-worker simulate`): options for host, port, key, job timing and faults."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from simulator.config import SimConfig
from simulator.faults import Faults
from simulator.server import run


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cekura-simulator", description="Serve a simulated Cekura API (start/progress operations) over HTTP."
    )
    defaults = SimConfig()
    fault_defaults = Faults()
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument("--api-key", default=defaults.api_key, help="value X-CEKURA-API-KEY must carry")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds a job runs")
    parser.add_argument("--polls", type=int, default=None, help="a job ends on its N-th progress GET instead")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 5xx answers")
    parser.add_argument("--rate-429", type=float, default=0.0, help="share of 429 answers")
    parser.add_argument("--retry-after", type=float, default=fault_defaults.retry_after_s, help="Retry-After seconds")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every operation answer")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="share of answers delayed by --hang-s")
    parser.add_argument("--hang-s", type=float, default=fault_defaults.hang_s)
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of connections closed unanswered")
    parser.add_argument("--malformed-rate", type=float, default=0.0, help="share of 200s with invalid JSON")
    parser.add_argument("--unknown-status-rate", type=float, default=0.0, help="share of polls saying 'paused'")
    parser.add_argument(
        "--lost-start-rate", type=float, default=0.0, help="share of POSTs processed, then their answer lost"
    )
    parser.add_argument("--rate-limit-rps", type=float, default=0.0, help="429 above this many requests/s (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--durations",
        default=None,
        help="per-kind log-normal durations as JSON, e.g. '{\"evaluator_run\": [60, 0.5]}' (kind: [median_s, sigma])",
    )
    parser.add_argument("--webhook-url", default=None, help="POST result.completed here when an evaluator run ends")
    parser.add_argument("--webhook-secret", default=None, help="sent as the X-CEKURA-SECRET header of webhooks")
    parser.add_argument("--webhook-loss-rate", type=float, default=0.0, help="share of webhooks never sent")
    parser.add_argument("--webhook-duplicate-rate", type=float, default=0.0, help="share of webhooks sent twice")
    parser.add_argument("--webhook-delay-s", type=float, default=0.0, help="seconds from a result's end to its webhook")
    parser.add_argument(
        "--webhook-delay-max-s", type=float, default=0.0, help="draw the delay uniformly up to this instead"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: parse options, print the listening line, serve until interrupted."""
    args = _build_parser().parse_args(argv)
    try:
        faults = Faults(
            error_rate=args.error_rate,
            rate_429=args.rate_429,
            retry_after_s=args.retry_after,
            latency_ms=args.latency_ms,
            hang_rate=args.hang_rate,
            hang_s=args.hang_s,
            drop_rate=args.drop_rate,
            malformed_rate=args.malformed_rate,
            unknown_status_rate=args.unknown_status_rate,
            lost_start_rate=args.lost_start_rate,
            webhook_loss_rate=args.webhook_loss_rate,
            webhook_duplicate_rate=args.webhook_duplicate_rate,
            webhook_delay_s=args.webhook_delay_s,
            webhook_delay_max_s=args.webhook_delay_max_s,
        )
        cfg = SimConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            duration_s=args.duration,
            polls_to_complete=args.polls,
            faults=faults,
            rate_limit_rps=args.rate_limit_rps,
            seed=args.seed,
            durations=json.loads(args.durations) if args.durations else None,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
        )
    except ValueError as exc:
        print(f"cekura simulator: {exc}", file=sys.stderr)
        return 2
    run(cfg, on_ready=lambda url: print(f"cekura simulator listening on {url}", flush=True))
    return 0
