"""moto's server, taking one DynamoDB request at a time.

`moto_server` is threaded, and moto's DynamoDB is not safe under concurrent writers: its
TransactWriteItems copies the whole table without a lock, and a concurrent write fails it
with "RuntimeError: dictionary changed size during iteration" (an HTML 500); queries iterate
the same dictionaries. DynamoDB itself orders conflicting writes to an item, so running
moto's DynamoDB handlers one at a time is a faithful, stricter model. Connections are still
served by many threads, so clients race each other exactly as they would against AWS, and
other services (SQS long polls above all) are not held up behind the lock.

Usage: python moto_server.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)

    run_simple(host, port, one_at_a_time, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
