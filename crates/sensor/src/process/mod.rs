//! Processes: `/proc` readers and the table of live processes that
//! enrichment joins facts against.

pub mod prefetch;
pub mod procfs;
pub mod registry;
pub mod table;

pub use prefetch::Prefetch;
pub use procfs::{read_process, ProcessInfo, ReadError};
pub use registry::{KnownProcess, ProcessRegistry};
pub use table::{Entry, ProcessKey, ProcessTable};
