"""The web console: `cekura-worker console` serves pages that show the service (the `status` figures, jobs,
results, a job's record and timeline) live, and let an operator holding `CEKURA_CONSOLE_TOKEN` cancel, retry or
answer a job.

It is its own process (or a thread of the demo), reading Redis directly and acting through the same functions as
the CLI; the workers don't know it exists. The modules, in the order a request meets them:

- `server`: runs it (uvicorn on 127.0.0.1:8089 by default), in its own process or a thread;
- `app`: the routes, the error pages; `headers`: the strict Content-Security-Policy and the Host check;
- `pages`: the read-only pages and their event stream; `forms`: confirmation pages, actions, login;
- `guard`: the token, the session (a cookie and a page key) and CSRF checks; `actions`: cancel, retry, answer;
- `overview`, `listing`, `detail`: what each page reads from Redis (every read bounded);
- `reads` (and its `reads.lua`): those reads, bounded in bytes too (each value cut), and how a value is shown
  (redacted, then cut);
- `live`: the one thread per console that tails the progress and result streams for all open pages (`feed`: what
  it reads of them, and the events it makes);
- `state`: what requests share, and the templates (`templates/`, autoescaped) and assets (`static/`).
"""

from worker.console.app import create_app
from worker.console.server import ConsoleHandle, serve, serve_in_thread

__all__ = ["ConsoleHandle", "create_app", "serve", "serve_in_thread"]
