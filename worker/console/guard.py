"""Who may act: the console token, the login session, its page key and the CSRF token, all checked in constant time.

Reading needs nothing (the console listens on loopback unless told otherwise). Acting (cancel, retry, answer)
needs `CEKURA_CONSOLE_TOKEN`, typed into the action's form, or a login: the token typed once into the login form,
which starts a session. Without a token configured the console is read-only and every action is refused.

Cookies are scoped to a host, not to a port: the browser sends the console's cookies to every server on 127.0.0.1,
and any of them can read the console's pages with them and replay them with whatever headers it likes. So a cookie
can never be enough to act. A session is two halves:

- a cookie the console sets (`HttpOnly`, `SameSite=Lax`, `Secure` over HTTPS; named after the console's port, so
  two consoles on one host keep apart): a random session id and its issue time, signed (HMAC) with the browser id
  under a key derived from the process key and the token. Lax, so that a link from another site opens the console
  still logged in; no other site's POST carries it, and it acts on nothing without the page key anyway;
- a page key: 32 random bytes the login page's script makes and keeps in the console origin's `localStorage`
  (scheme, host *and port*: no other port can read it), sent with the login and with each action's form, never
  set or shown by the console. The console keeps only its SHA-256, beside the session.

The console keeps the live sessions in memory: a session ends at logout (a copy of the cookie or the key taken
before is no good after), `DEFAULT_SESSION_S` after the login whatever the cookie says, when the console restarts,
or when the token changes.

The other cookie, the browser id, is set on the first page (never in answer to a request from another site, which
may come without the cookie the browser holds: see `worker.console.state`): the CSRF token every form carries is an
HMAC of it under this process's key, so a page on another site can neither read nor compute it (signed double
submit). It is replaced at login, so an id planted beforehand (another port on 127.0.0.1 can set one) is not the
logged-in browser's. A server on another port can read a CSRF token (it holds the cookie); what it can't get is the
token or a page key.

The token is never logged, echoed in a page, nor kept anywhere but in this process's memory; it is registered with
`worker.redact` so that it is masked should any text ever quote it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from pydantic import SecretStr

from worker.errors import ConfigError
from worker.redact import register

#: The shortest console token accepted: it is typed by people, so it must be long enough not to be guessed.
DEFAULT_MIN_TOKEN_CHARS = 16

#: The cookie naming this browser (the CSRF token is derived from it), before its port suffix (`cookie_name`).
ID_COOKIE = "cekura_console_id"

#: The cookie half of a login session, before its port suffix (`cookie_name`).
SESSION_COOKIE = "cekura_console_session"

#: The shortest page key a login may bring (the page's script makes 43 characters: 32 random bytes, base64url).
DEFAULT_MIN_KEY_CHARS = 32

#: How long a login lasts, in seconds (the console ends it then, and the browser drops the cookie; a logout or a
#: console restart ends it sooner).
DEFAULT_SESSION_S = 8 * 3600

#: The most sessions kept at once (each needs the token typed): past it, the oldest ends.
DEFAULT_MAX_SESSIONS = 1000

#: The longest browser id or signature read from a cookie or a form; anything longer is refused unread.
_MAX_VALUE_CHARS = 128


def cookie_name(base: str, port: int | None) -> str:
    """The cookie `base` of the console listening on `port`: cookies ignore ports, so the name carries it."""
    return f"{base}_{port}" if port else base


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an action may go ahead, and if not, why (shown to the user and logged as `reason`)."""

    allowed: bool
    reason: str = ""
    message: str = ""


class Guard:
    """This process's console secrets: the token (if any) and a random key for CSRF and session signatures."""

    def __init__(self, token: SecretStr | None) -> None:
        value = token.get_secret_value() if token is not None else ""
        if value and len(value) < DEFAULT_MIN_TOKEN_CHARS:
            raise ConfigError(
                f"CEKURA_CONSOLE_TOKEN is shorter than {DEFAULT_MIN_TOKEN_CHARS} characters: use a long random value "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if value and not (value.isascii() and value.isprintable()):
            raise ConfigError("CEKURA_CONSOLE_TOKEN must be printable ASCII (the value is not shown)")
        register([value])
        self._token = value.encode()
        self._key = secrets.token_bytes(32)
        # Sessions are signed under a key that depends on the token, so a new token ends every session.
        token_hash = hashlib.sha256(self._token).digest()
        self._session_key = hmac.new(self._key, b"session-key:" + token_hash, "sha256").digest()
        #: Live sessions: session id -> (browser id, SHA-256 of its page key, when it ends on the monotonic clock);
        #: oldest first.
        self._sessions: dict[str, tuple[str, bytes, float]] = {}
        self._lock = threading.Lock()

    @property
    def read_only(self) -> bool:
        """True when no token is configured: nothing may be changed through the console."""
        return not self._token

    @staticmethod
    def new_browser_id() -> str:
        return secrets.token_urlsafe(24)

    def csrf_token(self, browser_id: str) -> str:
        """The CSRF token the forms of the browser `browser_id` carry."""
        return _sign(self._key, b"csrf:", browser_id)

    def retry_signature(self, job_id: str, new_job_id: str) -> str:
        """The signature a retry's confirmation page gives the new job id it drew, so a form can't choose its own."""
        return _sign(self._key, b"retry:", f"{job_id}\x00{new_job_id}")

    def check_retry(self, job_id: str, new_job_id: str, signature: str) -> bool:
        if not new_job_id or not _plausible(signature):
            return False
        return hmac.compare_digest(signature, self.retry_signature(job_id, new_job_id))

    @staticmethod
    def plausible_key(key: str) -> bool:
        """Whether `key` could be a page key the login page's script made."""
        return DEFAULT_MIN_KEY_CHARS <= len(key) <= _MAX_VALUE_CHARS and key.isascii() and key.isprintable()

    def new_session(self, browser_id: str, key: str) -> str:
        """Start a session for a browser that typed the token and brought page key `key` (see `plausible_key`);
        returns the session cookie's value."""
        if not self.plausible_key(key):
            raise ValueError("a session needs a page key")
        session_id, issued = secrets.token_hex(16), str(int(time.time()))
        now = time.monotonic()
        with self._lock:
            for sid in [sid for sid, (_, _, ends) in self._sessions.items() if ends <= now]:
                del self._sessions[sid]
            while len(self._sessions) >= DEFAULT_MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session_id] = (browser_id, _digest(key), now + DEFAULT_SESSION_S)
        payload = f"{session_id}.{issued}"
        return f"{payload}.{self._session_signature(browser_id, payload)}"

    def _session_signature(self, browser_id: str, payload: str) -> str:
        return _sign(self._session_key, b"session:", f"{browser_id}|{payload}")

    def _session(self, browser_id: str, session: str) -> tuple[str, bytes] | None:
        """The id and page key digest of the live session `session` (a cookie value) of this browser, or None."""
        if self.read_only or not _plausible(browser_id) or not _plausible(session):
            return None
        session_id, _, rest = session.partition(".")
        issued, _, signature = rest.partition(".")
        if not hmac.compare_digest(signature, self._session_signature(browser_id, f"{session_id}.{issued}")):
            return None
        with self._lock:
            live = self._sessions.get(session_id)
        if live is None or not hmac.compare_digest(live[0], browser_id) or live[2] <= time.monotonic():
            return None
        return session_id, live[1]

    def token_matches(self, typed: str) -> bool:
        """Whether `typed` is the token, compared in constant time (False when there is none)."""
        if not self._token:
            return False
        return hmac.compare_digest(hashlib.sha256(typed.encode()).digest(), hashlib.sha256(self._token).digest())

    def logged_in(self, browser_id: str, session: str) -> bool:
        """Whether the session cookie is a live session of this browser, signed by this process for the token (what
        a page shows; acting needs the page key too, see `check_action`)."""
        return self._session(browser_id, session) is not None

    def session_acts(self, browser_id: str, session: str, key: str) -> bool:
        """Whether the session cookie and the page key `key` are the two halves of one live session."""
        live = self._session(browser_id, session)
        return live is not None and self.plausible_key(key) and hmac.compare_digest(_digest(key), live[1])

    def end_session(self, browser_id: str, session: str) -> None:
        """End the session (a logout): its cookie and key, or any copy of them, are no good from now on."""
        live = self._session(browser_id, session)
        if live is not None:
            with self._lock:
                self._sessions.pop(live[0], None)

    def check_csrf(self, browser_id: str, form_token: str) -> bool:
        if not _plausible(browser_id) or not _plausible(form_token):
            return False
        return hmac.compare_digest(form_token, self.csrf_token(browser_id))

    def check_action(self, browser_id: str, session: str, form_csrf: str, typed_token: str, key: str = "") -> Verdict:
        """May this POST change something? CSRF first (it says nothing about the token), then the token typed, or
        both halves of a session: its cookie and its page key."""
        if self.read_only:
            return Verdict(
                False,
                "read_only",
                "This console is read-only: CEKURA_CONSOLE_TOKEN is not set, so it can't cancel, retry or answer jobs.",
            )
        if not self.check_csrf(browser_id, form_csrf):
            return Verdict(
                False, "csrf", "The form's CSRF token is missing or wrong: reload the page and submit the form again."
            )
        if self.token_matches(typed_token) or self.session_acts(browser_id, session, key):
            return Verdict(True)
        if self.logged_in(browser_id, session) and not typed_token:
            return Verdict(
                False,
                "key",
                "Refused: this page did not send this browser's login key (it is kept by the console's script in "
                "this browser's storage for this console). Log in again, or type the console token. Nothing was "
                "changed.",
            )
        return Verdict(False, "token", "Refused: the console token is missing or wrong. Nothing was changed.")


def _sign(key: bytes, purpose: bytes, value: str) -> str:
    return hmac.new(key, purpose + value.encode(), "sha256").hexdigest()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _plausible(value: str) -> bool:
    return 0 < len(value) <= _MAX_VALUE_CHARS and value.isascii()
