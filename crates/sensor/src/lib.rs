//! Picket host sensor.
//!
//! Pipeline: collectors produce raw [`collect::Fact`]s; enrichment joins them
//! with the process table, container metadata and user names to build
//! records; records go to the outbound queue and to local sinks.

pub mod code_hash;
pub mod collect;
pub mod config;
pub mod container;
pub mod dns;
pub mod enrich;
pub mod hostfs;
pub mod namespaces;
pub mod netstat;
pub mod output;
pub mod process;
pub mod sensor;
pub mod spool;
pub mod transport;
