#!/usr/bin/env python3
"""Calls Sophia's chat route with the official OpenAI Python SDK, unchanged.

Usage: openai_sdk_check.py BASE_URL ACCESS_TOKEN   (e.g. http://127.0.0.1:PORT/v1 eyJ...)
The SDK sends its api_key as the bearer token, so a Sophia access token goes there.
Exits non-zero with a message if anything differs from what the SDK expects.
"""

import sys

import openai
from openai import OpenAI


def main() -> int:
    client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=10)

    reply = client.chat.completions.create(
        model="sophia-small",
        messages=[{"role": "user", "content": "hello from the sdk"}],
        max_tokens=6,
    )
    assert reply.choices[0].message.content.startswith("hello from the sdk"), reply
    assert reply.usage.completion_tokens == 6, reply.usage

    pieces, usage = [], None
    stream = client.chat.completions.create(
        model="sophia-small",
        messages=[{"role": "user", "content": "stream this please"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    text = "".join(pieces)
    assert text.startswith("stream this please"), text
    assert usage is not None and usage.completion_tokens == 5, usage

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("an unknown model was accepted")
    except openai.BadRequestError as error:
        assert error.status_code == 400
        assert "not available" in str(error), error

    try:
        OpenAI(base_url=sys.argv[1], api_key="not-a-token", max_retries=0).chat.completions.create(
            model="sophia-small", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("a request without a valid token was accepted")
    except openai.AuthenticationError as error:
        assert error.status_code == 401, error

    print(f"openai {openai.__version__}: completion, stream and error handling behave as with OpenAI")
    return 0


if __name__ == "__main__":
    sys.exit(main())
