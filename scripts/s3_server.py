"""moto's S3 server, with S3's conditional writes made atomic.

Delta's commits on S3 rest on one promise: of writers racing to create one log entry
with `If-None-Match: *`, exactly one succeeds. moto's server answers requests on
concurrent threads and checks the condition and stores the object in two steps, so two
racing writers could both succeed and one commit vanish. Real S3 does not do that. Here
every object write (a PUT, a multipart upload's completion) holds one lock from the check
to the store.

    python s3_server.py -H 127.0.0.1 -p PORT     (moto_server's own arguments)
"""

import functools
import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_WRITES = threading.Lock()


def _atomic(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _WRITES:
            return method(*args, **kwargs)

    return locked


# put_object checks If-None-Match/If-Match and then stores; _key_response_post completes
# multipart uploads the same way.
for name in ("put_object", "_key_response_post"):
    setattr(S3Response, name, _atomic(getattr(S3Response, name)))

if __name__ == "__main__":
    sys.exit(main())
