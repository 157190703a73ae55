//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape, from the
//! allow-lists: the chat models (`CHAT_MODELS`) and the embedding models
//! (`EMBEDDING_MODELS`). Clients that discover models first (model pickers,
//! SDK examples) see exactly what the other routes accept.

use serde_json::{Value, json};

use crate::config::{ConfigError, Env};

/// The models this deployment serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub chat: Vec<String>,
    pub embedding: Vec<String>,
    /// `created` of every model (Unix seconds): when this catalog was configured.
    pub created: u64,
    pub owned_by: String,
}

impl Catalog {
    /// `MODELS_CREATED` (Unix seconds, default 2026-01-01) and `MODELS_OWNED_BY`
    /// (`sophia`), with the two allow-lists.
    pub fn new(env: &Env<'_>, chat: &[String], embedding: &[String]) -> Result<Self, ConfigError> {
        Ok(Self {
            chat: chat.to_vec(),
            embedding: embedding.to_vec(),
            created: env.parse_or("MODELS_CREATED", 1_767_225_600)?,
            owned_by: env
                .optional("MODELS_OWNED_BY")
                .unwrap_or_else(|| "sophia".to_owned()),
        })
    }

    fn model(&self, id: &str) -> Value {
        json!({"id": id, "object": "model", "created": self.created, "owned_by": self.owned_by})
    }

    /// `{"object": "list", "data": [...]}`, chat models first.
    pub fn list(&self) -> Value {
        let data: Vec<Value> = self
            .chat
            .iter()
            .chain(&self.embedding)
            .map(|id| self.model(id))
            .collect();
        json!({"object": "list", "data": data})
    }

    /// One model, or `None` for an id not served here.
    pub fn get(&self, id: &str) -> Option<Value> {
        self.chat
            .iter()
            .chain(&self.embedding)
            .any(|known| known == id)
            .then(|| self.model(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_and_each_model_have_openais_shape() {
        let catalog = Catalog::new(
            &Env::new(&[("MODELS_CREATED", "1700000000")]),
            &["sophia-small".into()],
            &["sophia-embed".into()],
        )
        .unwrap();
        let list = catalog.list();
        assert_eq!(list["object"], "list");
        assert_eq!(list["data"][0]["id"], "sophia-small");
        assert_eq!(list["data"][1]["id"], "sophia-embed");
        assert_eq!(list["data"][1]["object"], "model");
        assert_eq!(list["data"][1]["created"], 1_700_000_000);
        assert_eq!(list["data"][1]["owned_by"], "sophia");
        assert_eq!(catalog.get("sophia-small").unwrap()["id"], "sophia-small");
        assert!(catalog.get("gpt-4o").is_none());
    }
}
