//! One module per subcommand.

pub mod build;
pub mod demo;
pub mod diff;
pub mod gc;
pub mod inspect;
pub mod items;
pub mod model;
pub mod query;
pub mod refresh_stats;
pub mod verify;
pub mod versions;
