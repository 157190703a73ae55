pub mod handler;
pub mod sections;
