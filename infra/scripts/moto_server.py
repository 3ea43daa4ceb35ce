"""moto's own server (`moto_server`), without the costs that swamp it under load.

`make load` keeps a thousand or more delayed create jobs in one SQS queue and sends moto
hundreds of requests a second. Profiles of the stock server (py-spy) showed most of its
time outside the emulation proper, in five places, each replaced here:

- werkzeug's development server closes the connection after every response (so each
  request is a new TCP connection and a new thread, for the server and for the SDK
  clients) and writes an access-log line per request: waitress serves moto's same WSGI
  application instead, with keep-alive connections and a pool of threads.
- To route each request, moto lists its own package directory (`os.listdir`, then `isdir`
  on every entry) under a global lock: the list is read once.
- `unix_time()` builds two `datetime`s per call, and SQS calls it for every message in
  the queue on every receive (visibility and delay checks): without an argument it now
  reads `time.time()`, the same instant without the objects.
- For each message it returns, SQS's retention check computes every queue attribute,
  including three message counts that each walk the whole queue, to read one setting: it
  reads that setting.
- Every DynamoDB Query first sorts the whole table (with Python-level comparisons), then
  keeps the matching items and sorts those by the queried key, which ends in the table's
  own key, a total order. The reconciler queries 17 index partitions a pass; with ten
  thousand items that first sort was most of moto's time. A query's item list is now
  unsorted: the second sort gives the same result from any starting order. Scans keep
  the sorted list (their pages depend on it).

One thing is added: DynamoDB requests run one at a time. moto keeps no lock of its own, so
two concurrent conditional writes to one item could both pass their condition, which
DynamoDB never allows; the stock server's per-request overhead only made that rarer (the
conformance suite's concurrent budget reservations caught it here). moto holds Python's
global lock while it works, so little is lost; S3 and SQS requests do not take the lock.

The emulation and its state are moto's. Where the server differs from werkzeug's:
- waitress drops request headers with an underscore in their name (S3 metadata could have
  one; this project sends none);
- waitress sets no `RAW_URI`, which moto reads for S3 keys with escapes in them: it is set
  here from `REQUEST_URI`;
- requests beyond `THREADS` at once wait for a thread (an SQS long poll holds one for up
  to its wait, a DynamoDB request waiting for the lock one too).
Only `-H HOST` and `-p PORT` of `moto_server`'s arguments are taken. The patches rely on
moto's internals, so the version is checked: an upgrade must re-check them.
"""

import argparse
import logging
import os
import sys
import threading
import time

import waitress

import moto
import moto.core.utils as core_utils

assert moto.__version__ == "5.2.5", f"moto {moto.__version__}: re-check the patches below"

_stock_unix_time = core_utils.unix_time


def _unix_time(dt=None):
    return time.time() if dt is None else _stock_unix_time(dt)


core_utils.unix_time = _unix_time  # `unix_time_millis` calls it through the module
for _module in list(sys.modules.values()):
    if getattr(_module, "__name__", "").startswith("moto") and getattr(
        _module, "unix_time", None
    ) is _stock_unix_time:
        _module.unix_time = _unix_time

from moto import backends  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    create_backend_app,
)
from moto.dynamodb.models.table import Table  # noqa: E402
from moto.sqs.models import SQSBackend  # noqa: E402

_MODULES = frozenset(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: _MODULES


def _retained(self, queue_name, message):
    retention_seconds = int(self.get_queue(queue_name).message_retention_period)
    return retention_seconds + message.sent_timestamp / 1000 > time.time()


SQSBackend.is_message_valid_based_on_retention_period = _retained

_stock_all_items = Table.all_items
_stock_query = Table.query
_querying = threading.local()


def _all_items(self):
    if not getattr(_querying, "active", False):
        return _stock_all_items(self)
    if self.range_key_attr:
        return [item for by_range in self.items.values() for item in by_range.values()]
    return list(self.items.values())


def _query(self, *args, **kwargs):
    outer = getattr(_querying, "active", False)
    _querying.active = True
    try:
        return _stock_query(self, *args, **kwargs)
    finally:
        _querying.active = outer


Table.all_items = _all_items
Table.query = _query


# A long-polling SQS receive holds a thread for up to its wait (1 s here), and each test
# stack keeps a poller per queue; a request waiting for the DynamoDB lock holds one too.
# An idle or waiting thread costs next to nothing.
THREADS = 128


class AtomicDynamoDb:
    """The WSGI application `app`, entered by one DynamoDB request at a time."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if "REQUEST_URI" in environ:
            environ.setdefault("RAW_URI", environ["REQUEST_URI"])
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self.app(environ, start_response)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        return [body]


def serve(argv):
    """`moto_server -H HOST -p PORT`, served by waitress."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server sets it
    app = AtomicDynamoDb(DomainDispatcherApplication(create_backend_app))
    # Once every thread is busy, waitress logs a line per queued request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(
        app,
        host=args.host,
        port=args.port,
        threads=THREADS,
        connection_limit=1000,  # under the usual limit of 1,024 open files
        backlog=2048,
        asyncore_use_poll=True,  # select() stops at 1,024 descriptors
        ident="moto",
    )


if __name__ == "__main__":
    serve(sys.argv[1:])
