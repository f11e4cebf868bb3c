"""Learn mode's webhook groups (`python -m bench --mode learn`, run by `bench/learned.py`): evaluator runs that end
on their result webhook, against polling alone.

Two groups beside the polling ones, given the same jobs at the same moments (so the same durations, job by job):
`webhooks` (every webhook delivered) and `webhooks-lost` (the simulator loses 20 % of them and sends 10 % twice).
Each is the worker as shipped (the `progress` group's settings) with CEKURA_WEBHOOKS on, its own `cekura-worker
webhooks` receiver (under the group's key prefix and queue) and its own simulator POSTing `result.completed` there.
CEKURA_WEBHOOK_SAFETY_NET_S is divided by the compression like every other duration (600 s: 15 s at 40x).

Measured per evaluator run, from the simulator's record (`/_sim/polls`) and the result stream: Cekura calls (the
progress GETs plus the start, never repeated for this kind) and the detection delay (the result entry's id time
minus the moment the simulator's result became terminal). A webhook's own path (the simulator's send, the
receiver, the consumer waking up, the poll it causes) is not compressed, so the webhook groups' delays are in
wall seconds, as measured; the polling group's stay in Cekura seconds (benchmark seconds x the compression). The
runs whose webhook was lost are reported apart: they end on a safety-net poll, at most one safety net after
Cekura finished them. Only the other kinds' figures are left out for these groups (their polling is unchanged).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.pollers import REPO_ROOT
from bench.processes import Child, spawn
from tests.support import free_port, wait_for_line

#: The webhook groups: name -> (webhook_loss_rate, webhook_duplicate_rate) of their simulator.
WEBHOOK_GROUPS: dict[str, tuple[float, float]] = {
    "webhooks": (0.0, 0.0),
    "webhooks-lost": (0.2, 0.1),
}
#: The group the webhook groups are compared with: the worker as shipped, polling alone.
POLLING = "progress"
#: The one kind Cekura announces by webhook.
KIND = "evaluator.run"
#: What the simulators send as X-CEKURA-SECRET and the receivers expect (CEKURA_WEBHOOK_SECRET).
SECRET = "bench-learn-webhook-secret"

_LISTENING = re.compile(r"listening on (http://\S+)")
_OUTCOME = re.compile(r'^cekura_webhooks_total\{outcome="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


def safety_net_s(compression: float) -> float:
    """CEKURA_WEBHOOK_SAFETY_NET_S as the workers resolve it, divided by the compression (benchmark seconds)."""
    from config.settings import load_settings

    return float(load_settings().cekura_webhook_safety_net_s) / compression


def worker_env(env: Mapping[str, str], compression: float) -> dict[str, str]:
    """A group's environment with result webhooks on (for its workers and its receiver)."""
    return {
        **env,
        "CEKURA_WEBHOOKS": "true",
        "CEKURA_WEBHOOK_SECRET": SECRET,
        "CEKURA_WEBHOOK_SAFETY_NET_S": repr(safety_net_s(compression)),
    }


def start_receiver(env: dict[str, str], log_dir: Path, tag: str) -> tuple[Child, str]:
    """`cekura-worker webhooks` on a free port, under the group's environment; (its process, its webhook URL)."""
    import sys

    script = Path(sys.executable).parent / "cekura-worker"
    base = [str(script)] if script.exists() else [sys.executable, "-c", "from worker.cli import main; main()"]
    argv = [*base, "webhooks", "--host", "127.0.0.1", "--port", str(free_port())]
    child = spawn(f"{tag}-webhooks", argv, env=env, log_dir=log_dir, cwd=REPO_ROOT)
    match = wait_for_line(child.popen, child.log_path, _LISTENING, 30.0)
    if match is None:
        raise RuntimeError(f"webhook receiver did not start:\n{child.log_tail()}")
    return child, match.group(1)


def simulator_args(receiver_url: str, faults: tuple[float, float]) -> list[str]:
    """The simulator's options that send a group's webhooks to its receiver, with its faults."""
    loss, duplicate = faults
    return [
        "--webhook-url",
        receiver_url,
        "--webhook-secret",
        SECRET,
        "--webhook-loss-rate",
        repr(loss),
        "--webhook-duplicate-rate",
        repr(duplicate),
    ]


def sim_webhook_stats(sim_url: str) -> dict[str, int]:
    """The simulator's webhook counters (ended, lost, duplicated, sent, failed, retried, pending), and the evaluator
    runs it started (`starts`: one per run, the start call the calls per run count)."""
    import httpx

    response = httpx.get(f"{sim_url}/_sim/stats", timeout=30, trust_env=False)
    response.raise_for_status()
    stats = response.json()
    return {**stats.get("webhooks", {}), "starts": int(stats.get("started_by_kind", {}).get("evaluator_run", 0))}


def receiver_outcomes(receiver_url: str) -> dict[str, int]:
    """The receiver's `cekura_webhooks_total` by outcome (matched, unmatched, ...)."""
    import httpx

    base = receiver_url.rsplit("/webhooks/", 1)[0]
    response = httpx.get(f"{base}/metrics", timeout=30, trust_env=False)
    response.raise_for_status()
    return {outcome: int(float(value)) for outcome, value in _OUTCOME.findall(response.text)}


def summarise_webhooks(
    results: Mapping[str, list[tuple[int, dict[str, str]]]],
    polls: Mapping[str, Mapping[str, dict[str, Any]]],
    measured: set[str],
    planned: int,
    compression: float,
    extra: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Evaluator runs per group (the polling group and the webhook groups): calls per run with the start, delays
    (the polling group's in Cekura s, the webhook groups' in wall s), warm-up left out as for every group; for the
    webhook groups also the runs whose webhook was lost, over all runs, against the safety net. `extra`: per
    webhook group, the simulator's and the receiver's counters."""
    net_s = safety_net_s(compression)
    out: dict[str, Any] = {
        "safety_net_s": net_s,
        "safety_net_cekura_s": net_s * compression,
        "planned_runs": planned,
        "groups": {},
    }
    statuses = {fields["job_id"]: fields["status"] for _, fields in results.get(POLLING, []) if fields["kind"] == KIND}
    ran = _durations(results.get(POLLING, []), polls.get(POLLING, {}))
    for name in (POLLING, *WEBHOOK_GROUPS):
        if name not in results:
            continue
        scale = compression if name == POLLING else 1.0
        rows: dict[str, list[tuple[float, float]]] = {"all": [], "delivered": [], "lost": []}
        lost_all: list[float] = []
        path: dict[str, list[float]] = {"sent": [], "to_poll": [], "to_event": []}
        ended: Counter[str] = Counter()
        same_verdict = same_duration = 0
        for entry_ms, fields in results[name]:
            if fields["kind"] != KIND:
                continue
            ended[fields["status"]] += 1
            same_verdict += statuses.get(fields["job_id"]) == fields["status"]
            record = polls[name].get(fields.get("progress_id", ""))
            if record is None or record.get("finishes_at") is None:
                continue
            finished = float(record["finishes_at"])
            duration = finished - float(record["started_at"])
            base = ran.get(fields["job_id"])
            same_duration += base is not None and abs(duration - base) <= 0.01 * base + 0.005
            delay = entry_ms / 1000 - finished
            sent = sorted(float(t) for t in record.get("webhook_at") or ())
            if name != POLLING and not sent:
                lost_all.append(delay)
            if fields["job_id"] not in measured:
                continue
            point = (1.0 + len(record["times"]), delay * scale)  # the start, then every progress GET
            rows["all"].append(point)
            if name != POLLING:
                rows["delivered" if sent else "lost"].append(point)
            seen = record.get("terminal_at")
            if sent and seen is not None and float(seen) >= sent[0]:
                path["sent"].append(sent[0] - finished)
                path["to_poll"].append(float(seen) - sent[0])
                path["to_event"].append(entry_ms / 1000 - float(seen))
        group: dict[str, Any] = {
            "unit": "cekura_s" if name == POLLING else "wall_s",
            "ended": sum(ended.values()),
            "statuses": dict(ended),
            "same_verdict_as_polling": same_verdict,
            "same_duration_as_polling": same_duration,
        }
        group.update({key: _figures(points) for key, points in rows.items() if points or key == "all"})
        if name != POLLING:
            group["lost_runs"] = len(lost_all)
            group["lost_delay_max_s"] = max(lost_all) if lost_all else None
            group["lost_over_safety_net"] = sum(d > net_s for d in lost_all)
            group["path_s"] = {
                key: [float(np.percentile(v, q)) for q in (50, 95, 99)] if v else None for key, v in path.items()
            }
            group.update(extra.get(name, {}))
        out["groups"][name] = group
    return out


def _durations(entries: Sequence[tuple[int, dict[str, str]]], polls: Mapping[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for _, fields in entries:
        record = polls.get(fields.get("progress_id", ""))
        if fields["kind"] == KIND and record is not None and record.get("finishes_at") is not None:
            out[fields["job_id"]] = float(record["finishes_at"]) - float(record["started_at"])
    return out


def _figures(points: list[tuple[float, float]]) -> dict[str, Any]:
    if not points:
        return {"jobs": 0}
    c, d = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    return {
        "jobs": len(points),
        "calls_mean": float(c.mean()),
        "calls_p95": float(np.percentile(c, 95)),
        "delay_p50_s": float(np.percentile(d, 50)),
        "delay_p95_s": float(np.percentile(d, 95)),
        "delay_p99_s": float(np.percentile(d, 99)),
        "delay_max_s": float(d.max()),
    }


def webhook_lines(figures: Mapping[str, Any], compression: float) -> list[str]:
    """The webhook table: evaluator runs, polling alone against the webhook groups, then what became of the
    webhooks and where a delivered one's delay goes."""
    net_s, net_cekura_s = figures["safety_net_s"], figures["safety_net_cekura_s"]
    groups = figures["groups"]
    lines = [
        f"\nEvaluator runs: result webhooks against polling alone (calls include the start; delays of `{POLLING}` in "
        f"Cekura s (benchmark s x {compression:g}), of the webhook groups in wall s, NOT multiplied: a webhook's path "
        f"is not compressed; safety net CEKURA_WEBHOOK_SAFETY_NET_S {net_cekura_s:g} Cekura s = {net_s:g} s here; "
        "warm-up left out)",
        f"{'group':22} {'runs':>5} {'calls/run':>9} {'p95':>4} {'delay p50':>9} {'p95':>6} {'p99':>6} {'max':>6}  unit",
    ]
    for name, group in groups.items():
        unit = f"Cekura s (x{compression:g})" if group["unit"] == "cekura_s" else "wall s"
        for key in ("all", "delivered", "lost"):
            f = group.get(key)
            if not f or not f.get("jobs"):
                continue
            label = name if key == "all" else f"  {key} webhook"
            lines.append(
                f"{label:22} {f['jobs']:>5} {f['calls_mean']:>9.2f} {f['calls_p95']:>4.0f} {f['delay_p50_s']:>9.2f} "
                f"{f['delay_p95_s']:>6.2f} {f['delay_p99_s']:>6.2f} {f['delay_max_s']:>6.2f}  {unit}"
            )
    planned = figures["planned_runs"]
    for name, group in groups.items():
        line = f"{name}: {group['ended']} of {planned} runs ended {group['statuses']}"
        if name != POLLING:
            line += f", same verdict as {POLLING}: {group['same_verdict_as_polling']}"
            line += f", same duration: {group['same_duration_as_polling']}"
            line += f"; simulator webhooks {group.get('simulator', {})}, receiver {group.get('receiver', {})}"
        lines.append(line)
        if name == POLLING:
            continue
        worst = group["lost_delay_max_s"]
        if group["lost_runs"]:
            verdict = "all within it" if not group["lost_over_safety_net"] else f"{group['lost_over_safety_net']} over"
            lines.append(
                f"  {group['lost_runs']} runs whose webhook was lost (warm-up included) ended at most {worst:.2f} s "
                f"after Cekura finished them ({worst * compression:.0f} Cekura s); bound, the safety net: {net_s:g} s "
                f"({net_cekura_s:g} Cekura s): {verdict}"
            )
        path = group["path_s"]
        if all(path.values()):
            lines.append(
                "  delivered webhook's path, p50/p95/p99 wall s: Cekura end -> webhook sent "
                + "/".join(f"{v:.3f}" for v in path["sent"])
                + ", sent -> the poll it causes "
                + "/".join(f"{v:.3f}" for v in path["to_poll"])
                + ", poll -> result event "
                + "/".join(f"{v:.3f}" for v in path["to_event"])
            )
    return lines
