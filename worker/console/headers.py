"""The headers every console response carries, and the Host check that keeps other sites' pages out.

The policy is strict because the console shows text from outside (job ids, metadata, Cekura's answers): even if
some value escaped escaping, `script-src 'self'` lets no inline script or injected handler run, and the console's
own script is a file it serves. There are no inline styles either (`style-src 'self'`), so nothing may use a
`style` attribute.

The Host check stops DNS rebinding: a page on another site whose name is made to resolve to 127.0.0.1 would
otherwise be same-origin with the console and could read it. A console bound to loopback answers only to loopback
names; one bound to a given address also to that address; one bound to every interface (0.0.0.0, ::) can't know
its names and accepts any Host (put it behind a proxy that checks them).

This is a plain ASGI middleware, so it also covers static files, the event stream and error responses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The Content-Security-Policy of every response.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

#: Pages show live operational data: never kept by a browser or a proxy (static files may be).
NO_STORE = (b"cache-control", b"no-store")

#: The names a console bound to loopback answers to.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def allowed_hosts(bind_host: str) -> frozenset[str] | None:
    """The Host names a console bound to `bind_host` accepts; None for any (bound to every interface)."""
    host = bind_host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        return None
    return LOOPBACK_NAMES | {host.lower()}


def host_name(header: str) -> str:
    """The name in a Host header, without its port (`[::1]:8089` is `::1`)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    name, _, port = value.rpartition(":")
    if name and port.isdigit():
        try:
            ipaddress.IPv6Address(value)  # a bare IPv6 address has colons but no port
        except ValueError:
            return name
    return value


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response and refuses requests whose Host is not one of `hosts`."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(h.lower() for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control" or static]
                headers.extend(SECURITY_HEADERS)
                if not static:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        if self.hosts is not None:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if host_name(host) not in self.hosts:
                await _refuse(with_headers)
                return
        await self.app(scope, receive, with_headers)


async def _refuse(send: Send) -> None:
    body = b"unexpected Host header: this console answers only to the names it listens on\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 421, "headers": headers})
    await send({"type": "http.response.body", "body": body})
