//! gati-rpc: the Thrift API. `generated` is produced by `scripts/gen-thrift.sh` from
//! `thrift/gati.thrift` and never edited by hand; `convert` turns wire values into tensors,
//! refusing anything malformed with an `InvalidInput` that names the problem; `outcome` maps
//! per-item outcomes of batched calls to and from results.

#[allow(clippy::all, clippy::pedantic, dead_code, unused)]
#[rustfmt::skip]
pub mod generated {
    pub mod gati;
}

pub mod convert;
pub mod outcome;

pub use generated::gati::*;
