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

/// A request that did not decode (a required field missing, a wrong type, a bad length) as the
/// `TApplicationException` its sender gets: kind PROTOCOL_ERROR, message "METHOD: what was wrong".
/// The generated processors call this (`scripts/gen-thrift.sh`); other errors pass unchanged.
pub fn readable(method: &str, e: thrift::Error) -> thrift::Error {
    match e {
        thrift::Error::Protocol(p) => thrift::Error::Application(thrift::ApplicationError::new(
            thrift::ApplicationErrorKind::ProtocolError,
            format!("{method}: {}", p.message),
        )),
        other => other,
    }
}
