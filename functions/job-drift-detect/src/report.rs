//! What the template declares (the manifest) and what a comparison finds: the
//! report's types and the pure comparison, with no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sophia_shared::config::ConfigError;

use crate::handler::DESIRED_STATE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Table,
    Queue,
    Function,
    Schedule,
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Desired {
    pub kind: Kind,
    pub logical: String,
    pub name: String,
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    resources: Vec<Desired>,
}

/// The manifest for one stack.
pub fn manifest(stack: &str) -> Result<Vec<Desired>, ConfigError> {
    let manifest: Manifest = serde_json::from_str(&DESIRED_STATE.replace("{stack}", stack))
        .map_err(|e| {
            ConfigError::new(
                "STACK_NAME",
                format!("the embedded manifest is unreadable: {e}"),
            )
        })?;
    Ok(manifest.resources)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub kind: Kind,
    pub logical: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub kind: Kind,
    pub logical: String,
    pub name: String,
    pub property: String,
    pub expected: String,
    pub actual: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extra {
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftReport {
    pub stack: String,
    pub run: String,
    pub checked: usize,
    pub missing: Vec<Missing>,
    pub changed: Vec<Changed>,
    pub extras: Vec<Extra>,
    /// CloudFormation's own drift detection (on AWS), merged in.
    pub cloudformation: Vec<StackDrift>,
    /// What was not checked, and why.
    pub skipped: Vec<String>,
}

/// A resource CloudFormation reports as modified or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackDrift {
    pub logical: String,
    pub resource_type: String,
    /// `MODIFIED` or `DELETED`.
    pub status: String,
    /// `path: expected → actual` per differing property.
    pub differences: Vec<String>,
}

impl DriftReport {
    pub fn drifted(&self) -> bool {
        !(self.missing.is_empty()
            && self.changed.is_empty()
            && self.extras.is_empty()
            && self.cloudformation.is_empty())
    }

    pub(crate) fn summary(&self) -> String {
        if !self.drifted() {
            return format!(
                "stack {}: no drift; live resources match the template",
                self.stack
            );
        }
        let mut lines = vec![format!(
            "stack {}: {} changed, {} missing, {} unmanaged",
            self.stack,
            self.changed.len(),
            self.missing.len(),
            self.extras.len()
        )];
        for change in self.changed.iter().take(10) {
            lines.push(format!(
                "{} {}: {} expected {:?}, actual {:?}",
                kind_name(change.kind),
                change.logical,
                change.property,
                change.expected,
                change.actual
            ));
        }
        for missing in self.missing.iter().take(10) {
            lines.push(format!(
                "{} {} ({}) is missing",
                kind_name(missing.kind),
                missing.logical,
                missing.name
            ));
        }
        for extra in self.extras.iter().take(10) {
            lines.push(format!(
                "{} {} is not in the template",
                kind_name(extra.kind),
                extra.name
            ));
        }
        for drift in self.cloudformation.iter().take(10) {
            lines.push(format!(
                "CloudFormation: {} ({}) {} {}",
                drift.logical,
                drift.resource_type,
                drift.status,
                drift.differences.join("; ")
            ));
        }
        lines.join("\n")
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Table => "table",
        Kind::Queue => "queue",
        Kind::Function => "function",
        Kind::Schedule => "schedule",
        Kind::Secret => "secret",
    }
}

/// Compares one resource's declared properties with the live ones.
pub fn compare(
    desired: &Desired,
    actual: &BTreeMap<String, String>,
    skip: &BTreeSet<String>,
) -> Vec<Changed> {
    desired
        .properties
        .iter()
        .filter(|(property, _)| !skip.contains(property.as_str()))
        .filter_map(|(property, expected)| {
            let actual = actual.get(property).cloned().unwrap_or_default();
            (actual != *expected).then(|| Changed {
                kind: desired.kind,
                logical: desired.logical.clone(),
                name: desired.name.clone(),
                property: property.clone(),
                expected: expected.clone(),
                actual,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_manifest_names_the_stack_everywhere() {
        let resources = manifest("prod").unwrap();
        assert!(resources.len() >= 20);
        assert!(resources.iter().all(|r| !r.name.contains("{stack}")));
        let queue = resources.iter().find(|r| r.logical == "JobsQueue").unwrap();
        assert_eq!(queue.name, "prod-jobs");
        assert_eq!(queue.properties["dead_letter_queue"], "prod-jobs-dlq");
    }

    #[test]
    fn only_differing_properties_are_reported() {
        let desired = Desired {
            kind: Kind::Queue,
            logical: "Q".into(),
            name: "q".into(),
            properties: [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned()),
                ("rotation".to_owned(), "x".to_owned()),
            ]
            .into(),
        };
        let actual: BTreeMap<String, String> = [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "3".to_owned()),
        ]
        .into();
        let changes = compare(&desired, &actual, &["rotation".to_owned()].into());
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (
                changes[0].property.as_str(),
                changes[0].expected.as_str(),
                changes[0].actual.as_str()
            ),
            ("b", "2", "3")
        );
    }
}
