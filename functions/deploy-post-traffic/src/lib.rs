//! deploy-post-traffic: CodeDeploy's AfterAllowTraffic hook (see [`handler`]).

pub mod handler;
