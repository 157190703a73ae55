//! Typed configuration read from the environment once, at cold start.
//!
//! Every reader names the variable it failed on, so a misconfigured function dies at
//! init with a message that says what to fix instead of failing on its first request.

use std::str::FromStr;
use std::time::Duration;

/// A missing or malformed environment variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("environment variable {variable}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &str, problem: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Where configuration comes from. Functions read the process environment; tests
/// pass a map so they never have to mutate global state.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Source for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

impl Source for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

impl Source for Vec<(&str, &str)> {
    fn get(&self, name: &str) -> Option<String> {
        Source::get(self.as_slice(), name)
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        Source::get(self.as_slice(), name)
    }
}

/// Typed reads over a [`Source`]. Empty values count as missing: an empty
/// `STATE_TABLE=` is a deployment mistake, not a table name.
pub struct Env<'a> {
    source: &'a dyn Source,
}

impl<'a> Env<'a> {
    pub fn new(source: &'a dyn Source) -> Self {
        Self { source }
    }

    pub fn optional(&self, name: &str) -> Option<String> {
        self.source
            .get(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.optional(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|error| ConfigError::new(name, format!("cannot parse {raw:?}: {error}"))),
        }
    }

    /// A duration given in whole milliseconds, bounded so that a typo such as an
    /// extra zero is caught at cold start.
    pub fn millis_or(
        &self,
        name: &str,
        default_ms: u64,
        max_ms: u64,
    ) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse_or(name, default_ms)?;
        if ms == 0 || ms > max_ms {
            return Err(ConfigError::new(
                name,
                format!("must be between 1 and {max_ms} milliseconds, got {ms}"),
            ));
        }
        Ok(Duration::from_millis(ms))
    }

    /// A comma-separated list; blank entries are dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.optional(name)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_names_the_missing_variable() {
        let env = [("OTHER", "x")];
        let error = Env::new(&env).required("STATE_TABLE").unwrap_err();
        assert_eq!(error.variable, "STATE_TABLE");
        assert!(error.to_string().contains("STATE_TABLE"));
    }

    #[test]
    fn blank_counts_as_missing() {
        let env = [("STATE_TABLE", "  ")];
        assert!(Env::new(&env).required("STATE_TABLE").is_err());
    }

    #[test]
    fn malformed_number_is_reported_with_its_value() {
        let env = [("MAX_BODY_BYTES", "12kb")];
        let error = Env::new(&env)
            .parse_or::<usize>("MAX_BODY_BYTES", 1)
            .unwrap_err();
        assert!(error.problem.contains("12kb"), "{error}");
    }

    #[test]
    fn millis_are_bounded() {
        let env = [("T", "0"), ("U", "999999"), ("V", "250")];
        let env = Env::new(&env);
        assert!(env.millis_or("T", 10, 1000).is_err());
        assert!(env.millis_or("U", 10, 1000).is_err());
        assert_eq!(
            env.millis_or("V", 10, 1000).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            env.millis_or("W", 10, 1000).unwrap(),
            Duration::from_millis(10)
        );
    }
}
