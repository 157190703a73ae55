#!/usr/bin/env python3
"""Sophia's OpenAPI 3.1 document, written by hand as data: api/openapi.json.

Why by hand (and not generated from the Rust code with utoipa): the request
types are validated beyond what their serde shape says (bounds, enumerations,
refusals that name a parameter), and the document must say those rules so that
clients and schemathesis see the real contract; annotating every type and
handler would double the code that states them and cost compile time in every
function. Writing it as Python data keeps the shared parts (problem responses,
headers, security) in one place. Its agreement with the code is tested: every
route in the functions' `ROUTES` is here and nothing else is
(tests/integration/tests/api_contract.rs), and `--check` fails when
api/openapi.json is not this script's output.

Usage:
  api/openapi.py            # rewrite api/openapi.json
  api/openapi.py --check    # exit 1 if api/openapi.json is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("openapi.json")

SCOPES = ["chat", "jobs", "memory", "tools", "admin", "platform"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: list[str] | None = None, closed: bool = True,
        **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def nullable(schema: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Optional properties also take null, as serde's Option does (and OpenAI's
    own specification says); `keep` names the ones that do not."""
    required = set(schema.get("required", []))
    for name, prop in schema["properties"].items():
        if name not in required and name not in keep:
            schema["properties"][name] = {"anyOf": [prop, {"type": "null"}]}
    return schema


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


HEADERS = {
    "x-correlation-id": {"$ref": "#/components/headers/CorrelationId"},
}
LIMITED_HEADERS = {
    **HEADERS,
    "RateLimit-Limit": {"$ref": "#/components/headers/RateLimitLimit"},
    "RateLimit-Remaining": {"$ref": "#/components/headers/RateLimitRemaining"},
    "RateLimit-Reset": {"$ref": "#/components/headers/RateLimitReset"},
}

PROBLEMS = {
    "400": "The request is malformed or invalid; `detail` says what to change.",
    "401": "No valid access token (`WWW-Authenticate` says why).",
    "403": "The token lacks the route's scope, or the origin is not allowed.",
    "404": "Not found (another tenant's resource is answered the same way).",
    "413": "The body is larger than the limit (256 KiB by default).",
    "406": "`Accept` must list `application/json` and `text/event-stream` (the MCP endpoint).",
    "415": "The body must be `application/json`.",
    "409": "The request conflicts with the caller's state (a limit reached, another memory with this text).",
    "422": "The `Idempotency-Key` was used before with another body.",
    "429": "Rate limited, the daily quota is used up, or the tenant's budget is spent (`budget-exceeded`, "
           "naming the reset time); `Retry-After` says when to retry.",
    "502": "The model server failed in a way retrying will not fix.",
    "503": "A dependency is unavailable or the fleet is at capacity; `Retry-After` says when to retry.",
    "504": "The request could not be completed before its deadline.",
}


def problems(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/Problem{code}"} for code in codes}


PUBLIC_ERRORS = ("400", "413", "415", "429", "503")
PROTECTED_ERRORS = ("400", "401", "403", "413", "415", "429", "503")
FLEET_ERRORS = PROTECTED_ERRORS + ("502", "504")


def operation(summary: str, op_id: str, tag: str, scope: str | None, ok: dict[str, Any],
              errors: tuple[str, ...], body: dict[str, Any] | None = None,
              parameters: list[dict[str, Any]] | None = None,
              description: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [tag],
        "responses": {**ok, **problems(*errors)},
    }
    if description:
        op["description"] = description
    if scope is None:
        op["security"] = []
    else:
        op["security"] = [{"bearerAuth": [scope]}]
        op["x-sophia-scope"] = scope
    if body is not None:
        op["requestBody"] = {"required": True, "content": json_content(body)}
    if parameters:
        op["parameters"] = parameters
    return op


def ok(status: str, description: str, schema: dict[str, Any] | None,
       limited: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": LIMITED_HEADERS if limited else HEADERS,
    }
    if schema is not None:
        response["content"] = json_content(schema)
    if extra:
        response.update(extra)
    return {status: response}


def text_ok(description: str, media: str, limited: bool) -> dict[str, Any]:
    """A 200 whose body is text of `media` (the dashboard page and its assets)."""
    return {"200": {"description": description, "headers": LIMITED_HEADERS if limited else HEADERS,
                    "content": {media: {"schema": {"type": "string"}}}}}


def path_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema}


# ------------------------------------------------------------------ schemas
TEXT_PART = obj({"type": {"const": "text"}, "text": {"type": "string"}}, ["type", "text"])
IMAGE_PART = obj({
    "type": {"const": "image_url"},
    "image_url": nullable(obj({"url": {"type": "string"},
                               "detail": {"enum": ["auto", "low", "high"]}}, ["url"])),
}, ["type", "image_url"])
REFUSAL_PART = obj({"type": {"const": "refusal"}, "refusal": {"type": "string"}},
                   ["type", "refusal"])
FUNCTION_OBJECT = nullable(obj({
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    "description": {"type": "string"},
    "parameters": {"type": "object"},
    "strict": {"type": "boolean"},
}, ["name"]))
TOOL_CALL = obj({
    "id": {"type": "string"},
    "type": {"const": "function"},
    "function": obj({"name": {"type": "string"}, "arguments": {"type": "string"}},
                    ["name", "arguments"]),
}, ["id", "type", "function"])

SCHEMAS: dict[str, Any] = {
    "Problem": obj({
        "type": {"type": "string", "description": "Stable problem type: urn:sophia:problem:<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What happened, for people."},
        "instance": {"type": "string"},
        "correlation_id": {"type": "string"},
        "retryable": {"type": "boolean"},
        "checks": {"type": "array", "items": ref("ReadinessCheck")},
        "error": obj({"message": {"type": "string"}, "type": {"type": "string"},
                      "code": {"type": "string"}}, ["message", "type", "code"],
                     description="The same, in OpenAI's error shape, so OpenAI SDKs show it."),
    }, ["type", "title", "status", "detail", "correlation_id", "retryable", "error"],
        description="RFC 9457 problem details, with Sophia's extension members."),
    "ContentPart": {"oneOf": [TEXT_PART, IMAGE_PART, REFUSAL_PART]},
    "ChatMessage": {"oneOf": [ref("SystemMessage"), ref("UserMessage"), ref("AssistantMessage"),
                              ref("ToolMessage"), ref("FunctionMessage")],
                    "discriminator": {"propertyName": "role"}},
    "SystemMessage": obj({
        "role": {"enum": ["system", "developer"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}]},
        "name": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    }, ["role", "content"]),
    "UserMessage": obj({
        "role": {"const": "user"},
        "content": {"oneOf": [{"type": "string"},
                              {"type": "array", "items": {"oneOf": [TEXT_PART, IMAGE_PART]}}]},
        "name": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    }, ["role", "content"]),
    "AssistantMessage": nullable(obj({
        "role": {"const": "assistant"},
        "content": {"oneOf": [{"type": "string"},
                              {"type": "array", "items": {"oneOf": [TEXT_PART, REFUSAL_PART]}},
                              {"type": "null"}]},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": TOOL_CALL},
        "function_call": obj({"name": {"type": "string"}, "arguments": {"type": "string"}},
                             ["name", "arguments"]),
        "refusal": {"type": "string"},
        "annotations": {"type": "array", "description": "Replayed from an answer; not forwarded."},
        "reasoning_content": {"type": "string", "description": "Replayed from an answer; not forwarded."},
    }, ["role"], anyOf=[
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array"}}},
        {"required": ["function_call"], "properties": {"function_call": {"type": "object"}}},
    ], description="Needs content, tool_calls or function_call.")),
    "ToolMessage": obj({
        "role": {"const": "tool"},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}]},
        "tool_call_id": {"type": "string"},
    }, ["role", "content", "tool_call_id"]),
    "FunctionMessage": obj({
        "role": {"const": "function"},
        "content": {"type": "string"},
        "name": {"type": "string"},
    }, ["role", "content", "name"], deprecated=True),
    "ChatCompletionRequest": nullable(obj({
        "model": {"type": "string", "examples": ["sophia-small"],
                  "description": "One of the models GET /v1/models lists."},
        "messages": {"type": "array", "minItems": 1, "maxItems": 256, "items": ref("ChatMessage")},
        "stream": {"type": "boolean"},
        "stream_options": nullable(obj({"include_usage": {"type": "boolean"},
                                        "include_obfuscation": {"type": "boolean"}},
                                       description="Only with stream: true."), keep=("include_usage",)),
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "n": {"type": "integer", "const": 1},
        "stop": {"oneOf": [{"type": "string"},
                           {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                           {"type": "null"}]},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "seed": {"type": "integer"},
        "user": {"type": "string", "maxLength": 256},
        "tools": {"type": "array", "maxItems": 128,
                  "items": obj({"type": {"const": "function"}, "function": FUNCTION_OBJECT},
                               ["type", "function"])},
        "tool_choice": {"oneOf": [
            {"enum": ["none", "auto", "required"]},
            obj({"type": {"const": "function"},
                 "function": obj({"name": {"type": "string"}}, ["name"])}, ["type", "function"]),
        ]},
        "parallel_tool_calls": {"type": "boolean"},
        "functions": {"type": "array", "maxItems": 128, "items": FUNCTION_OBJECT,
                      "deprecated": True},
        "function_call": {"oneOf": [{"enum": ["none", "auto"]},
                                    obj({"name": {"type": "string"}}, ["name"])],
                          "deprecated": True},
        "response_format": nullable(obj({"type": {"enum": ["text", "json_object", "json_schema"]},
                                         "json_schema": {"type": "object"}}, ["type"])),
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20,
                         "description": "Needs logprobs: true."},
        "logit_bias": {"type": "object", "maxProperties": 1024,
                       "propertyNames": {"pattern": "^[0-9]+$"},
                       "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
        "reasoning_effort": {"enum": ["none", "minimal", "low", "medium", "high", "xhigh"]},
        "verbosity": {"enum": ["low", "medium", "high"]},
        "metadata": {"type": "object", "maxProperties": 16,
                     "propertyNames": {"maxLength": 64},
                     "additionalProperties": {"type": "string", "maxLength": 512},
                     "description": "Accepted, not forwarded."},
        "store": {"const": False, "description": "Sophia does not keep completions; true is refused."},
        "service_tier": {"enum": ["auto", "default"]},
        "modalities": {"type": "array", "items": {"const": "text"}},
        "prediction": obj({"type": {"const": "content"},
                           "content": {"oneOf": [{"type": "string"},
                                                 {"type": "array", "items": TEXT_PART}]}},
                          ["type", "content"], description="Accepted, not forwarded."),
        "prompt_cache_key": {"type": "string", "maxLength": 1024},
        "safety_identifier": {"type": "string", "maxLength": 256},
    }, ["model", "messages"],
        description="OpenAI's Chat Completions request. Unknown fields are refused; "
                    "`audio` and `web_search_options` are refused by name.",
        allOf=[
            {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
             "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}},
            {"if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
             "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
        ]), keep=("stream",)),
    "ChatCompletion": {"type": "object", "required": ["id", "object", "choices"], "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"},
            "message": {"type": "object"},
            "finish_reason": {"type": ["string", "null"]},
        }}},
        "usage": ref("Usage"),
    }},
    "ServerSentEvent": {
        "type": "object", "required": ["data"],
        "description": "One event of a stream: `data` is a chat.completion.chunk as JSON, then "
                       "`[DONE]`; `event: error` carries an error object when the model server broke off.",
        "properties": {
            "event": {"enum": ["message", "error"]},
            "data": {"type": "string"},
            "id": {"type": "string"},
        },
    },
    "Usage": {"type": "object", "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    }},
    "EmbeddingsRequest": nullable(obj({
        "model": {"type": "string", "examples": ["sophia-embed"]},
        "input": {"oneOf": [
            {"type": "string", "minLength": 1, "maxLength": 32000},
            {"type": "array", "minItems": 1, "maxItems": 256,
             "items": {"type": "string", "minLength": 1, "maxLength": 32000}},
            {"type": "array", "minItems": 1, "maxItems": 8192,
             "items": {"type": "integer", "minimum": 0, "maximum": 4294967295}},
            {"type": "array", "minItems": 1, "maxItems": 256,
             "items": {"type": "array", "minItems": 1, "maxItems": 8192,
                       "items": {"type": "integer", "minimum": 0, "maximum": 4294967295}}},
        ], "description": "Text, texts, token IDs, or lists of token IDs; blank text is refused."},
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1, "maximum": 4096},
        "user": {"type": "string", "maxLength": 256},
    }, ["model", "input"])),
    "Embeddings": {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                            "properties": {
                                                "object": {"const": "embedding"},
                                                "index": {"type": "integer"},
                                                "embedding": {"oneOf": [
                                                    {"type": "array", "items": {"type": "number"}},
                                                    {"type": "string", "contentEncoding": "base64"}]},
                                            }}},
        "model": {"type": "string"},
        "usage": ref("Usage"),
    }},
    "Model": obj({
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    }, ["id", "object", "created", "owned_by"]),
    "ModelList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}},
                     ["object", "data"]),
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"const": "ok"}, "service": {"type": "string"}, "version": {"type": "string"}}},
    "ReadinessCheck": {"type": "object", "required": ["name", "status", "latency_ms"], "properties": {
        "name": {"type": "string"}, "status": {"enum": ["ok", "down"]},
        "latency_ms": {"type": "number"}, "reason": {"type": "string"}}},
    "Ready": {"type": "object", "required": ["status", "checks"], "properties": {
        "status": {"const": "ready"}, "checks": {"type": "array", "items": ref("ReadinessCheck")}}},
    "TokenRequest": obj({"api_key": {"type": "string", "description": "sk_<id>_<secret>"}}, ["api_key"]),
    "RefreshRequest": obj({"refresh_token": {"type": "string", "description": "rt_<family>_<id>_<secret>"}},
                          ["refresh_token"]),
    "TokenPair": obj({
        "access_token": {"type": "string"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "refresh_token": {"type": "string"},
        "scope": {"type": "string"},
    }, ["access_token", "token_type", "expires_in", "refresh_token", "scope"]),
    "Revoked": obj({"revoked": {"const": True}}, ["revoked"]),
    "NewApiKey": obj({
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "scopes": {"type": "array", "minItems": 1, "items": {"enum": SCOPES},
                   "description": "A subset of the caller's scopes; repeats count once."},
    }, ["name", "scopes"]),
    "ApiKey": {"type": "object", "required": ["id", "name", "scopes"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "revoked": {"type": "boolean"}, "created_at": {"type": "integer"},
        "api_key": {"type": "string", "description": "The plaintext key: shown once, at creation."}}},
    "ApiKeyList": obj({"keys": {"type": "array", "items": ref("ApiKey")}}, ["keys"]),
    "Quota": obj({
        "requests_per_day": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "tokens_per_day": {"type": "integer", "minimum": 0, "maximum": 1000000000000},
    }, ["requests_per_day", "tokens_per_day"]),
    "Budget": obj({
        "monthly_usd": {"type": "number", "exclusiveMinimum": 0, "maximum": 100000000,
                        "description": "USD per UTC calendar month"},
        "daily_usd": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 100000000,
                      "description": "USD per UTC day (optional)"},
        "alert_thresholds_percent": {
            "type": "array", "maxItems": 10, "items": {"type": "integer", "minimum": 1, "maximum": 1000},
            "description": "Percentages of each period's budget that alert once per period (default 50, 80, 100)"},
        "hard_limit": {"type": "boolean", "description": "At 100 %: inference answers 429 until the period "
                                                         "ends (default true)"},
    }, ["monthly_usd"]),
    "BudgetStatus": obj({
        "tenant": {"type": "string"},
        "budget": ref("Budget"),
        "periods": {"type": "array", "items": obj({
            "period": {"enum": ["monthly", "daily"]}, "id": {"type": "string"},
            "budget_usd": {"type": "number"}, "spent_usd": {"type": "number"}, "percent": {"type": "number"},
            "crossed_percent": {"type": "array", "items": {"type": "integer"}},
            "resets_at": {"type": "string", "format": "date-time"},
        }, ["period", "id", "budget_usd", "spent_usd", "percent", "crossed_percent", "resets_at"])},
        "blocked_until": {"type": ["string", "null"], "format": "date-time",
                          "description": "Inference is refused until then"},
    }, ["tenant", "budget", "periods", "blocked_until"]),
    "FlagValue": {"type": ["boolean", "number", "string"]},
    "NewFlag": obj({"value": ref("FlagValue")}, ["value"]),
    "Flag": obj({"name": {"type": "string"}, "value": ref("FlagValue")}, ["name", "value"]),
    "Flags": obj({"flags": {"type": "object", "additionalProperties": ref("FlagValue")}}, ["flags"]),
    "AuditEntry": {"type": "object", "required": ["seq", "time", "actor", "action", "target", "hash"],
                   "properties": {k: {"type": t} for k, t in [
                       ("seq", "integer"), ("time", "integer"), ("actor", "string"), ("action", "string"),
                       ("target", "string"), ("correlation_id", "string"), ("details", "string"),
                       ("prev_hash", "string"), ("hash", "string")]}},
    "AuditEntries": obj({"entries": {"type": "array", "items": ref("AuditEntry")},
                         "next_after": {"type": ["integer", "null"]}}, ["entries"]),
    "AuditVerification": {"type": "object", "required": ["tenant", "entries", "intact"], "properties": {
        "tenant": {"type": "string"}, "entries": {"type": "integer"}, "intact": {"type": "boolean"},
        "tamper": {"type": "object"}}},
    "DeadLetters": {"type": "object", "required": ["queue", "listed", "messages"], "properties": {
        "queue": {"type": "string"}, "approximate_depth": {"type": ["integer", "null"]},
        "listed": {"type": "integer"}, "messages": {"type": "array", "items": {"type": "object"}}}},
    "RedriveReport": {"type": "object", "required": ["method", "moved", "failed"], "properties": {
        "method": {"enum": ["move-task", "receive-send-delete"]}, "moved": {"type": "integer"},
        "failed": {"type": "integer"}, "task": {"type": "string"}}},
    "NewMemory": nullable(obj({
        "text": {"type": "string", "minLength": 1, "maxLength": 8000},
        "metadata": {"type": "object", "description": "At most 4096 bytes as JSON, 4 levels deep."},
        "tags": {"type": "array", "maxItems": 20, "items": {"type": "string", "minLength": 1, "maxLength": 64}},
        "namespace": {"type": "string", "pattern": "^[a-z0-9._-]{1,64}$"},
        "expires_at": {"type": "integer", "minimum": 0,
                       "description": "Unix seconds, in the future, at most ten years ahead."},
    }, ["text"])),
    "MemoryPatch": nullable(obj({
        "text": {"type": "string", "minLength": 1, "maxLength": 8000},
        "metadata": {"type": "object"},
        "tags": {"type": "array", "maxItems": 20, "items": {"type": "string", "minLength": 1, "maxLength": 64}},
        "expires_at": {"type": "integer", "minimum": 0, "description": "null clears the expiry."},
    }), keep=("text", "metadata", "tags")),
    "RecallQuery": nullable(obj({
        "query": {"type": "string", "minLength": 1, "maxLength": 8000},
        "k": {"type": "integer", "minimum": 1, "maximum": 50},
        "namespace": {"type": "string", "pattern": "^[a-z0-9._-]{1,64}$"},
        "tags": {"type": "array", "maxItems": 20, "items": {"type": "string", "minLength": 1, "maxLength": 64},
                 "description": "Every tag given must be on the memory."},
        "metadata": {"type": "object", "description": "Every key given must have this value."},
        "created_after": {"type": "integer", "minimum": 0},
        "created_before": {"type": "integer", "minimum": 0},
    }, ["query"])),
    "Memory": {"type": "object", "required": ["id", "object", "text", "namespace", "version", "vector"],
               "properties": {
                   "id": {"type": "string", "pattern": "^mem_[0-9a-f]{24}$"},
                   "object": {"const": "memory"},
                   "text": {"type": "string"}, "namespace": {"type": "string"},
                   "tags": {"type": "array", "items": {"type": "string"}},
                   "metadata": {"type": "object"},
                   "created_at": {"type": "integer"}, "updated_at": {"type": "integer"},
                   "expires_at": {"type": ["integer", "null"]},
                   "version": {"type": "integer"},
                   "vector": {"enum": ["ready", "pending"]},
                   "merged": {"enum": ["exact", "near"],
                              "description": "On a 200 of POST: the memory this one duplicated, updated."},
                   "history": {"type": "array", "items": ref("MemoryVersion"),
                               "description": "The latest 10 earlier versions, oldest first."},
                   "history_truncated": {"type": "boolean", "description": "Older versions exist."},
               }},
    "MemoryVersion": {"type": "object", "properties": {
        "version": {"type": "integer"}, "text": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}}, "metadata": {"type": "object"},
        "replaced_at": {"type": "integer"}}},
    "Recall": {"type": "object", "required": ["object", "data", "degraded", "considered"], "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "required": ["memory", "score", "signals"],
                                            "properties": {"memory": ref("Memory"), "score": {"type": "number"},
                                                           "signals": {"type": "object"}}}},
        "degraded": {"type": "boolean", "description": "The query could not be embedded: ranked by text and recency."},
        "considered": {"type": "integer"}}},
    "MemoryExport": {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": ref("Memory")},
        "next_cursor": {"type": ["string", "null"]}}},
    "Forgotten": {"type": "object", "required": ["forgotten"], "properties": {
        "object": {"const": "memory.forget_all"}, "forgotten": {"type": "integer"}}},
    "JobRequest": {"allOf": [ref("ChatCompletionRequest"),
                             {"properties": {"stream": {"const": False}}}],
                   "description": "A chat-completion request; a job is never streamed."},
    # The MCP tools' own arguments and results (api-mcp); the tools that share a
    # REST route's contract use that route's schemas above.
    "ToolMemoryForget": {"type": "object", "minProperties": 1, "maxProperties": 1,
                         "additionalProperties": False, "properties": {
                             "id": {"type": "string", "pattern": "^mem_[0-9a-f]{24}$",
                                    "description": "Forget this memory."},
                             "all": {"const": True, "description": "Forget every memory of the caller."}}},
    "ToolForgotten": obj({"forgotten": {"type": "integer", "minimum": 0}}, ["forgotten"]),
    "ToolJobSubmit": obj({
        "request": ref("JobRequest"),
        "idempotency_key": {"type": "string", "pattern": "^[!-~]{1,255}$",
                            "description": "The same key and request return the first job."},
    }, ["request"]),
    "ToolJobStatus": obj({"id": {"type": "string", "pattern": "^job_[0-9a-f]{32}$"}}, ["id"]),
    "ToolStoredMemory": {"allOf": [ref("Memory"), {
        "type": "object", "required": ["created"],
        "properties": {"created": {"type": "boolean",
                                   "description": "false: an existing memory was updated (see merged)."}}}]},
    "JsonRpcRequest": {"type": "object", "required": ["jsonrpc", "method"], "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": {"type": ["string", "integer"], "description": "Absent for a notification."},
        "method": {"type": "string", "description": "server/discover, initialize, tools/list, tools/call, ..."},
        "params": {"type": "object"}}},
    "JsonRpcResponse": {"type": "object", "required": ["jsonrpc"], "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": {"type": ["string", "integer", "null"]},
        "result": {"type": "object"},
        "error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "integer"}, "message": {"type": "string"}, "data": {}}}}},
    "ProtectedResourceMetadata": {"type": "object", "required": ["resource"], "properties": {
        "resource": {"type": "string"},
        "scopes_supported": {"type": "array", "items": {"type": "string"}},
        "bearer_methods_supported": {"type": "array", "items": {"type": "string"}},
        "resource_name": {"type": "string"},
        "resource_documentation": {"type": "string"}}},
    "McpServerRegistration": nullable(obj({
        "url": {"type": "string", "minLength": 8, "maxLength": 2048,
                "description": "The server's Streamable HTTP endpoint (https)."},
        "allowed_tools": {"type": "array", "minItems": 1, "maxItems": 100,
                          "items": {"type": "string", "pattern": "^(\\*|[A-Za-z0-9_.-]{1,128})$"},
                          "description": "The upstream tools offered, by name; [\"*\"] for all."},
        "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 900000,
                       "description": "Per call; at most MCP_UPSTREAM_MAX_TIMEOUT_MS (default 30000)."},
        "credentials": obj({
            "bearer_token": {"type": "string", "minLength": 1, "maxLength": 4096},
            "headers": {"type": "object", "maxProperties": 8,
                        "additionalProperties": {"type": "string", "maxLength": 4096}},
        }, description="Sent to the upstream server only; stored in Secrets Manager and never returned."),
    }, ["url", "allowed_tools"])),
    "McpServer": {"type": "object", "required": ["name", "url", "allowed_tools", "timeout_ms", "has_credentials"],
                  "properties": {
                      "name": {"type": "string", "description": "Its tools are offered as <name>__<tool>."},
                      "url": {"type": "string"},
                      "allowed_tools": {"type": "array", "items": {"type": "string"}},
                      "timeout_ms": {"type": "integer"},
                      "has_credentials": {"type": "boolean"},
                      "created_at": {"type": "integer"}, "updated_at": {"type": "integer"}}},
    "McpServers": obj({"servers": {"type": "array", "items": ref("McpServer")}}, ["servers"]),
    "Job": {"type": "object", "required": ["id", "object", "status", "model"], "properties": {
        "id": {"type": "string", "pattern": "^job_[0-9a-f]{32}$"},
        "object": {"const": "job"},
        "status": {"enum": ["pending", "running", "done", "failed"]},
        "model": {"type": "string"},
        "created_at": {"type": "integer"}, "updated_at": {"type": "integer"},
        "attempts": {"type": "integer"},
        "result": ref("ChatCompletion"),
        "error": obj({"code": {"type": "string"}, "message": {"type": "string"}}, ["code", "message"]),
    }},
    # One section of the dashboard: its data, or why it could not be read.
    "DashboardSection": {"type": "object", "properties": {
        "data": {},
        "as_of": {"type": ["string", "null"], "format": "date-time"},
        "stale_seconds": {"type": ["integer", "null"]},
        "error": {"type": "string"},
    }},
    "Dashboard": {"type": "object", "required": ["generated_at", "view", "sections"], "properties": {
        "generated_at": {"type": "string", "format": "date-time"},
        "view": {"type": "object"},
        "sections": {"type": "object", "required": ["usage"], "properties": {
            name: ref("DashboardSection")
            for name in ["slos", "fleet", "queues", "usage", "budgets", "jobs", "drift", "secrets", "alerts"]}},
    }},
}

# ------------------------------------------------------------------ paths
JOB_ACCEPTED = ok("202", "Accepted as a job: poll `Location`.", ref("Job"), extra={"headers": {
    **LIMITED_HEADERS,
    "Location": {"description": "/v1/jobs/{id}", "schema": {"type": "string"}},
    "Preference-Applied": {"description": "respond-async or async-fallback, when a Prefer header made it a job",
                           "schema": {"type": "string"}},
}})
PREFER = {"name": "Prefer", "in": "header", "required": False,
          "description": "`respond-async`: answer with a job (scope `jobs`); `async-fallback`: a job "
                         "instead of a 503 when the fleet is unavailable.",
          "schema": {"type": "string"}}
RESPONSE_CACHE = {"name": "x-sophia-cache", "in": "header", "required": False,
                  "description": "`use`: answer from the tenant's exact-match response cache when the tenant's "
                                 "`response_cache` flag is on and the request is deterministic (not streamed; "
                                 "`temperature` 0 or a `seed`); the answer's `x-sophia-cache` says `hit`, `miss` or "
                                 "`bypass`.",
                  "schema": {"type": "string", "enum": ["use"]}}
MCP_SERVER_NAME = path_param("name", "The tools' prefix: a lowercase letter, then up to 30 of a-z 0-9 -",
                             {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,30}$"})
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "description": "1 to 255 visible ASCII characters; the same key and body return the first "
                              "job. (Whitespace around a header value is not part of it in HTTP.)",
               "schema": {"type": "string", "pattern": "^[ \\t]*[!-~]{1,255}[ \\t]*$"}}

MEMORY_ID = path_param("id", "mem_<24 hex digits>", {"type": "string", "pattern": "^mem_[0-9a-f]{24}$"})

PATHS: dict[str, Any] = {
    "/health": {"get": operation("Liveness (no I/O)", "health", "health", None,
                                 ok("200", "Alive", ref("Health"), limited=False), ("400",))},
    "/ready": {"get": operation("Readiness of DynamoDB, SQS and every fleet endpoint", "ready", "health", None,
                                ok("200", "Every dependency answers", ref("Ready"), limited=False),
                                ("400", "503"))},
    "/openapi.json": {"get": operation("This document", "openapi", "health", None,
                                       ok("200", "OpenAPI 3.1", {"type": "object"}, limited=False), ("400",))},
    "/v1/auth/token": {"post": operation(
        "An API key for an access token and a refresh token", "createToken", "auth", None,
        ok("200", "A token pair", ref("TokenPair")), PUBLIC_ERRORS + ("401",), body=ref("TokenRequest"))},
    "/v1/auth/refresh": {"post": operation(
        "A refresh token for a new pair (presenting a spent one revokes the family)", "refreshToken", "auth",
        None, ok("200", "A new token pair", ref("TokenPair")), PUBLIC_ERRORS + ("401",),
        body=ref("RefreshRequest"))},
    "/v1/auth/revoke": {"post": operation(
        "Revoke a refresh token's family (RFC 7009: always 200)", "revokeToken", "auth", None,
        ok("200", "Revoked, or there was nothing to revoke", ref("Revoked")), PUBLIC_ERRORS,
        body=ref("RefreshRequest"))},
    "/v1/chat/completions": {"post": operation(
        "A chat completion, in one piece or streamed (`stream: true`)", "createChatCompletion", "inference",
        "chat", {"200": {
            "description": "The completion; with `stream: true`, server-sent events ending in `data: [DONE]` "
                           "(or `event: error` if the model server broke off).",
            "headers": {**LIMITED_HEADERS, "x-sophia-cache": {
                "description": "`hit`, `miss` or `bypass`, when the request asked for the response cache",
                "schema": {"enum": ["hit", "miss", "bypass"]}}},
            "content": {"application/json": {"schema": ref("ChatCompletion")},
                        "text/event-stream": {"schema": ref("ServerSentEvent")}},
        }, **JOB_ACCEPTED}, FLEET_ERRORS, body=ref("ChatCompletionRequest"),
        parameters=[PREFER, IDEMPOTENCY, RESPONSE_CACHE])},
    "/v1/embeddings": {"post": operation(
        "Embeddings of text or token IDs", "createEmbeddings", "inference", "chat",
        ok("200", "One vector per input, in input order", ref("Embeddings")), FLEET_ERRORS,
        body=ref("EmbeddingsRequest"))},
    "/v1/models": {"get": operation("The models served here", "listModels", "inference", "chat",
                                    ok("200", "Chat and embedding models", ref("ModelList")), PROTECTED_ERRORS)},
    "/v1/models/{id}": {"get": operation(
        "One model", "getModel", "inference", "chat", ok("200", "The model", ref("Model")),
        PROTECTED_ERRORS + ("404",), parameters=[path_param("id", "A model ID", {"type": "string"})])},
    "/v1/memory": {
        "post": operation(
            "Store a memory (or update the one it duplicates)", "storeMemory", "memory", "memory",
            {**ok("201", "Stored", ref("Memory"), extra={"headers": {**LIMITED_HEADERS,
                "Location": {"description": "/v1/memory/{id}", "schema": {"type": "string"}}}}),
             **ok("200", "An exact or near duplicate was updated (see `merged`), or a replay", ref("Memory"))},
            PROTECTED_ERRORS + ("409", "422"), body=ref("NewMemory"), parameters=[IDEMPOTENCY]),
        "delete": operation(
            "Forget every memory of the caller (audited)", "forgetAllMemories", "memory", "memory",
            ok("200", "How many memories were deleted", ref("Forgotten")), PROTECTED_ERRORS),
    },
    "/v1/memory/search": {"post": operation(
        "Hybrid recall: vector, lexical and recency, fused", "recallMemories", "memory", "memory",
        ok("200", "The best memories with their scores and signals", ref("Recall")), PROTECTED_ERRORS,
        body=ref("RecallQuery"))},
    "/v1/memory/export": {"get": operation(
        "Every memory of the caller with its latest earlier versions, 10 a page", "exportMemories", "memory", "memory",
        ok("200", "A page; next_cursor is null on the last", ref("MemoryExport")), PROTECTED_ERRORS,
        parameters=[{"name": "cursor", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^mem_[0-9a-f]{24}$"}}])},
    "/v1/memory/{id}": {
        "get": operation("One memory with its history", "getMemory", "memory", "memory",
                         ok("200", "The memory", ref("Memory")), PROTECTED_ERRORS + ("404",),
                         parameters=[MEMORY_ID]),
        "patch": operation("Change a memory (the previous version goes to its history)", "patchMemory",
                           "memory", "memory", ok("200", "The memory now", ref("Memory")),
                           PROTECTED_ERRORS + ("404", "409"), body=ref("MemoryPatch"), parameters=[MEMORY_ID]),
        "delete": operation("Delete a memory with its vector and history", "deleteMemory", "memory", "memory",
                            {"204": {"description": "Deleted", "headers": LIMITED_HEADERS}},
                            PROTECTED_ERRORS + ("404",), parameters=[MEMORY_ID]),
    },
    "/v1/jobs": {"post": operation(
        "A chat completion as an asynchronous job", "createJob", "jobs", "jobs", JOB_ACCEPTED,
        PROTECTED_ERRORS + ("422",), body=ref("JobRequest"), parameters=[IDEMPOTENCY])},
    "/v1/jobs/{id}": {"get": operation(
        "A job's status and, once done, its result", "getJob", "jobs", "jobs",
        ok("200", "The job", ref("Job")), PROTECTED_ERRORS + ("404",),
        parameters=[path_param("id", "job_<32 hex digits>", {"type": "string", "pattern": "^job_[0-9a-f]{32}$"})])},
    "/v1/dashboard": {"get": operation(
        "The operator's view: usage, cost, budget and job counts (own tenant); with scope platform also every tenant, "
        "SLOs, fleet, queues, drift, secret ages and alerts", "getDashboard", "admin", "admin",
        ok("200", "Every section, each with its data and age or an error", ref("Dashboard")),
        PROTECTED_ERRORS)},
    "/dashboard": {"get": operation(
        "The dashboard web page: a sign-in form (API key → access token kept in memory) and its script",
        "getDashboardPage", "admin", None, text_ok("The page", "text/html", False), ("400",))},
    "/dashboard/app.js": {"get": operation(
        "The dashboard page's script", "getDashboardScript", "admin", None,
        text_ok("The script", "text/javascript", False), ("400",))},
    "/dashboard/app.css": {"get": operation(
        "The dashboard page's stylesheet", "getDashboardStyles", "admin", None,
        text_ok("The stylesheet", "text/css", False), ("400",))},
    "/dashboard/view": {"get": operation(
        "The dashboard document as the HTML the page shows (same sections and scopes as /v1/dashboard)",
        "getDashboardView", "admin", "admin", text_ok("The rendered sections", "text/html", True),
        PROTECTED_ERRORS)},
    "/v1/admin/keys": {
        "post": operation("Create an API key (scopes a subset of the caller's)", "createApiKey", "admin", "admin",
                          ok("201", "The key, with its plaintext shown once", ref("ApiKey")), PROTECTED_ERRORS,
                          body=ref("NewApiKey")),
        "get": operation("The tenant's API keys", "listApiKeys", "admin", "admin",
                         ok("200", "Keys, without secrets", ref("ApiKeyList")), PROTECTED_ERRORS),
    },
    "/v1/admin/keys/{id}": {"delete": operation(
        "Revoke an API key", "revokeApiKey", "admin", "admin",
        {"204": {"description": "Revoked", "headers": LIMITED_HEADERS}}, PROTECTED_ERRORS + ("404",),
        parameters=[path_param("id", "16 hex digits", {"type": "string", "pattern": "^[0-9a-f]{16}$"})])},
    "/v1/admin/quota": {"get": operation("The tenant's daily quota", "getQuota", "admin", "admin",
                                         ok("200", "The quota", ref("Quota")), PROTECTED_ERRORS)},
    "/v1/admin/tenants/{tenant}/quota": {"put": operation(
        "Set a tenant's daily quota (platform)", "setQuota", "admin", "platform",
        ok("200", "The quota now", ref("Quota")), PROTECTED_ERRORS, body=ref("Quota"),
        parameters=[path_param("tenant", "1 to 64 letters, digits, - or _",
                               {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})])},
    "/v1/admin/budget": {"get": operation(
        "The tenant's cost budget and its spend per period", "getBudget", "admin", "admin",
        ok("200", "The budget and its status", ref("BudgetStatus")), PROTECTED_ERRORS + ("404",))},
    "/v1/admin/tenants/{tenant}/budget": {
        "put": operation(
            "Set a tenant's cost budget (platform; applied at once, audited)", "setBudget", "admin", "platform",
            ok("200", "The budget and its status now", ref("BudgetStatus")), PROTECTED_ERRORS, body=ref("Budget"),
            parameters=[path_param("tenant", "1 to 64 letters, digits, - or _",
                                   {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})]),
        "delete": operation(
            "Remove a tenant's cost budget and any block it made (platform; audited)", "deleteBudget", "admin",
            "platform", {"204": {"description": "Removed", "headers": LIMITED_HEADERS}},
            PROTECTED_ERRORS + ("404",),
            parameters=[path_param("tenant", "1 to 64 letters, digits, - or _",
                                   {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})]),
    },
    "/v1/admin/flags": {"get": operation("The tenant's feature flags", "listFlags", "admin", "admin",
                                         ok("200", "Flags by name", ref("Flags")), PROTECTED_ERRORS)},
    "/v1/admin/flags/{name}": {"put": operation(
        "Set a feature flag", "setFlag", "admin", "admin", ok("200", "The flag now", ref("Flag")),
        PROTECTED_ERRORS, body=ref("NewFlag"),
        parameters=[path_param("name", "1 to 64 of a-z 0-9 . _ -",
                               {"type": "string", "pattern": "^[a-z0-9._-]{1,64}$"})])},
    "/v1/admin/audit": {"get": operation(
        "The tenant's audit log, a page at a time (reading it is audited)", "readAudit", "admin", "admin",
        ok("200", "Entries in order; next_after continues", ref("AuditEntries")), PROTECTED_ERRORS,
        parameters=[
            {"name": "after", "in": "query", "required": False,
             "description": "Entries after this sequence number (default 0: from the start)",
             "schema": {"type": "integer", "minimum": 0}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        ])},
    "/v1/admin/audit/verify": {"get": operation(
        "Verify the audit log's hash chain", "verifyAudit", "admin", "admin",
        ok("200", "Whether it is intact, and where it breaks", ref("AuditVerification")), PROTECTED_ERRORS)},
    "/v1/admin/queues/{queue}/dead-letters": {"get": operation(
        "Peek at a queue's dead letters without losing them (platform)", "listDeadLetters", "admin", "platform",
        ok("200", "Up to 100 messages", ref("DeadLetters")), PROTECTED_ERRORS + ("404",),
        parameters=[path_param("queue", "A queue with a dead-letter queue, e.g. jobs", {"type": "string"})])},
    "/v1/admin/mcp-servers": {"get": operation(
        "The tenant's upstream MCP servers (credentials never shown)", "listMcpServers", "admin", "admin",
        ok("200", "Every registration", ref("McpServers")), PROTECTED_ERRORS)},
    "/v1/admin/mcp-servers/{name}": {
        "put": operation("Register or replace an upstream MCP server (audited)", "putMcpServer", "admin", "admin",
                         ok("200", "The registration", ref("McpServer")), PROTECTED_ERRORS + ("409",),
                         body=ref("McpServerRegistration"), parameters=[MCP_SERVER_NAME]),
        "get": operation("One upstream MCP server", "getMcpServer", "admin", "admin",
                         ok("200", "The registration", ref("McpServer")), PROTECTED_ERRORS + ("404",),
                         parameters=[MCP_SERVER_NAME]),
        "delete": operation("Remove an upstream MCP server and its credentials (audited)", "deleteMcpServer",
                            "admin", "admin", ok("204", "Removed", None), PROTECTED_ERRORS + ("404",),
                            parameters=[MCP_SERVER_NAME]),
    },
    "/mcp": {"post": operation(
        "The MCP endpoint (Streamable HTTP, revisions 2026-07-28 and 2025-11-25/2025-06-18)", "mcp", "tools",
        "tools", {
            **ok("200", "A JSON-RPC response (protocol errors included, e.g. -32602 for an unknown tool)",
                 ref("JsonRpcResponse")),
            **ok("202", "A notification, accepted", None),
            "404": {"description": "An unknown method (-32601)", "content": json_content(ref("JsonRpcResponse"))},
            "400": {"description": "A JSON-RPC error for a body that is not valid JSON-RPC (-32700, -32600, "
                                   "-32602, -32020, -32022), or a problem for a request refused before the protocol",
                    "headers": HEADERS,
                    "content": {**json_content(ref("JsonRpcResponse")),
                                "application/problem+json": {"schema": ref("Problem")}}},
        }, ("401", "403", "406", "413", "415", "429", "503"), body=ref("JsonRpcRequest"),
        description="Tools: memory_store, memory_recall, memory_forget, job_submit, job_status, chat_complete "
                    "(each needs its REST route's scope too) and the tenant's registered upstream servers' "
                    "tools as <server>__<tool>. A 400 is a JSON-RPC error when the body was JSON-RPC "
                    "(-32700 parse error, -32600 invalid request, -32602 params not an object, -32020 header "
                    "mismatch, -32022 unsupported protocol version). 401 answers carry WWW-Authenticate with "
                    "resource_metadata.")},
    "/.well-known/oauth-protected-resource": {"get": operation(
        "RFC 9728 protected-resource metadata of the MCP endpoint", "protectedResource", "tools", None,
        ok("200", "The metadata", ref("ProtectedResourceMetadata"), limited=False), PUBLIC_ERRORS)},
    "/.well-known/oauth-protected-resource/mcp": {"get": operation(
        "The same metadata at the RFC 9728 path for the resource /mcp", "protectedResourceMcp", "tools", None,
        ok("200", "The metadata", ref("ProtectedResourceMetadata"), limited=False), PUBLIC_ERRORS)},
    "/v1/admin/queues/{queue}/redrive": {"post": operation(
        "Move a queue's dead letters back (platform)", "redrive", "admin", "platform",
        ok("200", "What was moved", ref("RedriveReport")), PROTECTED_ERRORS + ("404",),
        parameters=[path_param("queue", "A queue with a dead-letter queue, e.g. jobs", {"type": "string"})])},
}


def document() -> dict[str, Any]:
    responses = {}
    for code, description in PROBLEMS.items():
        headers = dict(HEADERS)
        if code in ("429", "503", "504"):
            headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
        if code in ("401", "403"):
            headers["WWW-Authenticate"] = {"description": "RFC 6750 challenge", "schema": {"type": "string"}}
        responses[f"Problem{code}"] = {
            "description": description,
            "headers": headers,
            "content": {"application/problem+json": {"schema": ref("Problem")}},
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sophia API",
            "version": "1.0.0",
            "description": "Sophia's one base URL: OpenAI-compatible inference (chat, embeddings, models), "
                           "asynchronous jobs, authentication and administration. Every error is "
                           "`application/problem+json` (RFC 9457) with a stable `type` and the correlation ID; "
                           "every answer carries `x-correlation-id`; protected routes answer with "
                           "`RateLimit-*` headers.",
        },
        "servers": [{"url": "/", "description": "This deployment (the REST API's stage, or make dev's :9000)"}],
        "tags": [{"name": t} for t in ["health", "auth", "inference", "memory", "jobs", "tools", "admin"]],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "headers": {
                "CorrelationId": {"description": "The request's correlation ID (yours if safe, else a new one)",
                                  "schema": {"type": "string"}},
                "RateLimitLimit": {"description": "Requests allowed in a burst", "schema": {"type": "integer"}},
                "RateLimitRemaining": {"description": "Requests left in the burst", "schema": {"type": "integer"}},
                "RateLimitReset": {"description": "Seconds until the burst is full again",
                                   "schema": {"type": "integer"}},
                "RetryAfter": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}},
            },
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "An access token from POST /v1/auth/token; its scopes decide "
                                              f"the routes ({', '.join(SCOPES)})."},
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run api/openapi.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
