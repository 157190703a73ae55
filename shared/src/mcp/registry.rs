//! The upstream MCP servers of a tenant: registered by its admin (api-admin),
//! read by the gateway (api-mcp).
//!
//! A registration lives in the auth table beside the tenant's flags
//! (`tenant#<t>`, `mcp-server#<name>`); its credentials live in Secrets
//! Manager (`<MCP_SECRET_PREFIX><tenant>/<name>`) and are never returned by
//! any route. The name is the tools' prefix: upstream tool `echo` of server
//! `everything` is offered as `everything__echo`.
//!
//! Upstream URLs are an SSRF surface: https only, and no loopback, private,
//! link-local or `localhost` hosts unless `MCP_ALLOW_PRIVATE_UPSTREAMS` (dev and
//! tests); on Lambda `127.0.0.1:9001` is the runtime API.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::aws::dynamo::{n, s};
use crate::clock::now_secs;
use crate::mcp::McpSettings;
use crate::problem::ApiError;

/// Tool names that a prefix must not shadow.
const RESERVED: [&str; 4] = ["memory", "job", "chat", "sophia"];
/// Headers the gateway sets itself.
const OWN_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "content-type",
    "accept",
    "connection",
    "transfer-encoding",
    "traceparent",
    "x-correlation-id",
    "mcp-session-id",
    "mcp-protocol-version",
    "authorization",
];
const SEPARATOR: &str = "__";

/// One registration as stored (credentials aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    pub tenant: String,
    pub name: String,
    pub url: String,
    /// Upstream tool names, or `*` for all.
    pub allowed_tools: Vec<String>,
    pub timeout_ms: u64,
    pub secret_id: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl UpstreamServer {
    pub fn to_public_json(&self) -> Value {
        json!({
            "name": self.name,
            "url": self.url,
            "allowed_tools": self.allowed_tools,
            "timeout_ms": self.timeout_ms,
            "has_credentials": self.secret_id.is_some(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    pub fn allows(&self, tool: &str) -> bool {
        self.allowed_tools.iter().any(|t| t == "*" || t == tool)
    }

    /// The name a client sees for upstream tool `tool`.
    pub fn exposed(&self, tool: &str) -> String {
        format!("{}{SEPARATOR}{tool}", self.name)
    }

    /// The breaker, bulkhead and session key (one per tenant and server).
    pub fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.name)
    }
}

/// Splits an exposed name into (server, upstream tool).
pub fn split_exposed(name: &str) -> Option<(&str, &str)> {
    name.split_once(SEPARATOR)
        .filter(|(server, tool)| valid_name(server) && !tool.is_empty())
}

/// `PUT /v1/admin/mcp-servers/{name}`'s body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub url: String,
    pub allowed_tools: Vec<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub credentials: Option<Credentials>,
}

/// What the gateway sends upstream, and nothing else of the caller's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

// Never print a credential, not even in a debug log.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "headers",
                &self.headers.as_ref().map(|h| h.keys().collect::<Vec<_>>()),
            )
            .finish()
    }
}

impl Credentials {
    /// The request headers these credentials add.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .flatten()
            .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
            .collect();
        if let Some(token) = &self.bearer_token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        headers
    }
}

/// A server name: the tools' prefix.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 31
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.contains(SEPARATOR)
}

fn valid_tool_name(tool: &str) -> bool {
    tool == "*"
        || ((1..=128).contains(&tool.len())
            && tool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
}

fn valid_header_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 4096
        && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

fn private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| private_ip(IpAddr::V4(v4)))
        }
    }
}

/// Checks a registration against the settings; the first problem is named.
pub fn validate(
    settings: &McpSettings,
    name: &str,
    registration: &Registration,
) -> Result<(), ApiError> {
    if !valid_name(name) {
        return Err(ApiError::invalid(
            "a server name is a lowercase letter, then up to 30 of a-z, 0-9 and '-' (no \"__\")",
        ));
    }
    if RESERVED.contains(&name) {
        return Err(ApiError::invalid(format!(
            "{name} is reserved for Sophia's own tools; choose another name"
        )));
    }
    check_url(settings, &registration.url)?;
    let tools = &registration.allowed_tools;
    if tools.is_empty() || tools.len() > 100 {
        return Err(ApiError::invalid(
            "allowed_tools lists 1 to 100 upstream tool names, or [\"*\"] for all",
        ));
    }
    if let Some(bad) = tools.iter().find(|tool| !valid_tool_name(tool)) {
        return Err(ApiError::invalid(format!(
            "allowed_tools: {bad:?} is not a tool name (1 to 128 of A-Z a-z 0-9 _ . -)"
        )));
    }
    if let Some(timeout) = registration.timeout_ms {
        let max = settings.max_upstream_timeout.as_millis() as u64;
        if !(100..=max).contains(&timeout) {
            return Err(ApiError::invalid(format!(
                "timeout_ms must be between 100 and {max} (MCP_UPSTREAM_MAX_TIMEOUT_MS)"
            )));
        }
    }
    if let Some(credentials) = &registration.credentials {
        if let Some(token) = &credentials.bearer_token
            && !valid_header_value(token)
        {
            return Err(ApiError::invalid(
                "credentials.bearer_token must be 1 to 4096 visible ASCII characters",
            ));
        }
        let headers = credentials.headers.iter().flatten();
        if credentials.headers.as_ref().is_some_and(|h| h.len() > 8) {
            return Err(ApiError::invalid(
                "credentials.headers has at most 8 headers",
            ));
        }
        for (header, value) in headers {
            let lower = header.to_ascii_lowercase();
            let token_chars = !header.is_empty()
                && header.len() <= 64
                && header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token_chars || OWN_HEADERS.contains(&lower.as_str()) || lower.starts_with("mcp-") {
                return Err(ApiError::invalid(format!(
                    "credentials.headers: {header:?} is not a header the gateway lets you set"
                )));
            }
            if !valid_header_value(value) {
                return Err(ApiError::invalid(format!(
                    "credentials.headers.{header}: the value must be 1 to 4096 visible ASCII characters"
                )));
            }
        }
        if credentials.bearer_token.is_none() && credentials.headers.is_none() {
            return Err(ApiError::invalid(
                "credentials needs bearer_token or headers (leave it out for none)",
            ));
        }
    }
    Ok(())
}

fn check_url(settings: &McpSettings, raw: &str) -> Result<(), ApiError> {
    let refuse = |why: &str| ApiError::invalid(format!("url: {why}"));
    if raw.len() > 2048 {
        return Err(refuse("at most 2048 characters"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| refuse(&format!("not a URL ({e})")))?;
    let private_ok = settings.allow_private_upstreams;
    match url.scheme() {
        "https" => {}
        "http" if private_ok => {}
        _ => return Err(refuse("must be https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("put credentials in credentials, not in the URL"));
    }
    if url.fragment().is_some() {
        return Err(refuse("must not have a fragment"));
    }
    let private = match url.host() {
        None => return Err(refuse("needs a host")),
        Some(url::Host::Ipv4(ip)) => private_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => private_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain == "localhost"
                || domain.ends_with(".localhost")
                || domain.ends_with(".internal")
                || domain.ends_with(".local")
        }
    };
    if private && !private_ok {
        return Err(refuse(
            "loopback, private and link-local hosts are refused (MCP_ALLOW_PRIVATE_UPSTREAMS)",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("the registry could not be read or written: {0}")]
    Storage(String),
    #[error("the credentials of {server} could not be read: {reason}")]
    Credentials { server: String, reason: String },
}

impl RegistryError {
    pub fn to_api_error(&self) -> ApiError {
        tracing::warn!(error = %self, "MCP server registry");
        ApiError::DependencyUnavailable {
            dependency: "the MCP server registry",
            retry_after_secs: 1,
        }
    }
}

/// Registrations and their credentials.
#[derive(Debug)]
pub struct Registry {
    dynamodb: aws_sdk_dynamodb::Client,
    secrets: aws_sdk_secretsmanager::Client,
    table: String,
    pub settings: McpSettings,
    /// Credentials by secret, with the registration version they belong to.
    credentials: Mutex<HashMap<String, (u64, Credentials)>>,
}

fn sort_key(name: &str) -> String {
    format!("mcp-server#{name}")
}

fn partition(tenant: &str) -> String {
    format!("tenant#{tenant}")
}

impl Registry {
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        secrets: aws_sdk_secretsmanager::Client,
        table: String,
        settings: McpSettings,
    ) -> Self {
        Self {
            dynamodb,
            secrets,
            table,
            settings,
            credentials: Mutex::new(HashMap::new()),
        }
    }

    fn secret_id(&self, tenant: &str, name: &str) -> String {
        format!("{}{tenant}/{name}", self.settings.secret_prefix)
    }

    /// Every registration of `tenant`, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<UpstreamServer>, RegistryError> {
        let query = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(&partition(tenant)))
            .expression_attribute_values(":prefix", s("mcp-server#"))
            .consistent_read(true);
        let items = crate::aws::dynamo::query_all(query)
            .await
            .map_err(|e| RegistryError::Storage(crate::aws::dynamo::error_text(e)))?;
        Ok(items
            .iter()
            .filter_map(|item| from_item(tenant, item))
            .collect())
    }

    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<UpstreamServer>, RegistryError> {
        if !valid_name(name) {
            return Ok(None);
        }
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&partition(tenant)))
            .key("sk", s(&sort_key(name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| RegistryError::Storage(crate::aws::dynamo::error_text(e)))?;
        Ok(output.item().and_then(|item| from_item(tenant, item)))
    }

    /// Registers or replaces `name`: the credentials first (a registration never
    /// points at a secret that is not there), then the item. A replacement
    /// without credentials removes the old ones.
    pub async fn put(
        &self,
        tenant: &str,
        name: &str,
        registration: &Registration,
    ) -> Result<UpstreamServer, ApiError> {
        validate(&self.settings, name, registration)?;
        let existing = self.get(tenant, name).await.map_err(|e| e.to_api_error())?;
        if existing.is_none() {
            let count = self.list(tenant).await.map_err(|e| e.to_api_error())?.len();
            if count >= self.settings.max_servers {
                return Err(ApiError::Conflict {
                    reason: format!(
                        "the tenant has {count} MCP servers, the limit (MCP_MAX_SERVERS); remove one first"
                    ),
                });
            }
        }
        let secret_id = self.secret_id(tenant, name);
        match &registration.credentials {
            Some(credentials) => self
                .write_secret(&secret_id, credentials)
                .await
                .map_err(|e| e.to_api_error())?,
            None => self
                .delete_secret(&secret_id)
                .await
                .map_err(|e| e.to_api_error())?,
        }
        let now = now_secs();
        let server = UpstreamServer {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            url: registration.url.clone(),
            allowed_tools: registration.allowed_tools.clone(),
            timeout_ms: registration
                .timeout_ms
                .unwrap_or(self.settings.default_upstream_timeout.as_millis() as u64),
            secret_id: registration.credentials.as_ref().map(|_| secret_id),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            // Strictly increasing per registration: it versions the credentials cache.
            updated_at: existing.as_ref().map_or(now, |e| now.max(e.updated_at + 1)),
        };
        let mut put = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&partition(tenant)))
            .item("sk", s(&sort_key(name)))
            .item("url", s(&server.url))
            .item(
                "allowed_tools",
                AttributeValue::L(server.allowed_tools.iter().map(|t| s(t)).collect()),
            )
            .item("timeout_ms", n(server.timeout_ms))
            .item("created_at", n(server.created_at))
            .item("updated_at", n(server.updated_at));
        if let Some(secret) = &server.secret_id {
            put = put.item("secret_id", s(secret));
        }
        put.send().await.map_err(|e| {
            RegistryError::Storage(crate::aws::dynamo::error_text(e)).to_api_error()
        })?;
        Ok(server)
    }

    /// Removes `name` and its credentials; false when there was none.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<bool, RegistryError> {
        if !valid_name(name) {
            return Ok(false);
        }
        let output = self
            .dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&partition(tenant)))
            .key("sk", s(&sort_key(name)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| RegistryError::Storage(crate::aws::dynamo::error_text(e)))?;
        self.delete_secret(&self.secret_id(tenant, name)).await?;
        Ok(output.attributes().is_some_and(|a| !a.is_empty()))
    }

    /// The credentials of `server`, cached per registration version.
    pub async fn credentials(
        &self,
        server: &UpstreamServer,
    ) -> Result<Option<Credentials>, RegistryError> {
        let Some(secret_id) = &server.secret_id else {
            return Ok(None);
        };
        if let Ok(cache) = self.credentials.lock()
            && let Some((version, credentials)) = cache.get(secret_id)
            && *version == server.updated_at
        {
            return Ok(Some(credentials.clone()));
        }
        let failed = |reason: String| RegistryError::Credentials {
            server: server.name.clone(),
            reason,
        };
        let output = self
            .secrets
            .get_secret_value()
            .secret_id(secret_id)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .map_err(|e| failed(crate::aws::error_text(e)))?;
        let credentials: Credentials =
            serde_json::from_str(output.secret_string().unwrap_or_default())
                .map_err(|e| failed(format!("the secret is not credentials JSON: {e}")))?;
        if let Ok(mut cache) = self.credentials.lock() {
            cache.insert(secret_id.clone(), (server.updated_at, credentials.clone()));
        }
        Ok(Some(credentials))
    }

    async fn write_secret(
        &self,
        secret_id: &str,
        credentials: &Credentials,
    ) -> Result<(), RegistryError> {
        let storage = |e: String| RegistryError::Storage(format!("secret {secret_id}: {e}"));
        let value = serde_json::to_string(credentials).map_err(|e| storage(e.to_string()))?;
        let created = self
            .secrets
            .create_secret()
            .name(secret_id)
            .description("Credentials of a tenant's upstream MCP server (api-admin)")
            .secret_string(&value)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_exists_exception()) =>
            {
                self.secrets
                    .put_secret_value()
                    .secret_id(secret_id)
                    .secret_string(value)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| storage(crate::aws::error_text(e)))
            }
            Err(error) => Err(storage(crate::aws::error_text(error))),
        }
    }

    async fn delete_secret(&self, secret_id: &str) -> Result<(), RegistryError> {
        let deleted = self
            .secrets
            .delete_secret()
            .secret_id(secret_id)
            .force_delete_without_recovery(true)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(error) => Err(RegistryError::Storage(format!(
                "secret {secret_id}: {}",
                crate::aws::error_text(error)
            ))),
        }
    }
}

fn from_item(tenant: &str, item: &HashMap<String, AttributeValue>) -> Option<UpstreamServer> {
    let text = |key: &str| item.get(key).and_then(|v| v.as_s().ok()).cloned();
    let number = |key: &str| {
        item.get(key)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
    };
    Some(UpstreamServer {
        tenant: tenant.to_owned(),
        name: text("sk")?.strip_prefix("mcp-server#")?.to_owned(),
        url: text("url")?,
        allowed_tools: item
            .get("allowed_tools")
            .and_then(|v| v.as_l().ok())
            .map(|list| list.iter().filter_map(|t| t.as_s().ok().cloned()).collect())
            .unwrap_or_default(),
        timeout_ms: number("timeout_ms")?,
        secret_id: text("secret_id"),
        created_at: number("created_at").unwrap_or(0),
        updated_at: number("updated_at").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn settings(private: bool) -> McpSettings {
        let flag = if private { "true" } else { "false" };
        McpSettings::from_env(&Env::new(&[("MCP_ALLOW_PRIVATE_UPSTREAMS", flag)])).unwrap()
    }

    fn registration(url: &str) -> Registration {
        Registration {
            url: url.to_owned(),
            allowed_tools: vec!["echo".into()],
            timeout_ms: None,
            credentials: None,
        }
    }

    #[test]
    fn names_are_prefixes_that_cannot_be_confused() {
        for good in ["everything", "a", "jira-2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "Upper",
            "9lives",
            "a__b",
            "a_b",
            &"x".repeat(32),
            "memory",
        ] {
            let ok = validate(
                &settings(false),
                bad,
                &registration("https://mcp.example.com"),
            );
            assert!(ok.is_err(), "{bad}");
        }
        assert_eq!(
            split_exposed("everything__get-sum"),
            Some(("everything", "get-sum"))
        );
        assert_eq!(split_exposed("memory_store"), None);
        assert_eq!(split_exposed("Bad__x"), None);
    }

    #[test]
    fn urls_are_https_and_public_unless_allowed() {
        let strict = settings(false);
        assert!(validate(&strict, "s", &registration("https://mcp.example.com/mcp")).is_ok());
        for bad in [
            "http://mcp.example.com/mcp",
            "https://127.0.0.1:9001/2018-06-01/runtime/invocation/next",
            "https://10.1.2.3/mcp",
            "https://169.254.169.254/latest",
            "https://[::1]/mcp",
            "https://[::ffff:127.0.0.1]/mcp",
            "https://localhost/mcp",
            "https://user:pw@mcp.example.com/mcp",
            "https://mcp.example.com/mcp#x",
            "ftp://mcp.example.com",
            "not a url",
        ] {
            assert!(validate(&strict, "s", &registration(bad)).is_err(), "{bad}");
        }
        let dev = settings(true);
        assert!(validate(&dev, "s", &registration("http://127.0.0.1:3901/mcp")).is_ok());
    }

    #[test]
    fn credentials_cannot_set_the_gateways_own_headers() {
        let strict = settings(false);
        let with = |headers: &[(&str, &str)]| Registration {
            credentials: Some(Credentials {
                bearer_token: None,
                headers: Some(
                    headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
            }),
            ..registration("https://mcp.example.com")
        };
        assert!(validate(&strict, "s", &with(&[("X-Api-Key", "k1")])).is_ok());
        for bad in [
            ("Authorization", "x"),
            ("Host", "evil"),
            ("Mcp-Session-Id", "x"),
            ("X-Bad\nHeader", "x"),
            ("X-Api-Key", "line\nbreak"),
        ] {
            assert!(validate(&strict, "s", &with(&[bad])).is_err(), "{bad:?}");
        }
        let token = Credentials {
            bearer_token: Some("t0ken".into()),
            headers: None,
        };
        assert_eq!(
            token.headers(),
            [("authorization".to_owned(), "Bearer t0ken".to_owned())]
        );
        assert!(!format!("{token:?}").contains("t0ken"));
    }
}
