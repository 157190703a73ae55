//! api-chat: the OpenAI-compatible chat route, shared by the `api-chat` (buffered)
//! and `api-chat-stream` (response streaming) functions.
pub mod handler;
pub mod jobs;
pub mod request;
pub mod usage;
