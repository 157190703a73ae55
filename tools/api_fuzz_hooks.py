"""schemathesis hooks for `make api-fuzz` (loaded through SCHEMATHESIS_HOOKS).

Two filters, and why neither hides a bug of ours: `cargo lambda watch` (the local
API Gateway) answers a request whose body is not UTF-8, or one of whose header
values holds a byte outside printable ASCII, with its own plain-text 500 before
any function runs (see ../shared/FACTS.md; checked by counting that no function
logged such a request). Our own handling of those inputs is tested without the
emulator: random bytes as JSON bodies by the property tests
(`shared/tests/hostile_input.rs`: always a 4xx, never a panic), non-ASCII and
control characters in headers by the unit tests of `shared::jobs` (the
Idempotency-Key) and `shared::observability` (the correlation ID). Everything
else schemathesis generates goes through unfiltered.
"""

import schemathesis


def _printable(value):
    return isinstance(value, str) and all(ch == "\t" or " " <= ch <= "~" for ch in value)


@schemathesis.hook
def filter_headers(context, headers):
    if not headers:
        return True
    return all(_printable(value) for value in headers.values())


@schemathesis.hook
def filter_body(context, body):
    if isinstance(body, (bytes, bytearray)):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True
