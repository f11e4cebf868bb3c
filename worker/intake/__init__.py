"""Stage 1 of the data path: requests. `requests.py` validates a request (the one path for the stream, the client
and the CLI), `stream.py` reads the request stream in a consumer group, `submission.py` records a job and sends its
start message, or cancels one."""
