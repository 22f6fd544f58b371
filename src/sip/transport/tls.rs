//! SIP over TLS (RFC 3261 §26.2, RFC 5630): accepted connections only.
//! Phones open the connection and register over it; requests to them go
//! back over that connection (RFC 5626 §3.4 style), as for TCP. We never
//! dial a phone with TLS: behind NAT it cannot be reached, and a server
//! name to verify would be needed. Once the handshake is done, the stream
//! runs through the TCP driver's reader and writer (`tcp::run`).
//!
//! The certificate and key come from PEM files and are read again when
//! they change (checked every [`RELOAD_POLL`]) or on SIGHUP. A reload only
//! changes what new handshakes present: live connections keep theirs. A
//! reload that fails (a half-written file, a key that does not match)
//! keeps the previous pair and logs why.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use super::{ConnectionMap, Inbound, TransportLimits};
use crate::sip::{Peer, TransportKind};

/// How often the certificate files are checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Longest a TLS handshake may take before the connection is dropped (a
/// slow or silent client must not hold a connection slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain and private key files (`server.tls_certificate`,
/// `server.tls_private_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// Why the certificate or key could not be used; each names the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        /// `server.tls_certificate` or `server.tls_private_key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file holds no PEM object of the kind needed.
    #[error("{key}: {} holds no PEM {what}", path.display())]
    NoPem {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// "CERTIFICATE" or "PRIVATE KEY".
        what: &'static str,
    },
    /// The key is not one rustls can sign with, or does not match the
    /// certificate.
    #[error("server.tls_private_key: {} is unusable with the certificate: {source}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

const CERT_KEY: &str = "server.tls_certificate";
const KEY_KEY: &str = "server.tls_private_key";

impl TlsFiles {
    /// Reads and checks both files: the chain parses, the key parses and
    /// matches the leaf certificate.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                key,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(CERT_KEY, &self.certificate)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoPem {
                key: CERT_KEY,
                path: self.certificate.clone(),
                what: "CERTIFICATE",
            });
        }
        let key_pem = read(KEY_KEY, &self.private_key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoPem {
            key: KEY_KEY,
            path: self.private_key.clone(),
            what: "PRIVATE KEY",
        })?;
        let bad = |source| TlsError::BadKey {
            path: self.private_key.clone(),
            source,
        };
        let signing = provider::sign::any_supported_type(&key).map_err(bad)?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(bad)?;
        Ok(certified)
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&self.certificate)?, m(&self.private_key)?))
    }
}

/// The certificate new handshakes present; swapped on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|c| c.clone())
    }
}

/// A TLS listener's acceptor and its reloadable certificate.
#[derive(Clone)]
pub(super) struct Acceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Current>,
    files: TlsFiles,
}

impl Acceptor {
    /// Loads the files and builds the server config (TLS 1.2 and 1.3, no
    /// client certificates: phones authenticate with digest, RFC 3261 §22).
    pub(super) fn new(files: &TlsFiles) -> Result<Self, TlsError> {
        let first = files.load()?;
        let current = Arc::new(Current(RwLock::new(Arc::new(first))));
        // ring over aws-lc-rs: the lighter build (no cmake, no C tree of
        // its own). rustls deprecates its provider for lack of
        // post-quantum key exchange, which desk phones do not offer.
        #[allow(deprecated)]
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|source| TlsError::BadKey {
                    path: files.private_key.clone(),
                    source,
                })?
                .with_no_client_auth()
                .with_cert_resolver(current.clone());
        Ok(Acceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            current,
            files: files.clone(),
        })
    }

    /// Reads the files again; on success new handshakes use them.
    pub(super) fn reload(&self) -> Result<(), TlsError> {
        let next = self.files.load()?;
        if let Ok(mut c) = self.current.0.write() {
            *c = Arc::new(next);
        }
        Ok(())
    }
}

/// Reloads the certificate when its files change or on SIGHUP, until the
/// inbound channel closes.
pub(super) async fn reload_loop(acceptor: Acceptor, inbound: mpsc::Sender<Inbound>) {
    let mut seen = acceptor.files.modified();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if inbound.is_closed() {
            return;
        }
        let now = acceptor.files.modified();
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        match acceptor.reload() {
            Ok(()) => {
                crate::metrics::metrics().sip_tls_reloads.inc();
                tracing::info!(certificate = %acceptor.files.certificate.display(), signalled, "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
    }
}

/// Accepts connections, applies the TCP caps, and hands each completed
/// handshake to the stream driver.
pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: Acceptor,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    connections: ConnectionMap,
    limits: TransportLimits,
    failures: broadcast::Sender<Peer>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if inbound.is_closed() {
            return;
        }
        if !super::tcp::admit(&connections, from, limits) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.acceptor.clone();
        let (inbound, connections, failures) =
            (inbound.clone(), connections.clone(), failures.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    tracing::debug!(%from, "TLS connection accepted");
                    super::tcp::start_stream(
                        tls,
                        TransportKind::Tls,
                        from,
                        local,
                        inbound,
                        connections,
                        limits,
                        failures,
                    );
                }
                Ok(Err(e)) => {
                    crate::metrics::metrics().sip_tls_handshake_failures.inc();
                    tracing::info!(%from, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    crate::metrics::metrics().sip_tls_handshake_failures.inc();
                    tracing::info!(%from, "TLS handshake timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let files = TlsFiles {
            certificate: dir.join(format!("{name}.crt")),
            private_key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.certificate, cert.cert.pem()).expect("write cert");
        std::fs::write(&files.private_key, cert.key_pair.serialize_pem()).expect("write key");
        files
    }

    /// Errors name the config key and the file (SPEC: clear config errors).
    #[test]
    fn load_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = pair(dir.path(), "a");
        assert!(good.load().is_ok());

        let missing = TlsFiles {
            certificate: dir.path().join("nope.crt"),
            ..good.clone()
        };
        let e = missing.load().expect_err("missing cert").to_string();
        assert!(e.starts_with("server.tls_certificate: cannot read"), "{e}");
        assert!(e.contains("nope.crt"), "{e}");

        let not_pem = dir.path().join("junk");
        std::fs::write(&not_pem, "hello").expect("write");
        let e = TlsFiles {
            certificate: not_pem.clone(),
            ..good.clone()
        }
        .load()
        .expect_err("no cert")
        .to_string();
        assert!(
            e.starts_with("server.tls_certificate:") && e.contains("no PEM CERTIFICATE"),
            "{e}"
        );
        let e = TlsFiles {
            private_key: not_pem,
            ..good.clone()
        }
        .load()
        .expect_err("no key")
        .to_string();
        assert!(
            e.starts_with("server.tls_private_key:") && e.contains("no PEM PRIVATE KEY"),
            "{e}"
        );

        // Another pair's key does not match this certificate.
        let other = pair(dir.path(), "b");
        let e = TlsFiles {
            private_key: other.private_key,
            ..good
        }
        .load()
        .expect_err("mismatch")
        .to_string();
        assert!(e.starts_with("server.tls_private_key:"), "{e}");
    }

    /// A reload swaps what new handshakes get; a broken file keeps the old.
    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = pair(dir.path(), "a");
        let acceptor = Acceptor::new(&files).expect("acceptor");
        let before = acceptor.current.0.read().expect("lock").cert[0].clone();
        let next = pair(dir.path(), "b");
        std::fs::copy(&next.certificate, &files.certificate).expect("copy");
        std::fs::copy(&next.private_key, &files.private_key).expect("copy");
        acceptor.reload().expect("reload");
        let after = acceptor.current.0.read().expect("lock").cert[0].clone();
        assert_ne!(before, after);
        std::fs::write(&files.private_key, "half written").expect("write");
        assert!(acceptor.reload().is_err());
        assert_eq!(acceptor.current.0.read().expect("lock").cert[0], after);
    }
}
