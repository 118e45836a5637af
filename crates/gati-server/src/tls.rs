//! TLS between roles, and optionally for the public service: certificates from PEM files, one
//! CA for the deployment. Internal links are mutual: every role presents its certificate and
//! accepts only peers whose certificate the CA signed.

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the public `Gati` service asks of its clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PublicTls {
    /// Plain Thrift: any client (the default).
    #[default]
    Plain,
    /// Encrypted; clients verify the frontend's certificate and present none.
    Tls,
    /// Encrypted; clients must also present a certificate the CA signed.
    Mutual,
}

impl gati_core::names::Named for PublicTls {
    fn what() -> &'static str {
        "public TLS mode"
    }
}

/// The `tls` section of `CLUSTER.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsFiles {
    /// The CA certificate(s) that signed every role's certificate (PEM).
    pub ca_file: PathBuf,
    /// This process's certificate chain (PEM), valid for the names peers dial it by.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// TLS on the public service too (default: plain).
    #[serde(default)]
    pub public: PublicTls,
}

/// Loaded TLS settings, shared by every connection of a process.
#[derive(Clone)]
pub struct Tls {
    /// Dialling another role (or, in `gati client`, the frontend).
    pub client: Arc<ClientConfig>,
    /// Serving an internal service: client certificates required.
    pub internal: Arc<ServerConfig>,
    /// Serving the public service (None: plain).
    pub public: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {what} {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what} {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{what} {}: no certificate in it", path.display());
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("key_file {}: no readable PEM private key", path.display()))
}

fn roots(ca_file: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_file, "ca_file")? {
        roots
            .add(c)
            .with_context(|| format!("ca_file {}: not a usable CA certificate", ca_file.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration: trusts `ca_file`, and presents `identity` (certificate, key) if given.
pub fn client_config(ca_file: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_file)?);
    let config = match identity {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert, "cert_file")?, key(k)?)
            .with_context(|| format!("cert_file {} and key_file {} do not match", cert.display(), k.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn server_config(files: &TlsFiles, client_certs: bool) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = if client_certs {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca_file)?, provider())
            .build()
            .context("client certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs(&files.cert_file, "cert_file")?, key(&files.key_file)?)
        .with_context(|| {
            format!(
                "cert_file {} and key_file {} do not match",
                files.cert_file.display(),
                files.key_file.display()
            )
        })?;
    // No session tickets: a pooled idle connection must stay silent, so that any readable byte
    // on it means the server closed it (see `net::Pool`).
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

impl TlsFiles {
    pub fn load(&self) -> Result<Tls> {
        Ok(Tls {
            client: client_config(&self.ca_file, Some((&self.cert_file, &self.key_file)))?,
            internal: server_config(self, true)?,
            public: match self.public {
                PublicTls::Plain => None,
                PublicTls::Tls => Some(server_config(self, false)?),
                PublicTls::Mutual => Some(server_config(self, true)?),
            },
        })
    }
}

/// The name a certificate must carry to be accepted for `addr` (`host:port`, `[v6]:port`).
pub fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: '{host}' is not a host name TLS can verify"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_dialled_host() {
        assert_eq!(server_name("base:7002").unwrap(), ServerName::try_from("base").unwrap());
        assert_eq!(
            server_name("127.0.0.1:7002").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(server_name("[::1]:7002").unwrap(), ServerName::try_from("::1").unwrap());
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn unreadable_or_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let files = TlsFiles {
            ca_file: write("ca.pem", ca.cert.pem()),
            cert_file: write("cert.pem", ca.cert.pem()),
            key_file: write("key.pem", other.key_pair.serialize_pem()),
            public: PublicTls::Plain,
        };
        let e = format!("{:#}", files.load().unwrap_err());
        assert!(e.contains("do not match"), "{e}");
        let missing = TlsFiles {
            ca_file: dir.path().join("absent.pem"),
            ..files.clone()
        };
        let e = format!("{:#}", missing.load().unwrap_err());
        assert!(e.contains("ca_file") && e.contains("absent.pem"), "{e}");
        let not_pem = TlsFiles {
            key_file: write("junk.pem", "junk".into()),
            ..files
        };
        let e = format!("{:#}", not_pem.load().unwrap_err());
        assert!(e.contains("key_file") && e.contains("junk.pem"), "{e}");
    }
}
