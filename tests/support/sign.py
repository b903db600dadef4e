#!/usr/bin/env python3
"""Sign a Standard Webhooks message with the Python reference library.

Usage: python3 sign.py SECRET MSG_ID TIMESTAMP < body

Prints exactly the `webhook-signature` header value (e.g. "v1,<base64>") that
`standardwebhooks.Webhook(SECRET).sign(MSG_ID, <datetime for TIMESTAMP>, body)`
produces, with no trailing newline. Nothing else is written to stdout.

Notes on the library (standardwebhooks 1.1.0, webhooks.py):
* SECRET: a leading "whsec_" is stripped, the rest is base64-decoded after
  appending "==" (so unpadded secrets work; base64.b64decode is non-strict and
  silently drops characters outside the alphabet).
* The timestamp is a datetime; sign() does `timestamp.replace(tzinfo=utc)`
  (replace, not astimezone), so it must be built as an aware UTC datetime,
  never a naive local one.
* The body is read from stdin as raw bytes and decoded as strict UTF-8, so no
  newline translation or locale decoding alters it; sign() re-encodes it as
  UTF-8.
"""
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook


def main() -> int:
    if len(sys.argv) != 4:
        sys.stderr.write("usage: python3 sign.py SECRET MSG_ID TIMESTAMP < body\n")
        return 2
    secret, msg_id, ts_arg = sys.argv[1:]
    try:
        ts = int(ts_arg, 10)
    except ValueError:
        sys.stderr.write(f"sign.py: TIMESTAMP must be integer unix seconds, got {ts_arg!r}\n")
        return 2
    body = sys.stdin.buffer.read().decode("utf-8")
    timestamp = datetime.fromtimestamp(ts, tz=timezone.utc)
    sys.stdout.write(Webhook(secret).sign(msg_id, timestamp, body))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
