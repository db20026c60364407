//! TLS 1.3 with mutual certificate authentication (rustls, ring): the parties of a pair,
//! their credentials (read again from their files when they change, so that keys rotate
//! without a restart), and the small CA that issues them (`twinrx keys`).
//!
//! Identity: each party's certificate names it in a DNS subjectAltName ([`Party::name`]),
//! and all of a pair's certificates come from the pair's own CA. A connecting side checks
//! the listener's name the way a browser does (rustls); a listening side checks the chain
//! (rustls, client certificates required) and then which of the parties it accepts the
//! certificate names (webpki), so that the witness's certificate cannot replicate and a
//! node's cannot vote as the witness.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls;
use twinrx_types::NodeId;

use crate::Error;

/// Who is on one end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// Node a or b of the pair.
    Node(NodeId),
    /// The witness: votes, holds no data.
    Witness,
}

impl Party {
    /// Every party, in wire order.
    pub const ALL: [Party; 3] = [
        Party::Node(NodeId::A),
        Party::Node(NodeId::B),
        Party::Witness,
    ];

    /// The byte that names the party in `HELLO` and `HELLO_REPLY`.
    pub fn wire(self) -> u8 {
        match self {
            Party::Node(n) => n.0,
            Party::Witness => 2,
        }
    }

    /// The party named by a wire byte.
    pub fn from_wire(b: u8) -> Option<Party> {
        Party::ALL.into_iter().find(|p| p.wire() == b)
    }

    /// The DNS subjectAltName its certificate carries.
    pub fn name(self) -> &'static str {
        match self {
            Party::Node(NodeId::A) => "twinrx-node-a",
            Party::Node(_) => "twinrx-node-b",
            Party::Witness => "twinrx-witness",
        }
    }

    /// `a`, `b` or `witness` (files, CLI arguments).
    pub fn short(self) -> &'static str {
        match self {
            Party::Node(NodeId::A) => "a",
            Party::Node(_) => "b",
            Party::Witness => "witness",
        }
    }

    /// The party named `a`, `b` or `witness`.
    pub fn from_short(s: &str) -> Option<Party> {
        Party::ALL.into_iter().find(|p| p.short() == s)
    }

    /// The node, if the party is one.
    pub fn node(self) -> Option<NodeId> {
        match self {
            Party::Node(n) => Some(n),
            Party::Witness => None,
        }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Node(n) => write!(f, "node {n}"),
            Party::Witness => f.write_str("the witness"),
        }
    }
}

/// SHA-256 of a certificate (DER), as lowercase hex: what `status` shows and an operator
/// compares with `openssl x509 -noout -fingerprint -sha256`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which of `candidates` the end-entity certificate `der` names (the first that matches).
/// The chain must have been verified already (rustls did, during the handshake).
pub(crate) fn identity_of(der: &CertificateDer<'_>, candidates: &[Party]) -> Option<Party> {
    let ee = webpki::EndEntityCert::try_from(der).ok()?;
    candidates.iter().copied().find(|p| {
        ServerName::try_from(p.name())
            .is_ok_and(|name| ee.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// What identifies a version of the three files: a rewrite (rotation) changes it.
type Stamp = [Option<(SystemTime, u64)>; 3];

fn stamp(files: [&Path; 3]) -> Stamp {
    files.map(|f| {
        std::fs::metadata(f)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    })
}

struct Loaded {
    stamp: Stamp,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    fingerprint: String,
}

/// This party's TLS credentials: the pair's CA (a PEM bundle: several CAs may be trusted at
/// once while one replaces another), its certificate chain and its private key. Read at
/// [`Credentials::load`] and again, at the next handshake, whenever a file changes; a
/// changed set that does not load is reported (warning, [`Credentials::reload_error`]) and
/// the last good one stays in use.
pub struct Credentials {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    loaded: Mutex<(Arc<Loaded>, Option<String>)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the three files; the error names the file and what is wrong with it.
    pub fn load(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Credentials, Error> {
        let loaded = build(ca_file, cert_file, key_file).map_err(Error::Config)?;
        Ok(Credentials {
            ca_file: ca_file.to_path_buf(),
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            loaded: Mutex::new((Arc::new(loaded), None)),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        let mut guard = match self.loaded.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = stamp([&self.ca_file, &self.cert_file, &self.key_file]);
        if now != guard.0.stamp {
            match build(&self.ca_file, &self.cert_file, &self.key_file) {
                Ok(l) => {
                    tracing::info!(
                        cert = %self.cert_file.display(),
                        fingerprint = %l.fingerprint,
                        "cluster link credentials reloaded"
                    );
                    *guard = (Arc::new(l), None);
                }
                Err(e) => {
                    if guard.1.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "cluster link credentials changed but do not load; the previous ones stay in use");
                    }
                    guard.1 = Some(e);
                }
            }
        }
        guard.0.clone()
    }

    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.current().client.clone()
    }

    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current().server.clone()
    }

    /// The SHA-256 fingerprint of this party's certificate in use.
    pub fn fingerprint(&self) -> String {
        self.current().fingerprint.clone()
    }

    /// Why the files, changed since they were last loaded, do not load (`None`: they do).
    pub fn reload_error(&self) -> Option<String> {
        self.current();
        match self.loaded.lock() {
            Ok(g) => g.1.clone(),
            Err(p) => p.into_inner().1.clone(),
        }
    }
}

fn certs_of(file: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            file.display()
        ));
    }
    Ok(certs)
}

fn build(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Loaded, String> {
    let stamp = stamp([ca_file, cert_file, key_file]);
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_of(ca_file, "CA file")? {
        roots
            .add(c)
            .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    }
    let roots = Arc::new(roots);
    let chain = certs_of(cert_file, "certificate file")?;
    let fingerprint = fingerprint(&chain[0]);
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("key file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls13 = [&rustls::version::TLS13];
    let pair_err = |e: rustls::Error| {
        format!(
            "certificate {} with key {}: {e}",
            cert_file.display(),
            key_file.display()
        )
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&tls13)
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(pair_err)?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&tls13)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(pair_err)?;
    Ok(Loaded {
        stamp,
        client: Arc::new(client),
        server: Arc::new(server),
        fingerprint,
    })
}

/// The server name a connecting side expects of `party`.
pub(crate) fn server_name(party: Party) -> ServerName<'static> {
    ServerName::try_from(party.name()).expect("party names are valid DNS names")
}

/// The distinguished name of every pair CA (`twinrx keys` recreates the issuer from it and
/// the CA key: certificates chain by name and signature).
const CA_COMMON_NAME: &str = "twinrx pair CA";

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM: a secret.
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn validity(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime), Error> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| Error::Config(format!("clock before 1970: {e}")))?;
    let at = |d: Duration| {
        time::OffsetDateTime::from_unix_timestamp(d.as_secs() as i64)
            .map_err(|e| Error::Config(format!("certificate validity: {e}")))
    };
    // A day of slack before now: a peer whose clock is a little behind still accepts it.
    let from = at(now.saturating_sub(Duration::from_secs(86_400)))?;
    let to = at(now + Duration::from_secs(u64::from(days) * 86_400))?;
    Ok((from, to))
}

fn ca_params(days: u32) -> Result<rcgen::CertificateParams, Error> {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, CA_COMMON_NAME);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (p.not_before, p.not_after) = validity(days)?;
    Ok(p)
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// A new pair CA (ECDSA P-256), valid for `days`.
pub fn new_ca(days: u32) -> Result<Issued, Error> {
    let key = rcgen::KeyPair::generate().map_err(rcgen_err("CA key"))?;
    let cert = ca_params(days)?
        .self_signed(&key)
        .map_err(rcgen_err("CA certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `party` (ECDSA P-256, its name as DNS subjectAltName, usable as TLS
/// client and server), signed with the CA key `ca_key_pem`, valid for `days`.
pub fn issue(ca_key_pem: &str, party: Party, days: u32) -> Result<Issued, Error> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(rcgen_err("CA key"))?;
    let issuer = rcgen::Issuer::new(ca_params(days)?, ca_key);
    let mut p = rcgen::CertificateParams::new(vec![party.name().to_string()])
        .map_err(rcgen_err("certificate"))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, party.name());
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    (p.not_before, p.not_after) = validity(days)?;
    let key = rcgen::KeyPair::generate().map_err(rcgen_err("key"))?;
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// File names of a key directory: `ca.pem`, `ca.key`, and `<a|b|witness>.pem` / `.key`.
pub fn cert_file(dir: &Path, party: Party) -> PathBuf {
    dir.join(format!("{}.pem", party.short()))
}

/// See [`cert_file`].
pub fn key_file(dir: &Path, party: Party) -> PathBuf {
    dir.join(format!("{}.key", party.short()))
}

/// See [`cert_file`].
pub fn ca_file(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// See [`cert_file`].
pub fn ca_key_file(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Config(format!("{}: {e}", what.display()))
}

/// Writes `text` to `path` through a temp file and a rename (a reader sees the old or the
/// new file, never half of one), `mode` from the start.
fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes a new pair CA and a certificate for every party into `dir` (created if needed):
/// see [`cert_file`]. Keys are written 0600. Refuses to overwrite an existing CA.
pub fn init_dir(dir: &Path, days: u32) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if ca_key_file(dir).exists() || ca_file(dir).exists() {
        return Err(Error::Config(format!(
            "{}: a CA is there already; use another directory, or `issue` to replace one \
             party's certificate",
            dir.display()
        )));
    }
    let ca = new_ca(days)?;
    write_atomic(&ca_key_file(dir), &ca.key_pem, 0o600)?;
    write_atomic(&ca_file(dir), &ca.cert_pem, 0o644)?;
    for p in Party::ALL {
        issue_into(&ca_key_file(dir), p, days, dir)?;
    }
    Ok(())
}

/// Issues a new certificate for `party` with the CA key in `ca_key`, into `out_dir` (its
/// `.pem` and `.key` replaced atomically, the key 0600).
pub fn issue_into(ca_key: &Path, party: Party, days: u32, out_dir: &Path) -> Result<(), Error> {
    let key_pem = std::fs::read_to_string(ca_key).map_err(io_err(ca_key))?;
    let leaf = issue(&key_pem, party, days)?;
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    write_atomic(&key_file(out_dir, party), &leaf.key_pem, 0o600)?;
    write_atomic(&cert_file(out_dir, party), &leaf.cert_pem, 0o644)
}

/// The credentials of `party` in a directory written by [`init_dir`].
pub fn credentials_in(dir: &Path, party: Party) -> Result<Arc<Credentials>, Error> {
    Credentials::load(&ca_file(dir), &cert_file(dir, party), &key_file(dir, party)).map(Arc::new)
}

/// A key directory shared by this process's unit tests.
#[cfg(test)]
pub(crate) fn test_credentials(party: Party) -> Arc<Credentials> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("twinrx-replicator-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        init_dir(&d, 30).expect("test keys");
        d
    });
    credentials_in(dir, party).expect("test credentials")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parties_round_trip_and_have_distinct_names() {
        for p in Party::ALL {
            assert_eq!(Party::from_wire(p.wire()), Some(p));
            assert_eq!(Party::from_short(p.short()), Some(p));
        }
        assert_eq!(Party::from_wire(3), None);
        let names: std::collections::BTreeSet<_> = Party::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn an_issued_certificate_names_its_party_and_no_other() {
        let ca = new_ca(30).expect("ca");
        for p in Party::ALL {
            let leaf = issue(&ca.key_pem, p, 30).expect("issue");
            let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("pem");
            assert_eq!(identity_of(&der, &Party::ALL), Some(p));
            let others: Vec<Party> = Party::ALL.into_iter().filter(|q| *q != p).collect();
            assert_eq!(identity_of(&der, &others), None);
        }
    }
}
