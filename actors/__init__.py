"""Stage 3: the Dramatiq actors (`jobs.py`: start, poll, cancel) and the job kinds (`kinds/`, one declaration per
Cekura operation). `jobs.py` binds to the broker when imported, so only entry points import it, after `setup()`
(see `worker.runtime.app.bind_actors`); `names.py` and `kinds` are safe to import anywhere."""
