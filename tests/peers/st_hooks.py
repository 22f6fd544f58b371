"""Schemathesis hooks for powerdial's API check (tests/e2e/openapi.rs).

`application/sdp` (the browser phone's offer, SPEC §4, RFC 9725) has no
built-in serializer: a generated string body is sent as its UTF-8 bytes,
anything else as its JSON text, so the route's refusals (415, 422) are
exercised like any other route's.
"""
import json

import schemathesis


@schemathesis.serializer("application/sdp")
def sdp(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()
