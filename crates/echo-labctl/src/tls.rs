//! The client's TLS setup, shared by `connect --tls` and `bench --tls`.
//!
//! This module owns the command-line options of TLS ([`TlsArgs`]), turning
//! them into a rustls `ClientConfig` (trusted roots from `--ca`, or no
//! verification at all with `--insecure`; a client certificate with
//! `--cert`/`--key`), the name the server's certificate is checked against,
//! and the one-paragraph description of a negotiated session (version,
//! cipher, the server certificate's subject and expiry). It never does I/O
//! on a connection: the interactive session ([`crate::client_tls`]) and the
//! load engines (`bench::link`) drive the `ClientConnection`s themselves.
//!
//! The crypto provider is rustls' ring one (see Cargo.toml for why). PEM
//! files are read through `rustls-pki-types`' `PemObject`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// `--tls` and its options, shared by `connect` and `bench`.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Speak TLS (1.2 or 1.3) to the server.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: trust the certificates in this PEM file (instead of none).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        conflicts_with = "insecure"
    )]
    pub ca: Option<PathBuf>,
    /// With --tls: do not verify the server's certificate (testing only).
    #[arg(long, requires = "tls")]
    pub insecure: bool,
    /// With --tls: the name the server's certificate must carry, and the
    /// SNI sent [default: the host part of the address].
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
    /// With --tls: present this client certificate (PEM chain, leaf first).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// With --tls: the private key of --cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,
}

/// Why the TLS setup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--tls needs --ca FILE (the CA that signed the server's certificate) or --insecure")]
    NoTrust,
    /// (`cause` is in the message, not a `source`, so that it is said once.)
    #[error("cannot read {what} from {path}: {cause}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: a certificate rustls cannot use as a root: {cause}")]
    BadRoot { path: PathBuf, cause: rustls::Error },
    #[error("`{name}` is not a valid server name (DNS name or IP address)")]
    BadName { name: String },
    #[error("TLS setup failed: {0}")]
    Rustls(rustls::Error),
}

/// What a TLS client needs for every connection: the config and the name
/// the server's certificate is checked against.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl TlsTarget {
    /// A new client connection to the target.
    pub fn connection(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.name.clone())
    }
}

impl From<rustls::Error> for TlsSetupError {
    fn from(e: rustls::Error) -> Self {
        TlsSetupError::Rustls(e)
    }
}

impl TlsArgs {
    /// The target for `addr` (HOST:PORT), or `None` without `--tls`.
    pub fn target(&self, addr: &str) -> Result<Option<TlsTarget>, TlsSetupError> {
        if !self.tls {
            return Ok(None);
        }
        let name = self.server_name.clone().unwrap_or_else(|| host_of(addr));
        let name =
            ServerName::try_from(name.clone()).map_err(|_| TlsSetupError::BadName { name })?;
        Ok(Some(TlsTarget {
            config: Arc::new(self.config()?),
            name,
        }))
    }

    fn config(&self) -> Result<ClientConfig, TlsSetupError> {
        let provider = Arc::new(provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match (&self.ca, self.insecure) {
            (Some(ca), _) => builder.with_root_certificates(roots(ca)?),
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
            (None, false) => return Err(TlsSetupError::NoTrust),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                Ok(builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?)
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

/// rustls' aws-lc-rs provider, the daemon's: the post-quantum hybrid key
/// exchange (X25519MLKEM768) first.
fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The host part of HOST:PORT (`[::1]:7` gives `::1`).
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = |cause| TlsSetupError::Pem {
        what: "certificates",
        path: path.to_path_buf(),
        cause,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|cause| TlsSetupError::Pem {
        what: "a private key",
        path: path.to_path_buf(),
        cause,
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|cause| TlsSetupError::BadRoot {
            path: path.to_path_buf(),
            cause,
        })?;
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted, but the handshake signatures
/// are still checked (the session is encrypted to whoever holds the key of
/// the certificate shown, just not verified to be the server meant).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The negotiated session in a few lines: protocol version, cipher suite,
/// ALPN, and the server certificate's subject, issuer and expiry.
pub fn describe(conn: &ClientConnection) -> String {
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown");
    let mut out = format!("TLS: {version}, {suite}");
    if let Some(alpn) = conn.alpn_protocol() {
        out.push_str(&format!(", ALPN {}", String::from_utf8_lossy(alpn)));
    }
    match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => out.push_str(&format!("\n{}", describe_certificate(leaf))),
        None => out.push_str("\nserver certificate: none"),
    }
    out
}

/// Subject, issuer and validity end of a DER certificate.
fn describe_certificate(der: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after.timestamp();
            let expiry = u64::try_from(not_after)
                .map(|s| {
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s))
                        .to_string()
                })
                .unwrap_or_else(|_| cert.validity().not_after.to_string());
            format!(
                "server certificate: subject {}; issuer {}; expires {expiry}",
                cert.subject(),
                cert.issuer()
            )
        }
        Err(e) => format!("server certificate: cannot be parsed ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("localhost:7007"), "localhost");
        assert_eq!(host_of("[::1]:7007"), "::1");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
    }
}
