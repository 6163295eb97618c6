//! `picket-server`: enrollment, lossless TLS ingest, storage and search for
//! Picket sensors.
//!
//! [`serve::start`] runs the gRPC service for sensors ([`ingest`]) and the
//! HTTP JSON API ([`api`]) over one [`store::Store`]. The admin commands in
//! `main.rs` use the same store directly.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod filter;
pub mod ingest;
pub mod output;
pub mod serve;
pub mod store;
pub mod timefmt;
pub mod tls;
pub mod writer;
