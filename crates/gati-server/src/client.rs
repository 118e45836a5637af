//! A blocking client of the public `Gati` service.

use crate::net;
use gati_rpc::*;
use std::time::Duration;

pub type Client = GatiSyncClient<net::In, net::Out>;

/// Connects to a frontend at `host:port`.
pub fn connect(endpoint: &str, timeout: Duration) -> thrift::Result<Client> {
    let (i, o) = net::connect(endpoint, Some(timeout))?;
    Ok(GatiSyncClient::new(i, o))
}

/// A request for an encoded image.
pub fn image_request(model: &str, bytes: Vec<u8>) -> InferRequest {
    InferRequest {
        model: model.into(),
        input: Input::Image(bytes),
        request_id: None,
        deadline_ms: None,
        top_k: None,
    }
}

/// One line describing a thrift error, naming the exception type for the IDL's exceptions.
pub fn describe(e: &thrift::Error) -> String {
    if let thrift::Error::User(u) = e {
        macro_rules! named {
            ($($t:ty),*) => {$(
                if let Some(x) = u.downcast_ref::<$t>() {
                    return format!("{}: {}", stringify!($t), x.message);
                }
            )*};
        }
        named!(
            InvalidInput,
            ModelNotFound,
            Overloaded,
            Unavailable,
            DeadlineExceeded,
            AdminError
        );
    }
    e.to_string()
}
