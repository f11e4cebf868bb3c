"""The console's job page shows the job's trace id, linked through CEKURA_TRACE_URL_TEMPLATE when it is set."""

from __future__ import annotations

from collections.abc import Callable

from tests.console.consoles import Served
from tests.console.jobs import make_job
from worker.store.jobs import JobStore
from worker.tracing.context import TraceContext, job_fields

PRODUCER = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")


def _traced_job(store: JobStore, job_id: str) -> str:
    fields = job_fields(PRODUCER)
    created, _ = store.submit(job_id, "agent.auto_fetch", {"agent_id": 5}, {}, 600, {}, fields)
    assert created
    return fields["traceparent"]


def test_a_job_page_links_its_trace_through_the_configured_template(
    serve: Callable[..., Served], store: JobStore
) -> None:
    _traced_job(store, "traced")
    make_job(store, "untraced")
    console = serve(cekura_trace_url_template="https://ui.honeycomb.io/acme/datasets/jobs/trace?trace_id={trace_id}")
    page = console.http.get("/jobs/traced").text
    assert (
        '<dd id="job-trace"><a href="https://ui.honeycomb.io/acme/datasets/jobs/trace?trace_id='
        f'{PRODUCER.trace_id}" rel="noopener noreferrer" target="_blank"><code>{PRODUCER.trace_id}</code></a></dd>'
    ) in page
    assert 'id="job-trace"' not in console.http.get("/jobs/untraced").text


def test_without_a_template_the_trace_id_is_shown_as_text(serve: Callable[..., Served], store: JobStore) -> None:
    _traced_job(store, "traced")
    page = serve().http.get("/jobs/traced").text
    assert f'<dd id="job-trace"><code>{PRODUCER.trace_id}</code></dd>' in page


def test_a_record_s_traceparent_that_is_not_one_shows_nothing(serve: Callable[..., Served], store: JobStore) -> None:
    make_job(store, "odd")
    store.client.hset(store.job_key("odd"), "traceparent", '"><script>alert(1)</script>')
    page = serve(cekura_trace_url_template="http://jaeger:16686/trace/{trace_id}").http.get("/jobs/odd").text
    assert 'id="job-trace"' not in page and "<script>alert" not in page
