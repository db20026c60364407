//! The cluster link's credentials: the config keys that name them (`[pair]` and the witness
//! config share them), and `twinrx keys`, which makes a pair's CA and a certificate for each
//! party (replicator/PROTOCOL.md "Identities").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use replicator::tls;
use replicator::{Credentials, Party};

/// The credential keys of a config section, as written.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RawCredentials {
    /// The pair's CA certificate(s), PEM (several while one CA replaces another).
    pub ca_file: Option<PathBuf>,
    /// This party's certificate, PEM.
    pub cert_file: Option<PathBuf>,
    /// This party's private key, PEM: a secret (mode 0600).
    pub key_file: Option<PathBuf>,
    /// The link's former pre-shared key: refused with the way to certificates.
    pub psk_file: Option<PathBuf>,
}

/// Loads the credentials named by `raw` (keys prefixed with `prefix`, e.g. `pair.`), or
/// reports each problem naming its key.
pub fn load(
    prefix: &str,
    raw: &RawCredentials,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<Arc<Credentials>> {
    if raw.psk_file.is_some() {
        problems.push(format!(
            "{prefix}psk_file: the cluster link no longer uses a pre-shared key: it runs over TLS \
             1.3 with a certificate for each node and the witness. Run `twinrx keys init DIR` \
             once, give each machine DIR/ca.pem and its own DIR/<a|b|witness>.pem and .key, and \
             set {prefix}ca_file, {prefix}cert_file and {prefix}key_file instead \
             (docs/operations.md \"Keys\")"
        ));
        return None;
    }
    let before = problems.len();
    let mut need = |key: &str, v: &Option<PathBuf>| match v {
        Some(p) => Some(resolve(p)),
        None => {
            problems.push(format!(
                "{prefix}{key}: missing: the cluster link needs the pair's CA (ca_file), this \
                 party's certificate (cert_file) and its key (key_file); `twinrx keys init DIR` \
                 makes them"
            ));
            None
        }
    };
    let ca = need("ca_file", &raw.ca_file);
    let cert = need("cert_file", &raw.cert_file);
    let key = need("key_file", &raw.key_file);
    let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
        return None;
    };
    if let Err(e) = crate::secret::check_private(&format!("{prefix}key_file"), &key) {
        problems.push(e);
    }
    if problems.len() != before {
        return None;
    }
    match Credentials::load(&ca, &cert, &key) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            problems.push(format!("{prefix}ca_file/cert_file/key_file: {e}"));
            None
        }
    }
}

/// `twinrx keys`.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCmd {
    /// Make a new pair CA and a certificate and key for node a, node b and the witness, in
    /// DIR (created if needed; refused if a CA is there already). Keys are written 0600.
    Init {
        dir: PathBuf,
        /// Days the CA and the certificates are valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a new certificate and key for one party with the CA key of `init` (key
    /// rotation, a replaced machine). The party's files in --out are replaced atomically.
    Issue {
        /// a, b or witness.
        party: String,
        /// The CA's private key (DIR/ca.key of `init`).
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// Where to write <party>.pem and <party>.key (default: the CA key's directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
}

fn fingerprint_of(file: &Path) -> String {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(file)
        .map(|c| tls::fingerprint(&c))
        .unwrap_or_else(|e| format!("? ({e})"))
}

/// Runs `twinrx keys …`; prints what was written and where each file goes.
pub fn run(cmd: KeysCmd) -> anyhow::Result<i32> {
    match cmd {
        KeysCmd::Init { dir, days } => {
            tls::init_dir(&dir, days)?;
            println!("wrote a new pair CA and certificates in {}:", dir.display());
            println!("  ca.pem       the pair's CA certificate: on a, b and the witness (ca_file)");
            println!(
                "  ca.key       the CA's key: keep it off the three machines; `twinrx keys issue` needs it"
            );
            for p in Party::ALL {
                println!(
                    "  {s}.pem {s}.key{pad}  {p}'s certificate and key (cert_file, key_file), sha256 {}",
                    fingerprint_of(&tls::cert_file(&dir, p)),
                    s = p.short(),
                    pad = " ".repeat(7 - p.short().len()),
                );
            }
            println!("valid for {days} days; keys are mode 0600");
            Ok(0)
        }
        KeysCmd::Issue {
            party,
            ca_key,
            out,
            days,
        } => {
            let Some(p) = Party::from_short(&party) else {
                anyhow::bail!("party {party:?}: must be a, b or witness");
            };
            let out = match out {
                Some(o) => o,
                None => ca_key
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(".")),
            };
            tls::issue_into(&ca_key, p, days, &out)?;
            let cert = tls::cert_file(&out, p);
            println!(
                "wrote {} and {} ({p}, valid for {days} days), sha256 {}",
                cert.display(),
                tls::key_file(&out, p).display(),
                fingerprint_of(&cert)
            );
            println!(
                "the party loads them at its next link handshake: copy them over its cert_file \
                 and key_file (the link keeps running; restart the standby or the witness to \
                 use them at once)"
            );
            Ok(0)
        }
    }
}
