//! deploy-pre-traffic: CodeDeploy's BeforeAllowTraffic hook (see [`handler`]).

pub mod handler;
