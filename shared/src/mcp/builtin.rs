//! Sophia's own tools. Each one calls the library function its REST route
//! calls (never an HTTP call to ourselves), takes that route's body schema and
//! needs that route's scope besides `tools`.
//!
//! | tool | does what | like |
//! |---|---|---|
//! | `memory_store` | store a memory (duplicates merged) | `POST /v1/memory` |
//! | `memory_recall` | hybrid recall | `POST /v1/memory/search` |
//! | `memory_forget` | forget one memory, or all of the caller's | `DELETE /v1/memory[/{id}]` |
//! | `job_submit` | a chat completion as a job | `POST /v1/jobs` |
//! | `job_status` | a job's state and result | `GET /v1/jobs/{id}` |
//! | `chat_complete` | one non-streamed completion | `POST /v1/chat/completions` |

use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::{Principal, SCOPE_CHAT, SCOPE_JOBS, SCOPE_MEMORY};
use crate::inference::Inference;
use crate::inference::chat::ChatRequest;
use crate::jobs::store::JobStore;
use crate::jobs::submit::{JobRequest, read_own, submit_job};
use crate::jobs::valid_idempotency_key;
use crate::mcp::schemas::{SchemaError, Schemas};
use crate::mcp::{CallError, ListedTool, ToolResult};
use crate::memory::model::{NewMemory, Owner, RecallQuery};
use crate::memory::service::{MemoryService, Merge};
use crate::observability::RequestContext;
use crate::problem::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    MemoryStore,
    MemoryRecall,
    MemoryForget,
    JobSubmit,
    JobStatus,
    ChatComplete,
}

/// MCP's behaviour hints (`ToolAnnotations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hints {
    read_only: bool,
    destructive: bool,
    idempotent: bool,
    open_world: bool,
}

impl Builtin {
    /// In the order `tools/list` shows them (deterministic, as the spec asks).
    pub const ALL: [Self; 6] = [
        Self::MemoryStore,
        Self::MemoryRecall,
        Self::MemoryForget,
        Self::JobSubmit,
        Self::JobStatus,
        Self::ChatComplete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::MemoryStore => "memory_store",
            Self::MemoryRecall => "memory_recall",
            Self::MemoryForget => "memory_forget",
            Self::JobSubmit => "job_submit",
            Self::JobStatus => "job_status",
            Self::ChatComplete => "chat_complete",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tool| tool.name() == name)
    }

    /// The scope the tool's REST route needs.
    pub fn scope(self) -> &'static str {
        match self {
            Self::MemoryStore | Self::MemoryRecall | Self::MemoryForget => SCOPE_MEMORY,
            Self::JobSubmit | Self::JobStatus => SCOPE_JOBS,
            Self::ChatComplete => SCOPE_CHAT,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::MemoryStore => "Remember a fact",
            Self::MemoryRecall => "Recall memories",
            Self::MemoryForget => "Forget memories",
            Self::JobSubmit => "Submit a background completion",
            Self::JobStatus => "Read a background completion",
            Self::ChatComplete => "Complete a chat",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::MemoryStore => {
                "Store one memory of the caller (text, optional tags, namespace, metadata, expires_at). \
                 An exact or near duplicate updates the existing memory instead (created: false, merged)."
            }
            Self::MemoryRecall => {
                "Recall the caller's memories most relevant to a query: vector similarity, word matches \
                 and recency, fused. Filters: namespace, tags, metadata, created_after/before. degraded: \
                 true means the query could not be embedded and only words and recency ranked."
            }
            Self::MemoryForget => {
                "Forget one memory ({\"id\": ...}) or every memory of the caller ({\"all\": true}, \
                 audited). Irreversible."
            }
            Self::JobSubmit => {
                "Run a chat completion in the background; returns a job whose id job_status reads. \
                 An idempotency_key makes a repeat return the first job."
            }
            Self::JobStatus => {
                "A job's status (pending, running, done, failed) and, once done, its result."
            }
            Self::ChatComplete => {
                "One non-streamed chat completion (OpenAI's chat.completion object) from the fleet."
            }
        }
    }

    /// The input and output components of `api/openapi.json`.
    fn schemas(self) -> (&'static str, &'static str) {
        match self {
            Self::MemoryStore => ("NewMemory", "ToolStoredMemory"),
            Self::MemoryRecall => ("RecallQuery", "Recall"),
            Self::MemoryForget => ("ToolMemoryForget", "ToolForgotten"),
            Self::JobSubmit => ("ToolJobSubmit", "Job"),
            Self::JobStatus => ("ToolJobStatus", "Job"),
            Self::ChatComplete => ("JobRequest", "ChatCompletion"),
        }
    }

    fn hints(self) -> Hints {
        let (read_only, destructive, idempotent) = match self {
            // A repeat merges into the same memory.
            Self::MemoryStore => (false, false, true),
            Self::MemoryRecall | Self::JobStatus | Self::ChatComplete => (true, false, true),
            Self::MemoryForget => (false, true, true),
            Self::JobSubmit => (false, false, false),
        };
        Hints {
            read_only,
            destructive,
            idempotent,
            open_world: false,
        }
    }

    pub fn idempotent(self) -> bool {
        self.hints().idempotent
    }

    fn definition(self, schemas: &Schemas) -> Result<Value, SchemaError> {
        let (input, output) = self.schemas();
        let hints = self.hints();
        Ok(json!({
            "name": self.name(),
            "title": self.title(),
            "description": self.description(),
            "inputSchema": schemas.tool_schema(input)?,
            "outputSchema": schemas.tool_schema(output)?,
            "annotations": {
                "title": self.title(),
                "readOnlyHint": hints.read_only,
                "destructiveHint": hints.destructive,
                "idempotentHint": hints.idempotent,
                "openWorldHint": hints.open_world,
            },
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgetArguments {
    id: Option<String>,
    all: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSubmitArguments {
    request: ChatRequest,
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobStatusArguments {
    id: String,
}

/// The tools and what they call, built once per cold start.
#[derive(Debug)]
pub struct Builtins {
    pub memory: Arc<MemoryService>,
    pub jobs: JobStore,
    pub inference: Arc<Inference>,
    /// For metrics and billing.
    pub service: &'static str,
    definitions: Vec<(Builtin, Value)>,
}

impl Builtins {
    pub fn new(
        memory: Arc<MemoryService>,
        jobs: JobStore,
        inference: Arc<Inference>,
        service: &'static str,
    ) -> Result<Self, SchemaError> {
        let schemas = Schemas::load()?;
        let definitions = Builtin::ALL
            .into_iter()
            .map(|tool| tool.definition(&schemas).map(|d| (tool, d)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            memory,
            jobs,
            inference,
            service,
            definitions,
        })
    }

    /// The tools `scopes` allow, in their fixed order.
    pub fn listed(&self, scopes: &[String]) -> Vec<ListedTool> {
        self.definitions
            .iter()
            .filter(|(tool, _)| scopes.iter().any(|s| s == tool.scope()))
            .map(|(tool, definition)| ListedTool {
                name: tool.name().to_owned(),
                definition: definition.clone(),
            })
            .collect()
    }

    /// Runs `tool`. Arguments that do not fit its schema are a [`CallError`];
    /// everything the library refuses or fails at is a result with `is_error`.
    pub async fn call(
        &self,
        tool: Builtin,
        arguments: Value,
        principal: &Principal,
        ctx: &RequestContext,
    ) -> Result<ToolResult, CallError> {
        if !principal.scopes.iter().any(|s| s == tool.scope()) {
            return Err(CallError::MissingScope {
                tool: tool.name().to_owned(),
                scope: tool.scope(),
            });
        }
        let outcome = match tool {
            Builtin::MemoryStore => {
                self.memory_store(parse(tool, arguments)?, principal, ctx)
                    .await
            }
            Builtin::MemoryRecall => {
                let query: RecallQuery = parse(tool, arguments)?;
                self.memory
                    .recall(&Owner::of(principal), &query, ctx)
                    .await
                    .map(|recall| recall.to_json())
            }
            Builtin::MemoryForget => {
                let forget = parse(tool, arguments)?;
                self.memory_forget(forget, principal, ctx).await?
            }
            Builtin::JobSubmit => self.job_submit(parse(tool, arguments)?, principal).await?,
            Builtin::JobStatus => {
                let JobStatusArguments { id } = parse(tool, arguments)?;
                read_own(&self.jobs, &principal.tenant, &id)
                    .await
                    .map(|job| job.to_public_json())
            }
            Builtin::ChatComplete => {
                let chat: ChatRequest = parse(tool, arguments)?;
                match self.inference.admit() {
                    Ok(permit) => {
                        self.inference
                            .complete(permit, &principal.tenant, &chat, ctx)
                            .await
                    }
                    Err(error) => Err(error),
                }
            }
        };
        Ok(match outcome {
            Ok(value) => ToolResult::structured(value),
            Err(error) => failure(tool, &error),
        })
    }

    async fn memory_store(
        &self,
        new: NewMemory,
        principal: &Principal,
        ctx: &RequestContext,
    ) -> Result<Value, ApiError> {
        let stored = self
            .memory
            .store(&Owner::of(principal), &new, None, ctx)
            .await?;
        let mut body = stored.memory.to_public_json();
        body["created"] = json!(stored.created);
        if let Some(merge) = stored.merged {
            body["merged"] = json!(match merge {
                Merge::Exact => "exact",
                Merge::Near => "near",
            });
        }
        Ok(body)
    }

    async fn memory_forget(
        &self,
        forget: ForgetArguments,
        principal: &Principal,
        ctx: &RequestContext,
    ) -> Result<Result<Value, ApiError>, CallError> {
        let owner = Owner::of(principal);
        Ok(match (forget.id, forget.all) {
            (Some(id), None) => self
                .memory
                .delete(&owner, &id)
                .await
                .map(|()| json!({"forgotten": 1})),
            (None, Some(true)) => self
                .memory
                .forget_all(&owner, &ctx.correlation_id)
                .await
                .map(|forgotten| json!({"forgotten": forgotten})),
            _ => {
                return Err(CallError::InvalidArguments {
                    tool: Builtin::MemoryForget.name().to_owned(),
                    reason: "give either id or \"all\": true".to_owned(),
                });
            }
        })
    }

    async fn job_submit(
        &self,
        arguments: JobSubmitArguments,
        principal: &Principal,
    ) -> Result<Result<Value, ApiError>, CallError> {
        let JobSubmitArguments {
            request,
            idempotency_key,
        } = arguments;
        if let Some(key) = &idempotency_key
            && !valid_idempotency_key(key)
        {
            return Err(CallError::InvalidArguments {
                tool: Builtin::JobSubmit.name().to_owned(),
                reason: "idempotency_key must be 1 to 255 visible ASCII characters".to_owned(),
            });
        }
        let limits = &self.inference.chat_limits;
        let submitted = async {
            request.validate(limits)?;
            let upstream = request.upstream_body(limits)?;
            let job = JobRequest {
                upstream: &upstream,
                model: &request.model,
                stream: request.stream,
            };
            let quotas = Some(self.inference.billing.quotas.as_ref());
            submit_job(
                &self.jobs,
                job,
                principal,
                idempotency_key.as_deref(),
                self.service,
                quotas,
            )
            .await
        }
        .await;
        Ok(submitted.map(|submission| submission.job.to_public_json()))
    }
}

fn parse<T: DeserializeOwned>(tool: Builtin, arguments: Value) -> Result<T, CallError> {
    serde_json::from_value(arguments).map_err(|error| CallError::InvalidArguments {
        tool: tool.name().to_owned(),
        reason: error.to_string(),
    })
}

/// What the model reads when the library refused or failed: the same detail a
/// REST client gets, and when to retry.
fn failure(tool: Builtin, error: &ApiError) -> ToolResult {
    let mut message = format!("{} failed: {}", tool.name(), error.public_detail());
    if let Some(secs) = error.retry_after_secs() {
        message.push_str(&format!(" (retry after {secs} s)"));
    }
    let mut result = ToolResult::failure(message);
    result.structured = Some(json!({
        "error": {
            "type": error.slug(),
            "status": error.status().as_u16(),
            "retryable": error.is_retryable(),
        }
    }));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_scopes_follow_the_rest_routes() {
        for tool in Builtin::ALL {
            assert_eq!(Builtin::from_name(tool.name()), Some(tool));
        }
        assert_eq!(Builtin::from_name("memory_store "), None);
        assert_eq!(Builtin::MemoryRecall.scope(), SCOPE_MEMORY);
        assert_eq!(Builtin::JobStatus.scope(), SCOPE_JOBS);
        assert_eq!(Builtin::ChatComplete.scope(), SCOPE_CHAT);
    }

    #[test]
    fn every_definition_has_schemas_and_hints() {
        let schemas = Schemas::load().unwrap();
        for tool in Builtin::ALL {
            let definition = tool.definition(&schemas).unwrap();
            assert_eq!(
                definition["inputSchema"]["type"],
                "object",
                "{}",
                tool.name()
            );
            assert!(definition["outputSchema"].is_object());
            let hints = &definition["annotations"];
            assert!(hints["readOnlyHint"].is_boolean());
            assert!(hints["destructiveHint"].is_boolean());
            assert!(hints["idempotentHint"].is_boolean());
        }
        let forget = Builtin::MemoryForget.definition(&schemas).unwrap();
        assert_eq!(forget["annotations"]["destructiveHint"], true);
    }

    #[test]
    fn a_failure_names_the_tool_and_when_to_retry() {
        let result = failure(
            Builtin::ChatComplete,
            &ApiError::DependencyUnavailable {
                dependency: "the fleet",
                retry_after_secs: 3,
            },
        );
        assert!(result.is_error);
        let text = result.content[0]["text"].as_str().unwrap();
        assert!(text.starts_with("chat_complete failed:"), "{text}");
        assert!(text.contains("retry after 3 s"), "{text}");
        assert_eq!(result.structured.unwrap()["error"]["retryable"], true);
    }
}
