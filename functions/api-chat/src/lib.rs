//! api-chat: the OpenAI-compatible routes (chat completions in both response
//! modes, embeddings, models) on the API's one base URL.
pub mod handler;
pub mod sse;
