//! Picket's event model and wire protocol, shared by `picket-sensor` and
//! `picket-server`.
//!
//! A record is `{"routing": {...}, "event": {...}}`. The sensor fills the
//! routing fields it can observe (`event_type`, `event_time` in milliseconds,
//! `event_id`, `hostname`, and the `this`/`parent` atoms); the server adds
//! `oid`, `sid`, `iid`, `tags`, `ext_ip` and `int_ip`. Event payload field
//! names are upper case (`PROCESS_ID`, `COMMAND_LINE`, ...).
#![forbid(unsafe_code)]

pub mod atom;
pub mod bytes;
pub mod key;
pub mod record;
pub mod types;

pub use record::{Record, Routing};

/// Generated gRPC types for the sensor-to-platform link (`proto/picket.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("picket.v1");
}
