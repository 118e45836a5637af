//! Per-item outcomes of batched calls as results: each item's typed exception as the error a
//! single call would have raised.

use crate::generated::gati::{BaseOutcome, BaseResult, InferOutcome, InferResponse};

fn user<E: std::error::Error + Send + Sync + 'static>(e: E) -> thrift::Error {
    thrift::Error::User(Box::new(e))
}

impl BaseOutcome {
    /// The item's result, or its typed error.
    pub fn into_result(self) -> thrift::Result<BaseResult> {
        match self {
            BaseOutcome::Result(r) => Ok(r),
            BaseOutcome::Invalid(e) => Err(user(e)),
            BaseOutcome::Unavailable(e) => Err(user(e)),
            BaseOutcome::Deadline(e) => Err(user(e)),
        }
    }
}

impl InferOutcome {
    /// The outcome as a result (clients).
    pub fn into_result(self) -> thrift::Result<InferResponse> {
        match self {
            InferOutcome::Response(r) => Ok(r),
            InferOutcome::Invalid(e) => Err(user(e)),
            InferOutcome::NotFound(e) => Err(user(e)),
            InferOutcome::Overloaded(e) => Err(user(e)),
            InferOutcome::Unavailable(e) => Err(user(e)),
            InferOutcome::Deadline(e) => Err(user(e)),
        }
    }
}
