"""moto's S3 server with its writes made atomic.

moto checks `If-Match` / `If-None-Match` and then writes, with no lock, in a threaded server:
two conditional PUTs carrying the same ETag can both succeed, and one update is lost. On a
busy machine the conformance suite's compare-and-swap race catches it (47 of 48 increments).
Real S3 is atomic here; so that our tests test our code, this launcher runs moto's own WSGI
application with every PUT, POST and DELETE under one lock (reads stay concurrent).

    python scripts/moto_server.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

WRITES = {"PUT", "POST", "DELETE"}


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        if environ.get("REQUEST_METHOD") not in WRITES:
            return app(environ, start_response)
        with lock:
            # The whole response is produced under the lock: the write is done when it ends.
            return list(app(environ, start_response))

    run_simple(
        host,
        port,
        serialized,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
