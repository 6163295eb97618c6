//! Picket host sensor.
//!
//! Pipeline: collectors produce raw [`collect::Fact`]s; enrichment joins them
//! with the process table, container metadata and user names to build
//! records; records go to the outbound queue and to local sinks.

pub mod collect;
pub mod container;
pub mod dns;
pub mod netstat;
pub mod spool;
pub mod transport;
