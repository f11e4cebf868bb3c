"""Actor and queue names, shared by the actors and by code that sends their messages without importing them.

Renaming an actor orphans the messages already queued under the old name, so these never change casually.
"""

START = "cekura.start"
POLL = "cekura.poll"
CANCEL_REMOTE = "cekura.cancel_remote"
