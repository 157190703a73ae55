//! job-fleet-probe: shared fleet health for every Lambda instance's client.
pub mod handler;
