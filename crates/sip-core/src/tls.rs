//! TLS for SIP (RFC 3261 §26.2.1, RFC 5630 §3): the server and client configurations the
//! transports use, built with rustls (ring provider) from PEM files.
//!
//! - Server side (`tls:` listen addresses, for phones): the certificate chain and private key
//!   of `[tls] cert` / `key`. [`TlsContext::reload`] reads them again (on SIGHUP): a new
//!   handshake uses the new pair, open connections keep theirs. A pair that does not load
//!   leaves the old one in place.
//! - Client side (toward trunks): the peer's certificate is verified against `[tls] ca`
//!   when given, else against the system's trust store, for the host name of the trunk
//!   (SNI and the name checked), or its IP address when it was given as one.
//!
//! Not done: client certificates (mutual TLS), certificate revocation checks, pinning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where the PEM files are (`[tls]` in the configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain presented to TLS clients (leaf first).
    pub cert: Option<PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Trust anchors for the certificates of the servers we connect to (trunks); the
    /// system's trust store when absent.
    pub ca: Option<PathBuf>,
}

/// TLS configuration errors; each names the file or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in it")]
    NoKey { path: PathBuf },
    #[error("{path}: bad PEM: {detail}")]
    BadPem { path: PathBuf, detail: String },
    #[error("tls.cert and tls.key must be given together")]
    Incomplete,
    #[error("tls: certificate and key do not make a usable server identity: {0}")]
    Server(rustls::Error),
    #[error("tls: client configuration: {0}")]
    Client(rustls::Error),
}

/// The TLS configurations of one process, shared by the transports.
pub struct TlsContext {
    settings: TlsSettings,
    server: RwLock<Option<Arc<ServerConfig>>>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => TlsError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    })
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Server)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Server)?;
    Ok(Arc::new(cfg))
}

fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in certificates(path)? {
                roots.add(c).map_err(|e| TlsError::BadPem {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "tls: part of the system's trust store did not load");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "tls: system trust anchors loaded");
            if added == 0 {
                // Serving phones needs none; a TLS trunk's certificate will not verify.
                tracing::warn!("tls: the system's trust store is empty: TLS trunks need tls.ca");
            }
        }
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Client)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl TlsContext {
    /// Loads the files named by `settings`. Without a certificate there is no server side
    /// (a `tls:` listen address is then refused by the transports); the client side always
    /// exists.
    pub fn load(settings: TlsSettings) -> Result<Arc<TlsContext>, TlsError> {
        let server = match (&settings.cert, &settings.key) {
            (Some(c), Some(k)) => Some(server_config(c, k)?),
            (None, None) => None,
            _ => return Err(TlsError::Incomplete),
        };
        let client = client_config(settings.ca.as_deref())?;
        Ok(Arc::new(TlsContext {
            settings,
            server: RwLock::new(server),
            client,
        }))
    }

    /// Reads the certificate and key again; on success new handshakes use them. On error
    /// the pair in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (Some(c), Some(k)) = (&self.settings.cert, &self.settings.key) else {
            return Ok(());
        };
        let cfg = server_config(c, k)?;
        if let Ok(mut s) = self.server.write() {
            *s = Some(cfg);
        }
        Ok(())
    }

    /// The settings it was loaded from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether a server identity (certificate and key) is loaded.
    pub fn has_server(&self) -> bool {
        self.server.read().map(|s| s.is_some()).unwrap_or(false)
    }

    /// An acceptor with the pair in use now.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        let cfg = self.server.read().ok()?.clone()?;
        Some(TlsAcceptor::from(cfg))
    }

    /// The connector toward servers (trunks).
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(Arc::clone(&self.client))
    }
}

/// The name a client checks the server's certificate against: a host name, or an IP
/// address when the peer was given as one.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).ok()
}
