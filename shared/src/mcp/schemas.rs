//! The tools' JSON Schemas, cut out of the API's OpenAPI document.
//!
//! A tool that does what a REST route does takes that route's body: the same
//! bounds, enumerations and descriptions, stated once (`api/openapi.py`). A
//! schema is made self-contained for MCP clients: every component it refers
//! to, directly or not, goes into `$defs`, and `#/components/schemas/X`
//! becomes `#/$defs/X` (the local references the MCP spec asks clients to
//! resolve). OpenAPI's own keywords (`discriminator`) are dropped.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

const OPENAPI: &str = include_str!("../../../api/openapi.json");
const COMPONENT_REF: &str = "#/components/schemas/";

/// The document's component schemas, by name.
#[derive(Debug, Clone)]
pub struct Schemas {
    components: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("api/openapi.json is not an OpenAPI document with component schemas")]
    Document,
    #[error("api/openapi.json has no component schema {0}")]
    Missing(String),
}

impl Schemas {
    /// Parses the component schemas of the document compiled into this binary.
    /// Only they are built into values: the paths (the larger part) are
    /// skipped unparsed, which keeps api-mcp's cold start short.
    pub fn load() -> Result<Self, SchemaError> {
        #[derive(serde::Deserialize)]
        struct Document {
            components: Components,
        }
        #[derive(serde::Deserialize)]
        struct Components {
            schemas: Map<String, Value>,
        }
        let document: Document =
            serde_json::from_str(OPENAPI).map_err(|_| SchemaError::Document)?;
        Ok(Self {
            components: document.components.schemas,
        })
    }

    /// The self-contained schema of component `name`, typed `object` at its
    /// root as MCP's `inputSchema` and `outputSchema` must be (a component made
    /// of `allOf` says so only in its parts).
    pub fn tool_schema(&self, name: &str) -> Result<Value, SchemaError> {
        let root = self
            .components
            .get(name)
            .ok_or_else(|| SchemaError::Missing(name.to_owned()))?;
        let mut needed = BTreeSet::new();
        self.collect(root, &mut needed)?;
        let mut schema = rewrite(root);
        if let Value::Object(object) = &mut schema {
            object
                .entry("type")
                .or_insert_with(|| Value::String("object".to_owned()));
        }
        let defs: BTreeMap<String, Value> = needed
            .iter()
            .filter_map(|def| self.components.get(def).map(|s| (def.clone(), rewrite(s))))
            .collect();
        if !defs.is_empty()
            && let Value::Object(object) = &mut schema
        {
            object.insert(
                "$defs".to_owned(),
                Value::Object(defs.into_iter().collect()),
            );
        }
        Ok(schema)
    }

    fn collect(&self, value: &Value, needed: &mut BTreeSet<String>) -> Result<(), SchemaError> {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(target)) = object.get("$ref")
                    && let Some(name) = target.strip_prefix(COMPONENT_REF)
                    && needed.insert(name.to_owned())
                {
                    let component = self
                        .components
                        .get(name)
                        .ok_or_else(|| SchemaError::Missing(name.to_owned()))?;
                    self.collect(component, needed)?;
                }
                for child in object.values() {
                    self.collect(child, needed)?;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.collect(item, needed)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn rewrite(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(key, _)| key.as_str() != "discriminator")
                .map(|(key, child)| match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => (
                        key.clone(),
                        Value::String(target.replacen(COMPONENT_REF, "#/$defs/", 1)),
                    ),
                    _ => (key.clone(), rewrite(child)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(rewrite).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(target)) = object.get("$ref") {
                    out.push(target.clone());
                }
                object.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_inside_the_schema() {
        let schemas = Schemas::load().unwrap();
        let schema = schemas.tool_schema("ToolJobSubmit").unwrap();
        let mut found = Vec::new();
        refs(&schema, &mut found);
        assert!(found.contains(&"#/$defs/JobRequest".to_owned()));
        for target in found {
            let name = target.strip_prefix("#/$defs/").expect("only local refs");
            assert!(
                schema["$defs"].get(name).is_some(),
                "{name} is not in $defs"
            );
        }
        assert!(!schema.to_string().contains("discriminator"));
        // A schema without references stays as it is.
        let plain = schemas.tool_schema("ToolJobStatus").unwrap();
        assert!(plain.get("$defs").is_none());
        assert_eq!(plain["required"][0], "id");
    }

    #[test]
    fn a_missing_component_is_named() {
        let error = Schemas::load().unwrap().tool_schema("Nope").unwrap_err();
        assert_eq!(error, SchemaError::Missing("Nope".into()));
    }
}
