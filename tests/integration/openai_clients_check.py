#!/usr/bin/env python3
"""Real OpenAI clients against Sophia's one base URL, unchanged: the official
`openai` SDK and `langchain-openai` (both pinned in tools/requirements.txt).

Usage: openai_clients_check.py BASE_URL ACCESS_TOKEN   (e.g. http://127.0.0.1:PORT/v1 eyJ...)
The clients send their api_key as the bearer token, so a Sophia access token goes
there. Exits non-zero with a message if anything differs from what they expect:
model discovery, chat, streamed chat, tool calling (plain and streamed),
embeddings (the SDK asks for base64 by default) and error handling.
"""

import json
import sys

import openai
from openai import OpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def check_openai(base_url: str, token: str) -> None:
    client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=10)

    models = [model.id for model in client.models.list()]
    assert "sophia-small" in models and "sophia-embed" in models, models
    assert client.models.retrieve("sophia-small").owned_by, "a model names its owner"
    try:
        client.models.retrieve("gpt-9")
        raise AssertionError("an unknown model was found")
    except openai.NotFoundError as error:
        assert error.status_code == 404

    reply = client.chat.completions.create(
        model="sophia-small",
        messages=[{"role": "user", "content": "hello from the sdk"}],
        max_tokens=6,
        # What frameworks send along: accepted, forwarded or dropped, never refused.
        logprobs=True,
        top_logprobs=2,
        parallel_tool_calls=False,
        metadata={"project": "q3"},
        store=False,
        reasoning_effort="low",
        service_tier="auto",
        seed=7,
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

    # Tool calling: the model asks for a tool, the caller answers, the model answers.
    messages = [{"role": "user", "content": "Oslo weather please"}]
    asked = client.chat.completions.create(
        model="sophia-small", messages=messages, tools=[WEATHER], tool_choice="auto")
    call = asked.choices[0].message.tool_calls[0]
    assert asked.choices[0].finish_reason == "tool_calls", asked
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"], call
    # The answer's message goes back into the history as the SDK returned it.
    messages += [asked.choices[0].message,
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    answered = client.chat.completions.create(model="sophia-small", messages=messages, tools=[WEATHER])
    assert answered.choices[0].message.content, answered

    name, arguments, finish = "", "", None
    for chunk in client.chat.completions.create(
            model="sophia-small", messages=[{"role": "user", "content": "Bergen weather"}],
            tools=[WEATHER], stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and json.loads(arguments)["city"] == "Bergen", (name, arguments)
    assert finish == "tool_calls", finish

    # The SDK asks for base64 when no encoding is given, and decodes it to floats.
    embedded = client.embeddings.create(model="sophia-embed", input=["Dana owns the Q3 migration", "x y"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) > 8, embedded
    floats = client.embeddings.create(model="sophia-embed", input="Dana owns the Q3 migration",
                                      encoding_format="float", dimensions=32)
    assert len(floats.data[0].embedding) == 32, len(floats.data[0].embedding)
    assert abs(floats.data[0].embedding[0] - client.embeddings.create(
        model="sophia-embed", input="Dana owns the Q3 migration", dimensions=32).data[0].embedding[0]) < 1e-6
    assert embedded.usage.prompt_tokens > 0, embedded.usage

    for bad, status in [
        (lambda: client.chat.completions.create(model="no-such-model",
                                                messages=[{"role": "user", "content": "x"}]), 400),
        (lambda: client.chat.completions.create(model="sophia-small", store=True,
                                                messages=[{"role": "user", "content": "x"}]), 400),
        (lambda: client.embeddings.create(model="sophia-embed", input=""), 400),
    ]:
        try:
            bad()
            raise AssertionError("an invalid request was accepted")
        except openai.BadRequestError as error:
            assert error.status_code == status, error

    try:
        OpenAI(base_url=base_url, api_key="not-a-token", max_retries=0).models.list()
        raise AssertionError("a request without a valid token was accepted")
    except openai.AuthenticationError as error:
        assert error.status_code == 401, error


def check_langchain(base_url: str, token: str) -> None:
    import langchain_openai
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    llm = ChatOpenAI(model="sophia-small", base_url=base_url, api_key=token, max_retries=0,
                     timeout=10, max_tokens=4)
    assert llm.invoke("hello langchain").content.startswith("hello langchain")
    streamed = "".join(chunk.content for chunk in llm.stream("streaming langchain"))
    assert streamed.startswith("streaming langchain"), streamed

    with_tools = ChatOpenAI(model="sophia-small", base_url=base_url, api_key=token,
                            max_retries=0, timeout=10).bind_tools([WEATHER])
    question = HumanMessage("Tromso weather")
    asked = with_tools.invoke([question])
    assert asked.tool_calls and asked.tool_calls[0]["name"] == "get_weather", asked
    answer = with_tools.invoke([question, asked, ToolMessage("snow", tool_call_id=asked.tool_calls[0]["id"])])
    assert answer.content, answer
    streamed_call = None
    for chunk in with_tools.stream([question]):
        streamed_call = chunk if streamed_call is None else streamed_call + chunk
    assert streamed_call.tool_calls[0]["args"]["city"] == "Tromso", streamed_call.tool_calls

    # Token counting with tiktoken needs its files from the internet: send text.
    embeddings = OpenAIEmbeddings(model="sophia-embed", base_url=base_url, api_key=token,
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["Dana owns the Q3 migration", "Deploys freeze on Fridays"])
    query = embeddings.embed_query("Who runs the Q3 migration?")
    similarity = [sum(a * b for a, b in zip(query, vector)) for vector in vectors]
    assert similarity[0] > similarity[1], similarity
    print(f"langchain-openai {langchain_openai.__version__ if hasattr(langchain_openai, '__version__') else ''}"
          .strip() + ": chat, stream, tools and embeddings behave as with OpenAI")


def main() -> int:
    base_url, token = sys.argv[1], sys.argv[2]
    check_openai(base_url, token)
    print(f"openai {openai.__version__}: models, chat, stream, tools, embeddings and errors behave as with OpenAI")
    check_langchain(base_url, token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
