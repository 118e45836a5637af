//! TLS flags: a client's (`client`, `loadgen`) and a local cluster's (`up`).

use anyhow::Result;
use gati_server::client::Frontend;
use gati_server::tls::{PublicTls, TlsFiles};
use std::path::PathBuf;

/// How a client reaches a frontend that serves over TLS.
#[derive(clap::Args, Clone, Default)]
pub struct ClientTls {
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Present this certificate (PEM) to a frontend that requires client certificates
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientTls {
    pub fn frontend(&self, addr: &str) -> Result<Frontend> {
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                Some(gati_server::tls::client_config(ca, identity)?)
            }
        };
        Ok(Frontend {
            addr: addr.to_string(),
            tls,
        })
    }
}

/// TLS for every link of a local cluster (`Cluster::tls`).
#[derive(clap::Args, Clone, Default)]
pub struct ClusterTls {
    /// Mutual TLS between the roles: the CA certificate (PEM) that signed --tls-cert
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// The certificate (PEM) every role presents; valid for the names roles are dialled by
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// What the public service asks of clients
    #[arg(long, value_enum, default_value = "plain", requires = "tls_ca")]
    tls_public: PublicTls,
}

impl ClusterTls {
    pub fn files(&self) -> Result<Option<TlsFiles>> {
        let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(TlsFiles {
            ca_file: std::path::absolute(ca)?,
            cert_file: std::path::absolute(cert)?,
            key_file: std::path::absolute(key)?,
            public: self.tls_public,
        }))
    }
}
