//! TLS material for both ports, read and checked once at start.
//!
//! The files are parsed here with rustls' own PEM reader before anything
//! is served, so a wrong path or a key that does not match fails the start
//! with the file's name instead of failing every handshake later. gRPC gets
//! it as tonic's `ServerTlsConfig` (tonic drives the handshakes), HTTP as a
//! rustls acceptor; both use the `ring` provider and offer TLS 1.2 and 1.3.

use std::{path::Path, sync::Arc, time::Duration};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Longest a TLS handshake may take before the connection is dropped, so
/// that idle half-open connections cannot hold accept slots.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path} holds no certificate")]
    Empty { what: &'static str, path: String },
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path} refused: {source}")]
    ClientCa {
        path: String,
        source: rustls::server::VerifierBuilderError,
    },
}

/// Parsed, checked TLS material.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    /// The rustls configuration, built once: it is what proves the files
    /// hold a usable chain and a matching key.
    server: Arc<ServerConfig>,
}

impl TlsMaterial {
    /// `None` when TLS is off.
    pub fn load(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let (Some(cert_path), Some(key_path)) = (&config.cert_file, &config.key_file) else {
            return Ok(None);
        };
        let cert_pem = read(cert_path, "certificate")?;
        let key_pem = read(key_path, "private key")?;
        let certs = certificates(&cert_pem, cert_path, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
            what: "private key",
            path: key_path.display().to_string(),
            source,
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let (client_ca_pem, builder) = match &config.client_ca_file {
            Some(ca_path) => {
                let ca_pem = read(ca_path, "client CA")?;
                let mut roots = RootCertStore::empty();
                for cert in certificates(&ca_pem, ca_path, "client CA")? {
                    roots.add(cert)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|source| TlsError::ClientCa {
                            path: ca_path.display().to_string(),
                            source,
                        })?;
                (Some(ca_pem), builder.with_client_cert_verifier(verifier))
            }
            None => (None, builder.with_no_client_auth()),
        };
        let mut server = builder.with_single_cert(certs, key)?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Self {
            cert_pem,
            key_pem,
            client_ca_pem,
            server: Arc::new(server),
        }))
    }

    pub fn mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// For the gRPC port.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let config = tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// For the HTTP port.
    pub fn http(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.server))
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Pem {
        what,
        path: path.display().to_string(),
        source: rustls::pki_types::pem::Error::Io(source),
    })
}

fn certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}
