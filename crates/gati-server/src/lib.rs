//! gati-server: the serving roles, each its own OS process talking Thrift (binary protocol,
//! framed transport) on loopback or across hosts:
//!
//! - `frontend`: the public `Gati` service plus the internal `Selector` that cache workers report
//!   to; answers with the first confident cache result or the base model's;
//! - `base`: runs the base model stage by stage, streams planned activations to cache workers
//!   without waiting, stops on cancel (or evaluates the caches itself in inline mode);
//! - `cache`: evaluates one or more layers' cache models and reports hit/miss to the selector.

pub mod base;
pub mod cache;
pub mod client;
pub mod config;
pub mod frontend;
pub mod metrics;
pub mod net;
pub mod roles;
pub mod up;
pub mod wire;
