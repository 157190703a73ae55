//! The checks made before rmcp sees a body, so that every malformed message
//! gets the JSON-RPC error the specifications name (rmcp answers some of these
//! with a plain-text 415, or as an unknown method):
//!
//! - not JSON: `-32700` parse error (HTTP 400);
//! - a batch array, a non-object, `jsonrpc` other than `"2.0"`, a method that
//!   is not a string, an `id` that is not a string or an integer: `-32600`
//!   invalid request (HTTP 400; batching left MCP in 2025-06-18);
//! - `params` that are not an object (null included): `-32602` invalid params
//!   with HTTP 400 (the message is not one MCP's schema allows); a `tools/call`
//!   without a string `name` or with `arguments` that are not an object:
//!   `-32602` in a JSON-RPC answer;
//! - an `MCP-Protocol-Version` this server does not implement: `-32022`
//!   (`UnsupportedProtocolVersion`, HTTP 400) with the supported versions.
//!
//! Header/body mismatches (`-32020`) and the rest are rmcp's.

use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// A refusal: the HTTP status and the JSON-RPC error response.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: StatusCode,
    pub body: Value,
}

fn refusal(
    status: StatusCode,
    id: Value,
    code: i64,
    message: String,
    data: Option<Value>,
) -> Refusal {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    Refusal {
        status,
        body: json!({"jsonrpc": "2.0", "id": id, "error": error}),
    }
}

/// `None` when the message may go on to rmcp.
pub fn check(headers: &HeaderMap, body: &[u8], supported: &[&str]) -> Option<Refusal> {
    let bad = StatusCode::BAD_REQUEST;
    let message: Value = match serde_json::from_slice(body) {
        Ok(message) => message,
        Err(error) => {
            return Some(refusal(
                bad,
                Value::Null,
                PARSE_ERROR,
                format!("Parse error: {error}"),
                None,
            ));
        }
    };
    let Value::Object(object) = &message else {
        let why = if message.is_array() {
            "Invalid Request: batches are not supported (JSON-RPC batching left MCP in 2025-06-18)"
        } else {
            "Invalid Request: a message is a JSON object"
        };
        return Some(refusal(
            bad,
            Value::Null,
            INVALID_REQUEST,
            why.to_owned(),
            None,
        ));
    };
    let id = match object.get("id") {
        None => Value::Null,
        Some(id @ Value::String(_)) => id.clone(),
        Some(id @ Value::Number(n)) if n.is_i64() || n.is_u64() => id.clone(),
        Some(_) => {
            return Some(refusal(
                bad,
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: id is a string or an integer".to_owned(),
                None,
            ));
        }
    };
    if object.get("jsonrpc") != Some(&Value::String("2.0".to_owned())) {
        return Some(refusal(
            bad,
            id,
            INVALID_REQUEST,
            "Invalid Request: jsonrpc must be \"2.0\"".to_owned(),
            None,
        ));
    }
    let method = match object.get("method") {
        Some(Value::String(method)) => method.as_str(),
        // A response: rmcp answers that a stateless server takes none.
        None if object.contains_key("result") || object.contains_key("error") => return None,
        _ => {
            return Some(refusal(
                bad,
                id,
                INVALID_REQUEST,
                "Invalid Request: method must be a string".to_owned(),
                None,
            ));
        }
    };
    if let Some(version) = headers.get("mcp-protocol-version") {
        let requested = version.to_str().unwrap_or_default();
        if !supported.contains(&requested) {
            return Some(refusal(
                bad,
                id,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version".to_owned(),
                Some(json!({"supported": supported, "requested": requested})),
            ));
        }
    }
    let invalid_params = |id: Value, why: &str| {
        Some(refusal(
            StatusCode::OK,
            id,
            INVALID_PARAMS,
            format!("Invalid params: {why}"),
            None,
        ))
    };
    let params = match object.get("params") {
        None => None,
        Some(Value::Object(params)) => Some(params),
        // Not a message MCP's schema allows (params is an object or absent):
        // the input is refused with HTTP 400, as for other malformed messages.
        Some(_) => {
            return Some(refusal(
                bad,
                id,
                INVALID_PARAMS,
                "Invalid params: params must be an object".to_owned(),
                None,
            ));
        }
    };
    if method == "tools/call" {
        let Some(params) = params else {
            return invalid_params(id, "tools/call needs params with a name");
        };
        if !params.get("name").is_some_and(Value::is_string) {
            return invalid_params(id, "name must be the tool's name, a string");
        }
        if !matches!(
            params.get("arguments"),
            None | Some(Value::Null) | Some(Value::Object(_))
        ) {
            return invalid_params(id, "arguments must be an object");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUPPORTED: [&str; 2] = ["2026-07-28", "2025-11-25"];

    fn code(body: &str) -> Option<(u16, i64)> {
        code_with(&HeaderMap::new(), body)
    }

    fn code_with(headers: &HeaderMap, body: &str) -> Option<(u16, i64)> {
        check(headers, body.as_bytes(), &SUPPORTED)
            .map(|r| (r.status.as_u16(), r.body["error"]["code"].as_i64().unwrap()))
    }

    #[test]
    fn malformed_messages_get_their_json_rpc_codes() {
        assert_eq!(code("{not json"), Some((400, PARSE_ERROR)));
        assert_eq!(code(""), Some((400, PARSE_ERROR)));
        assert_eq!(
            code(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#),
            Some((400, INVALID_REQUEST))
        );
        assert_eq!(code("42"), Some((400, INVALID_REQUEST)));
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Some((400, INVALID_REQUEST))
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            Some((400, INVALID_REQUEST))
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#),
            Some((400, INVALID_REQUEST))
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
            Some((400, INVALID_PARAMS))
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":null}"#),
            Some((400, INVALID_PARAMS))
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#),
            Some((200, INVALID_PARAMS))
        );
        assert_eq!(
            code(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":"a"}}"#
            ),
            Some((200, INVALID_PARAMS))
        );
    }

    #[test]
    fn valid_messages_pass_and_keep_their_id() {
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#),
            None
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            None
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#), None);
        let refused = check(
            &HeaderMap::new(),
            br#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{}}"#,
            &SUPPORTED,
        )
        .unwrap();
        assert_eq!(refused.body["id"], "abc");
    }

    #[test]
    fn an_unknown_protocol_version_lists_the_supported_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("mcp-protocol-version", "1999-01-01".parse().unwrap());
        let refused = check(
            &headers,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            &SUPPORTED,
        )
        .unwrap();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.body["error"]["code"], UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(refused.body["error"]["data"]["requested"], "1999-01-01");
        assert_eq!(refused.body["error"]["data"]["supported"][0], "2026-07-28");
        headers.insert("mcp-protocol-version", "2025-11-25".parse().unwrap());
        assert_eq!(
            code_with(
                &headers,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#
            ),
            None
        );
    }
}
