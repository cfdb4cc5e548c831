//! TLS listeners: what a `[[listen]]` table with `tls_cert`/`tls_key`
//! serves, loaded from its files, swapped on reload, counted.
//!
//! rustls 0.23 does the protocol, with the aws-lc-rs crypto provider
//! (rustls's default). Both providers were weighed: *ring* builds with a
//! C compiler alone; so, it turned out, does aws-lc-sys 0.47 on a fresh
//! Debian 12 x86_64 machine with what `tests/run.sh` installs (built there
//! with neither cmake nor clang present, in about 2.5 minutes against
//! ring's 20 seconds). aws-lc-rs won: it has the post-quantum hybrid key
//! exchange (X25519MLKEM768, preferred here) for want of which rustls
//! 0.23.48 deprecates the *ring* provider, and it is what a tokio-rustls
//! server uses by default, so the figures compare like with like. PEM is read through
//! `rustls-pki-types`' `PemObject` (not `rustls-pemfile`, unmaintained:
//! RUSTSEC-2025-0134), and what status shows of a certificate (subject,
//! names, expiry, serial) through `x509-parser`.
//!
//! This module owns three things:
//!
//! * **loading** ([`load`]): a listener's files read and checked whole —
//!   unreadable, not PEM, no certificate, no key, a key that does not
//!   match the certificate, a CA file with no certificate — each a
//!   [`TlsError`] naming the key (`listen[2].tls_key`), which the caller
//!   turns into a located diagnostic (`config::locate`). It runs where
//!   everything that may fail runs: `--check-config`, startup before any
//!   thread, and a reload's prepare, so a file that does not load fails the
//!   reload and the old certificate serves on.
//! * **the slot** ([`TlsSlot`]): per TLS listener, the `ServerConfig` in
//!   force behind a lock the accept loop reads once per accepted
//!   connection (never on the echo path) and a reload's commit replaces.
//!   A new connection takes the `Arc` of the config in force; established
//!   sessions keep theirs, untouched by a swap. Every reload re-reads the
//!   files even when the paths did not change (certificates renewed in
//!   place), and the slot also keeps the handshake counters of its
//!   listener across reloads.
//! * **the session** ([`stream::TlsStream`]): a rustls `ServerConnection`
//!   over the socket as a connection's transport.
//!
//! It must never block a thread that serves clients: nothing here reads a
//! file outside `load`, and the slot's lock is held only to clone an `Arc`.

pub(crate) mod stream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, Listen, Protocol};

/// How long a client has, from its connection, to finish its handshake.
pub(crate) const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener's TLS file that does not load; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {path}: {why}", path = .path.display())]
pub struct TlsError {
    /// The key naming the file (`listen[1].tls_cert`).
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// What status, metrics and the log show of a listener's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The leaf's subject (`CN=echo.example`).
    pub subject: String,
    /// Its subject alternative names (`DNS:echo.example`, `IP:127.0.0.1`).
    pub sans: Vec<String>,
    /// Valid from, Unix seconds.
    pub not_before: i64,
    /// Valid until, Unix seconds.
    pub not_after: i64,
    /// Its serial number, upper-case hex (as `openssl x509 -serial`).
    pub serial: String,
}

impl CertInfo {
    /// True if the certificate is expired or not yet valid at `now`.
    pub fn out_of_date(&self, now: i64) -> bool {
        now > self.not_after || now < self.not_before
    }

    /// One line for the log and the reload report.
    pub fn describe(&self) -> String {
        let sans = if self.sans.is_empty() {
            "no SANs".to_string()
        } else {
            self.sans.join(", ")
        };
        format!(
            "subject {}, {sans}, serial {}, expires {}",
            self.subject,
            self.serial,
            humantime::format_rfc3339_seconds(unix_time(self.not_after))
        )
    }
}

fn unix_time(secs: i64) -> SystemTime {
    let secs = u64::try_from(secs).unwrap_or(0);
    UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A listener's loaded TLS: the rustls config new handshakes use, and
/// what it serves.
#[derive(Debug)]
pub struct Loaded {
    /// Given to each new `ServerConnection`.
    pub(crate) config: Arc<ServerConfig>,
    /// The leaf certificate, described.
    pub info: CertInfo,
}

/// How a handshake ended: the label of `echo_lab_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Finished: the session echoes.
    Ok,
    /// Not finished within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// The client left (or the socket failed) before it finished.
    Closed,
    /// Mutual TLS: the client presented no certificate.
    NoClientCert,
    /// Mutual TLS: the client's certificate does not chain to the CA (or
    /// is expired, revoked, not for client use).
    BadClientCert,
    /// Anything else the client got wrong (not TLS, no shared version,
    /// cipher or ALPN protocol, a bad record).
    ProtocolError,
}

impl Outcome {
    /// Every outcome, in the order of their counters.
    pub(crate) const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Timeout,
        Outcome::Closed,
        Outcome::NoClientCert,
        Outcome::BadClientCert,
        Outcome::ProtocolError,
    ];

    /// The metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Closed => "closed",
            Outcome::NoClientCert => "no_client_cert",
            Outcome::BadClientCert => "bad_client_cert",
            Outcome::ProtocolError => "protocol_error",
        }
    }

    /// The outcome a rustls error ends a handshake with.
    pub(crate) fn of(e: &rustls::Error) -> Outcome {
        match e {
            rustls::Error::NoCertificatesPresented => Outcome::NoClientCert,
            rustls::Error::InvalidCertificate(_) => Outcome::BadClientCert,
            _ => Outcome::ProtocolError,
        }
    }
}

/// A listener's handshake counters, by [`Outcome`].
#[derive(Debug, Default)]
pub(crate) struct Handshakes([AtomicU64; 6]);

impl Handshakes {
    /// Counts one handshake that ended with `outcome`.
    pub(crate) fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].fetch_add(1, Relaxed);
    }

    /// The counts, in [`Outcome::ALL`] order.
    pub(crate) fn get(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }
}

/// A TLS listener's config in force, swapped whole on reload.
#[derive(Debug)]
pub struct TlsSlot {
    current: RwLock<Arc<Loaded>>,
    /// Its handshakes, across reloads.
    pub(crate) handshakes: Arc<Handshakes>,
}

impl TlsSlot {
    fn new(loaded: Loaded) -> Self {
        TlsSlot {
            current: RwLock::new(Arc::new(loaded)),
            handshakes: Arc::default(),
        }
    }

    /// The config in force (new handshakes use it).
    pub(crate) fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, loaded: Arc<Loaded>) -> Arc<Loaded> {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *cur, loaded)
    }
}

/// Every TLS listener of a config, by its `[[listen]]` table's index
/// (the address as configured is not a key: two tables may say port 0),
/// with that address for messages.
#[derive(Debug, Default)]
pub struct TlsSet {
    slots: Vec<(usize, crate::config::Endpoint, Arc<TlsSlot>)>,
}

/// The TLS listeners of a new config, loaded, not yet in force
/// ([`TlsSet::commit`]).
#[derive(Debug, Default)]
pub struct PreparedTls {
    loaded: Vec<(usize, crate::config::Endpoint, Loaded)>,
}

impl PreparedTls {
    /// Loads every TLS listener of `config`; the first file that does not
    /// load is the error.
    pub fn load(config: &Config) -> Result<PreparedTls, TlsError> {
        let mut loaded = Vec::new();
        for (i, listen) in config.listen.iter().enumerate() {
            if listen.protocol == Protocol::Tcp && listen.tls() {
                loaded.push((i, listen.address.clone(), load(listen, i)?));
            }
        }
        Ok(PreparedTls { loaded })
    }

    /// Loads as [`PreparedTls::load`] does; a file that does not load is
    /// a config error located at its key in `file` (the config file).
    pub fn load_located(
        config: &Config,
        file: Option<&Path>,
    ) -> Result<PreparedTls, crate::config::ConfigError> {
        PreparedTls::load(config).map_err(|e| {
            let message = format!("{}: {}", e.path.display(), e.why);
            let diag = match file {
                Some(path) => crate::config::locate(path, &e.key, message),
                None => crate::config::Diagnostic {
                    file: "embedded defaults".into(),
                    line: 1,
                    column: 1,
                    key: Some(e.key.clone()),
                    message,
                },
            };
            crate::config::ConfigError::Invalid(vec![diag])
        })
    }

    /// One line per TLS listener: its address and certificate (the log at
    /// start).
    pub fn describe(&self) -> Vec<String> {
        self.loaded
            .iter()
            .map(|(_, e, l)| format!("tls {e}: {}", l.info.describe()))
            .collect()
    }

    /// A warning per certificate expired or not yet valid (served all the
    /// same, as nginx does).
    pub fn warnings(&self) -> Vec<String> {
        let now = now_unix();
        self.loaded
            .iter()
            .filter(|(_, _, l)| l.info.out_of_date(now))
            .map(|(_, e, l)| {
                let when = if now > l.info.not_after {
                    "expired"
                } else {
                    "not yet valid"
                };
                format!(
                    "the TLS certificate of {e} is {when} ({}); serving it anyway",
                    l.info.describe()
                )
            })
            .collect()
    }
}

impl TlsSet {
    /// The slot of `[[listen]]` table `index`, if it is a TLS listener.
    pub(crate) fn slot(&self, index: usize) -> Option<Arc<TlsSlot>> {
        self.slots
            .iter()
            .find(|(i, _, _)| *i == index)
            .map(|(_, _, s)| s.clone())
    }

    /// The slot of table `index` if it serves `endpoint` still.
    fn same(&self, index: usize, endpoint: &crate::config::Endpoint) -> Option<Arc<TlsSlot>> {
        self.slots
            .iter()
            .find(|(i, e, _)| *i == index && e == endpoint)
            .map(|(_, _, s)| s.clone())
    }

    /// The slots `prepared` will fill: the same slot for a listener
    /// already TLS (swapped at commit), a new one otherwise. Changes
    /// nothing in service.
    pub(crate) fn stage(&self, prepared: &PreparedTls) -> TlsSet {
        let slots = prepared
            .loaded
            .iter()
            .map(|(i, e, l)| {
                let slot = self.same(*i, e).unwrap_or_else(|| {
                    Arc::new(TlsSlot::new(Loaded {
                        config: l.config.clone(),
                        info: l.info.clone(),
                    }))
                });
                (*i, e.clone(), slot)
            })
            .collect();
        TlsSet { slots }
    }

    /// Puts `prepared` in force in `staged` (from [`TlsSet::stage`]),
    /// which becomes this set; returns per listener the certificate it
    /// served before (if it was TLS) and serves now. Cannot fail.
    pub(crate) fn commit(&mut self, staged: TlsSet, prepared: PreparedTls) -> Vec<Swap> {
        let mut swaps = Vec::new();
        for ((_, endpoint, loaded), (_, _, slot)) in prepared.loaded.into_iter().zip(&staged.slots)
        {
            let new = loaded.info.clone();
            let old = slot.replace(Arc::new(loaded));
            let was_tls = self.slots.iter().any(|(_, _, s)| Arc::ptr_eq(s, slot));
            swaps.push(Swap {
                listener: endpoint.to_string(),
                old: was_tls.then(|| old.info.clone()),
                new,
            });
        }
        *self = staged;
        swaps
    }

    /// Each TLS listener's address as configured, certificate and
    /// handshake counters (status and metrics).
    pub(crate) fn each(&self) -> impl Iterator<Item = (String, CertInfo, [u64; 6])> + '_ {
        self.slots
            .iter()
            .map(|(_, e, s)| (e.to_string(), s.current().info.clone(), s.handshakes.get()))
    }

    /// A set in force from the start (no reload before).
    pub(crate) fn start(prepared: PreparedTls) -> TlsSet {
        let slots = prepared
            .loaded
            .into_iter()
            .map(|(i, e, l)| (i, e, Arc::new(TlsSlot::new(l))))
            .collect();
        TlsSet { slots }
    }
}

/// One listener's certificate before and after a reload.
#[derive(Debug, Clone)]
pub(crate) struct Swap {
    pub listener: String,
    pub old: Option<CertInfo>,
    pub new: CertInfo,
}

impl Swap {
    /// `tls 127.0.0.1:7443: subject ... -> subject ...`.
    pub(crate) fn describe(&self) -> String {
        match &self.old {
            Some(old) if *old == self.new => {
                format!("tls {}: unchanged ({})", self.listener, self.new.describe())
            }
            Some(old) => format!(
                "tls {}: {} -> {}",
                self.listener,
                old.describe(),
                self.new.describe()
            ),
            None => format!("tls {}: {}", self.listener, self.new.describe()),
        }
    }
}

/// The crypto provider: aws-lc-rs (see the module docs for why).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads `[[listen]]` table `index`'s TLS files into a rustls config.
pub fn load(listen: &Listen, index: usize) -> Result<Loaded, TlsError> {
    let at = |key: &str| format!("listen[{index}].{key}");
    let (Some(cert_path), Some(key_path)) = (&listen.tls_cert, &listen.tls_key) else {
        return Err(TlsError {
            key: at("tls_cert"),
            path: PathBuf::new(),
            why: "tls_cert and tls_key are both needed".into(),
        });
    };
    let fail = |key: &str, path: &Path, why: String| TlsError {
        key: at(key),
        path: path.to_path_buf(),
        why,
    };
    let chain = read_certs(cert_path).map_err(|why| fail("tls_cert", cert_path, why))?;
    let info = describe(&chain[0]).map_err(|why| fail("tls_cert", cert_path, why))?;
    let key = read_key(key_path).map_err(|why| fail("tls_key", key_path, why))?;
    let provider = provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                "the key does not match the certificate in tls_cert".to_string()
            }
            other => format!("cannot use this key: {other}"),
        };
        fail("tls_key", key_path, why)
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail("tls_cert", cert_path, e.to_string()))?;
    let builder = match &listen.tls_client_ca {
        Some(ca) => {
            let roots = read_roots(ca).map_err(|why| fail("tls_client_ca", ca, why))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail("tls_client_ca", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = listen
        .tls_alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Loaded {
        config: Arc::new(config),
        info,
    })
}

/// Serves one certificate whatever the client asks (SNI is logged, not
/// matched).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err("not a PEM file (no -----BEGIN line)".into());
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    certs_from(&read_pem(path)?)
}

fn certs_from(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (no BEGIN CERTIFICATE block)".into());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    key_from(&read_pem(path)?)
}

fn key_from(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "no private key (PKCS#8, PKCS#1 or SEC1 PEM block)".to_string()
        }
        other => format!("bad PEM: {other}"),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// Subject, SANs, validity and serial of a DER certificate.
fn describe(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => format!("IP:{}", ip_text(ip)),
                GeneralName::RFC822Name(m) => format!("email:{m}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                other => format!("{other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    // As openssl prints it: no leading zero bytes (DER adds one to keep
    // the number positive).
    let raw = cert.raw_serial();
    let first = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    let serial = raw[first..].iter().map(|b| format!("{b:02X}")).collect();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial,
    })
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => format!("{bytes:02x?}"),
    }
}

/// The status document's view of the TLS listeners.
pub(crate) fn status(set: &TlsSet) -> Vec<echo_lab_proto::status::TlsListener> {
    let now = now_unix();
    set.each()
        .map(
            |(listener, info, counts)| echo_lab_proto::status::TlsListener {
                listener,
                expired: info.out_of_date(now),
                subject: info.subject,
                sans: info.sans,
                serial: info.serial,
                not_before_unix: info.not_before,
                not_after_unix: info.not_after,
                handshakes: Outcome::ALL
                    .iter()
                    .zip(counts)
                    .map(|(o, n)| (o.as_str().to_string(), n))
                    .collect(),
            },
        )
        .collect()
}

/// A TLS server config from PEM bytes, no client authentication (for
/// [`serve_client_bytes`]).
fn config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<Arc<ServerConfig>> {
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let chain = certs_from(cert_pem).map_err(bad)?;
    let key = key_from(key_pem).map_err(bad)?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| bad(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    Ok(Arc::new(config))
}

/// Serves `client_bytes` — everything a TLS client sends, then the end of
/// its input — to a connection on a TLS listener with the certificate and
/// key given (PEM), over a real loopback socket, driving the connection
/// state machine as a worker does until it closes (at most 64 turns).
/// Returns the bytes the server wrote back, and how many handshake
/// outcomes were counted (the fuzz target's entry: whatever the bytes, no
/// panic, and a closed connection's handshake counted once).
pub fn serve_client_bytes(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_bytes: &[u8],
) -> std::io::Result<(Vec<u8>, bool, u64)> {
    use std::io::{Read, Write};
    let config = config_from_pem(cert_pem, key_pem)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (server, peer) = listener.accept()?;
    client.write_all(client_bytes)?;
    client.shutdown(std::net::Shutdown::Write)?;
    server.set_nonblocking(true)?;
    let handshakes = Arc::new(Handshakes::default());
    let tls = stream::TlsStream::new(
        mio::net::TcpStream::from_std(server),
        config,
        handshakes.clone(),
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let stats = Arc::new(crate::observe::stats::ServerStats::default());
    let ends = crate::tcp::connection::Ends { peer, local: None };
    let stream = crate::tcp::connection::Stream::Tls(Box::new(tls));
    let mut conn = crate::tcp::connection::Connection::new(
        stream,
        crate::observe::stats::Open::new(&stats),
        ends,
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    for _ in 0..64 {
        use crate::tcp::connection::Step;
        let (step, _) = conn.on_readable(&mut buf, 64 * 1024, true);
        if step == Step::Close || conn.on_writable(64 * 1024) == Step::Close {
            closed = true;
            break;
        }
    }
    drop(conn);
    client.set_nonblocking(true)?;
    let mut back = Vec::new();
    let _ = client.read_to_end(&mut back);
    Ok((back, closed, handshakes.get().iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &[u8] = include_bytes!("../../../fuzz/tls/cert.pem");
    const KEY: &[u8] = include_bytes!("../../../fuzz/tls/key.pem");

    #[test]
    fn garbage_from_a_client_closes_the_connection_and_counts_one_handshake() {
        for bytes in [
            &b""[..],
            b"\x16",
            b"GET / HTTP/1.0\r\n\r\n",
            b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
            &[0xff; 3000],
        ] {
            let (_, closed, counted) = serve_client_bytes(CERT, KEY, bytes).expect("served");
            assert!(closed, "{bytes:?}: not closed");
            assert_eq!(counted, 1, "{bytes:?}: handshakes counted");
        }
    }

    #[test]
    fn an_outcome_is_named_by_the_rustls_error() {
        assert_eq!(
            Outcome::of(&rustls::Error::NoCertificatesPresented),
            Outcome::NoClientCert
        );
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert_eq!(Outcome::of(&bad), Outcome::BadClientCert);
        assert_eq!(
            Outcome::of(&rustls::Error::DecryptError),
            Outcome::ProtocolError
        );
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "ok",
                "timeout",
                "closed",
                "no_client_cert",
                "bad_client_cert",
                "protocol_error"
            ]
        );
    }
}
