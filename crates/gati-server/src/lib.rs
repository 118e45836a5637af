//! gati-server: the serving roles, each its own OS process talking Thrift (binary protocol,
//! framed transport) on loopback or across hosts:
//!
//! - `frontend`: the public `Gati` service plus the internal `Selector` that cache workers report
//!   to; answers with the first confident cache result or the base model's;
//! - `base`: runs the base model stage by stage, streams planned activations to cache workers
//!   without waiting, stops on cancel (or evaluates the caches itself in inline mode); it may
//!   also run inside the frontend's process (`Cluster::base_in_frontend`, `base_link`);
//! - `cache`: evaluates one or more layers' cache models and reports hit/miss to the selector;
//! - `trainer` (online learning): retrains the caches on samples the base worker collects and
//!   installs new versions in the workers by RPC.

pub mod base_link;
pub mod base_worker;
pub mod cache_worker;
pub mod client;
pub mod config;
pub mod errors;
pub mod exact;
pub mod front_memory;
pub mod frontend;
pub mod learning;
pub mod logs;
pub mod memory_audit;
pub mod metrics;
pub mod net;
pub mod resources;
pub mod roles;
pub mod tls;
pub mod trainer;
pub mod up;
pub mod wire;
