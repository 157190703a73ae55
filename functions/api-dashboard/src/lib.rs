pub mod handler;
pub mod page;
pub mod sections;
