//! A blocking client of the public `Gati` service.

use crate::config::Cluster;
use crate::net;
use gati_rpc::*;
use std::sync::Arc;
use std::time::Duration;

pub type Client = GatiSyncClient<net::In, net::Out>;

/// Connects to a frontend at `host:port`, plain Thrift.
pub fn connect(endpoint: &str, timeout: Duration) -> thrift::Result<Client> {
    Frontend::plain(endpoint).connect(timeout)
}

/// Where a frontend's public service is, and the TLS it asks for.
#[derive(Clone)]
pub struct Frontend {
    pub addr: String,
    /// None: plain Thrift.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Frontend {
    pub fn plain(addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            tls: None,
        }
    }

    /// The frontend of `cluster`, over TLS where its public service uses it (presenting the
    /// cluster's own certificate, which a mutual-TLS frontend accepts).
    pub fn of(cluster: &Cluster) -> Self {
        let tls = cluster.tls_loaded.as_ref().filter(|t| t.public.is_some());
        Self {
            addr: cluster.frontend.address().to_string(),
            tls: tls.map(|t| t.client.clone()),
        }
    }

    pub fn connect(&self, timeout: Duration) -> thrift::Result<Client> {
        let credentials = net::Credentials {
            token: None,
            tls: self.tls.clone(),
        };
        let (i, o) = net::connect_with(&self.addr, Some(timeout), &credentials)?;
        Ok(GatiSyncClient::new(i, o))
    }
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
    if let thrift::Error::Transport(t) = e {
        // thrift's Display shows the kind only; the message says what failed (a refused TLS
        // certificate, a reset connection).
        return format!("{e}: {}", t.message);
    }
    e.to_string()
}
