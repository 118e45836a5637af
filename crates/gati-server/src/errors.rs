//! The serving error: every way a request can fail, typed once. `From<ServingError> for
//! thrift::Error` is the one place these become the IDL's exceptions.

use gati_rpc::{AdminError, DeadlineExceeded, InvalidInput, ModelNotFound, Overloaded, Unavailable};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServingError {
    /// The request itself is wrong (shape, dtype, encoding, values, top_k...).
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    ModelNotFound(String),
    /// The in-flight limit is reached; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// A worker is down, failed, or answered nothing usable.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// An operator command (trainer) that cannot be carried out.
    #[error("{0}")]
    Admin(String),
}

impl ServingError {
    /// The exception's name in the IDL (logs and metrics label failures with it).
    pub fn kind(&self) -> &'static str {
        match self {
            ServingError::InvalidInput(_) => "InvalidInput",
            ServingError::ModelNotFound(_) => "ModelNotFound",
            ServingError::Overloaded(_) => "Overloaded",
            ServingError::Unavailable(_) => "Unavailable",
            ServingError::DeadlineExceeded(_) => "DeadlineExceeded",
            ServingError::Admin(_) => "AdminError",
        }
    }
}

impl From<ServingError> for thrift::Error {
    fn from(e: ServingError) -> Self {
        fn user<E: std::error::Error + Send + Sync + 'static>(e: E) -> thrift::Error {
            thrift::Error::User(Box::new(e))
        }
        match e {
            ServingError::InvalidInput(message) => user(InvalidInput { message }),
            ServingError::ModelNotFound(message) => user(ModelNotFound { message }),
            ServingError::Overloaded(message) => user(Overloaded { message }),
            ServingError::Unavailable(message) => user(Unavailable { message }),
            ServingError::DeadlineExceeded(message) => user(DeadlineExceeded { message }),
            ServingError::Admin(message) => user(AdminError { message }),
        }
    }
}

impl From<InvalidInput> for ServingError {
    fn from(e: InvalidInput) -> Self {
        ServingError::InvalidInput(e.message)
    }
}

impl From<Unavailable> for ServingError {
    fn from(e: Unavailable) -> Self {
        ServingError::Unavailable(e.message)
    }
}

/// A serving result as the thrift handlers return it.
pub fn to_thrift<T>(r: Result<T, ServingError>) -> thrift::Result<T> {
    r.map_err(thrift::Error::from)
}

/// One item's outcome of `infer_each`.
pub fn outcome(r: Result<gati_rpc::InferResponse, ServingError>) -> gati_rpc::InferOutcome {
    use gati_rpc::InferOutcome as O;
    match r {
        Ok(resp) => O::Response(resp),
        Err(ServingError::InvalidInput(message)) => O::Invalid(InvalidInput { message }),
        Err(ServingError::ModelNotFound(message)) => O::NotFound(ModelNotFound { message }),
        Err(ServingError::Overloaded(message)) => O::Overloaded(Overloaded { message }),
        Err(ServingError::DeadlineExceeded(message)) => O::Deadline(DeadlineExceeded { message }),
        Err(ServingError::Unavailable(message) | ServingError::Admin(message)) => {
            O::Unavailable(Unavailable { message })
        }
    }
}
