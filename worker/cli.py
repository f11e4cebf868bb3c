"""The `cekura-worker` command: run workers, submit and inspect jobs, serve the simulator, run the demo."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import redis

from config.settings import Settings, get_settings
from worker import tracing
from worker.errors import ConfigError, InvalidRequest
from worker.redact import redact, register_settings

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 1


def _parse_param(text: str) -> tuple[str, Any]:
    """`key=value`; the value is read as JSON when it parses (42, true, [1,2], "quoted"), else as text. NaN and
    Infinity are not JSON (Python's json.loads takes them): they stay text, as does JSON nested too deeply to read.

    KEY is a parameter name (an identifier). The usage error never quotes the argument, which may hold a secret
    (`api_key:...` typed for `api_key=...`): at most it names the text before the first `=` or `:` when that is a
    short identifier."""
    key, sep, value = text.partition("=")
    if not sep or not _PARAM_NAME.fullmatch(key):  # `api_key:abc==` must not become a param named after a secret
        name = re.match("[^=:]*", text)
        hint = f" (for {name[0]!r}?)" if name and name.end() < len(text) and _PARAM_NAME.fullmatch(name[0]) else ""
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE{hint}")
    try:
        return key, json.loads(value, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return key, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise argparse.ArgumentTypeError("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _duration(text: str) -> float:
    """`90s`, `30m`, `24h`, `7d`, or a number of seconds, as seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError("expected a positive duration such as 90s, 30m, 24h or 7d")
    return float(match[1]) * _DURATION_UNITS[match[2] or "s"]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1")
    return int(text)


#: A `--since` duration: a number and an optional unit (seconds when there is none).
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}

#: A `-p` KEY, and all a `-p` usage error may name of its argument.
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, sort_keys=False), flush=True)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.runtime import logging as service_logging
    from worker.runtime.supervisor import run

    if settings.cekura_api_key is None:
        raise ConfigError("CEKURA_API_KEY is not set: the workers need it to call the Cekura API")
    service_logging.configure(settings)
    from worker.runtime.eviction import refuse_an_evicting_redis

    refuse_an_evicting_redis(settings)
    return run(
        settings, processes=args.processes or settings.cekura_processes, threads=args.threads or settings.cekura_threads
    )


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from worker.client import Client

    params = dict(args.params_json or {})
    params.update(dict(args.param or []))
    with Client(settings) as client:
        job_id = client.submit(args.kind, params, job_id=args.job_id, metadata=args.metadata, deadline_s=args.deadline)
        if not args.wait:
            _print_json({"job_id": job_id})
            return EXIT_OK
        event = client.wait(job_id, timeout=args.timeout)
    _print_json(event)
    return EXIT_OK if event["status"] in ("completed", "needs_input") else EXIT_FAILED


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from worker.client import Client

    with Client(settings) as client:
        if args.job_id:
            view = client.status(args.job_id)
            if view is None:
                print(f"no job {args.job_id} is known (never submitted, or its record expired)", file=sys.stderr)
                return EXIT_FAILED
            _print_json(view)
            return EXIT_OK
        from worker.ops.summary import render_table, summarize

        summary = summarize(client.redis, settings)
    if args.format == "json":
        _print_json(summary)
    else:
        print(render_table(summary), flush=True)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from worker.client import Client

    tracing.setup(settings)  # with OTEL_* set, the job span of a job this cancel ends is made here, as a worker would
    with Client(settings) as client:
        outcome = client.cancel(args.job_id)
    print(outcome.message, flush=True)
    return EXIT_OK if outcome.result != "unknown" else EXIT_FAILED


def cmd_answer(args: argparse.Namespace, settings: Settings) -> int:
    from worker.client import Client
    from worker.intake import submission

    with Client(settings) as client:
        outcome = submission.answer(client.store, args.job_id, args.text)
    if outcome.result != "ok":
        print(f"cekura-worker: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.message, flush=True)
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from worker.client import Client
    from worker.intake import submission

    tracing.setup(settings)  # with OTEL_* set, the retry's trace links to the job it retries
    with Client(settings) as client:
        outcome = submission.retry(client.store, client.broker, args.job_id, args.new_job_id, force=args.force)
    if outcome.result != "submitted":
        print(f"cekura-worker: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "json":
        _print_json({"job_id": outcome.job_id, "retry_of": outcome.retry_of})
    else:
        print(outcome.job_id, flush=True)
    return EXIT_OK


def cmd_dead_list(args: argparse.Namespace, settings: Settings) -> int:
    from worker.client import Client
    from worker.ops import dead

    with Client(settings) as client:
        data = dead.report(client.redis, settings, since_s=args.since, limit=args.limit)
    if args.format == "json":
        _print_json(data)
    else:
        print(dead.render_table(data), flush=True)
    return EXIT_OK


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    from worker.client import Client

    with Client(settings) as client:
        try:
            for event in client.results(after=args.after, follow=args.follow):
                _print_json(event)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    from worker.ops.health import check, check_liveness

    ok, reason = check_liveness(settings) if args.liveness else check(settings)
    print(reason, flush=True)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from worker.console import serve

    tracing.setup(settings)  # the console cancels and retries jobs too
    return serve(settings, host=args.host, port=args.port)


def cmd_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from worker.webhooks import serve

    return serve(settings, host=args.host, port=args.port)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from simulator.demo import run_demo

    return run_demo(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cekura-worker",
        description="Run Cekura's asynchronous API jobs reliably: Redis in, Dramatiq workers, "
        "one result event per job. Settings come from environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the worker processes (and the request-stream intake and reconciler)")
    p.add_argument("--processes", type=int, help="worker processes (default CEKURA_PROCESSES)")
    p.add_argument("--threads", type=int, help="threads per process (default CEKURA_THREADS)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit a job; prints its job_id (or, with --wait, its result event)")
    p.add_argument("kind", help="the job kind (see the README's kinds table), e.g. agent.auto_fetch or evaluator.run")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        type=_parse_param,
        metavar="KEY=VALUE",
        help="a param; VALUE is read as JSON when it parses (42, true, [1,2]), else as text",
    )
    p.add_argument("--params-json", type=_json_object, metavar="JSON", help="all params as one JSON object")
    p.add_argument("--job-id", help="idempotency key: 1-128 of A-Za-z0-9._:- (generated when absent)")
    p.add_argument("--metadata", type=_json_object, metavar="JSON", help="a JSON object echoed in the result")
    p.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="job deadline (default: the kind's, else CEKURA_JOB_DEADLINE_S)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the result event and print it")
    p.add_argument("--timeout", type=float, default=3600.0, help="with --wait: give up after SECONDS")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="a job's state as JSON, or with no JOB_ID a summary of the service")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--format", choices=("table", "json"), default="table", help="summary format")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a job (stopped at Cekura too, for kinds Cekura can cancel)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("answer", help="answer the question a waiting job asked (see its status or progress event)")
    p.add_argument("job_id")
    p.add_argument("text", help="the answer (at most 10,000 characters)")
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser(
        "retry",
        help="submit a finished job again as a new job; prints the new job id",
        description="Submit a finished job (its record is kept CEKURA_JOB_TTL_S) again as a new job with the same "
        "kind, params and deadline; its metadata gets retry_of=JOB_ID. Refused for a job still running, an unknown "
        "one, kinds with secret params (never stored: submit those again with the secret), and, without --force, "
        "a job whose start must not repeat and may have reached Cekura (its outcome is unknown).",
    )
    p.add_argument("job_id", metavar="JOB_ID", help="the finished job")
    p.add_argument(
        "--job-id",
        dest="new_job_id",
        metavar="NEW_ID",
        help="the new job's id (default: JOB_ID-retry-N, the next free N)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="retry even a job whose start's outcome is unknown: Cekura may still be running the first operation, "
        "and the retry may start a second one",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="the new id alone, or a JSON object")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("dead", help="what went wrong lately: dead-lettered messages, failed and timed-out jobs")
    dead = p.add_subparsers(dest="dead_command", required=True, metavar="SUBCOMMAND")
    p = dead.add_parser(
        "list",
        help="list dead-lettered messages and failed or timed-out jobs, newest first",
        description="Dead-lettered Dramatiq messages (actor, job id, last recorded error) and jobs whose result event "
        "is failed or timed_out (with whether `retry` can still take them, or only with --force), newest first.",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--limit", type=_positive_int, default=20, metavar="N", help="at most N of each (default 20)")
    p.add_argument(
        "--since",
        type=_duration,
        default=86_400.0,
        metavar="DURATION",
        help="how far back: 90s, 30m, 24h (default), 7d",
    )
    p.set_defaults(func=cmd_dead_list)

    p = sub.add_parser("results", help="print result events as JSON lines")
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new events")
    p.add_argument("--after", default="0", metavar="ID", help='stream id to start after ("0": all, "$": new only)')
    p.set_defaults(func=cmd_results)

    sub.add_parser(
        "simulate",
        help="serve the Cekura API simulator on loopback (see `cekura-worker simulate --help`)",
        add_help=False,
    )

    p = sub.add_parser(
        "healthcheck",
        help="probe this container: exit 0 if healthy, else 1 with a reason",
        description="Liveness: this container's worker processes are alive (local files only; passes while Redis "
        "is down). Readiness (the default): Redis answers and this host's workers beat there.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--liveness", action="store_true", help="only this container's processes; never asks Redis")
    mode.add_argument("--readiness", action="store_true", help="Redis answers and this host's workers beat (default)")
    p.set_defaults(func=cmd_healthcheck)

    p = sub.add_parser(
        "console",
        help="serve the web console (overview, jobs, actions) on 127.0.0.1:8089",
        description="A web page of the service: the status figures and jobs, live; cancel, retry and answer jobs "
        "with CEKURA_CONSOLE_TOKEN (read-only without it). Its own process: the workers don't pay for it.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8089, help="port to listen on (default 8089)")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser(
        "webhooks",
        help="receive Cekura's result webhooks on 127.0.0.1:8090 (POST /webhooks/cekura)",
        description="A webhook makes the evaluator run it names poll at once; the run ends only on what that poll "
        "reads. Needs CEKURA_WEBHOOK_SECRET (Cekura sends it as X-CEKURA-SECRET). Its own process.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    p.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("demo", help="run one job of each kind against the simulator and print the results")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":
        from simulator import main as simulate

        simulate(argv[1:])
        return EXIT_OK
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        register_settings(settings)  # so any text the CLI prints is redacted, as the workers' is
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"cekura-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidRequest as exc:
        print(f"cekura-worker: rejected: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TimeoutError as exc:
        print(f"cekura-worker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except redis.RedisError as exc:
        where = settings.redis_url_redacted
        print(f"cekura-worker: Redis at {where} failed: {redact(str(exc))} ({type(exc).__name__})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
