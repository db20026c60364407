//! The witness's config file (`twinrx witness --config FILE`): deserialized, then validated
//! into [`WitnessSettings`], every problem at once and each naming its key (STYLE §4).
//!
//! Keys are top-level (the witness has no sections); they are documented in
//! `docs/config.md` ("Witness config"). Unknown keys are refused. Relative paths are resolved
//! against the config file's directory. The link's credentials are read here
//! ([`crate::keys::load`]): a missing certificate or a key file others may read is a config
//! problem naming its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWitnessConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The former pre-shared key: refused, naming the way to certificates.
    pub psk_file: Option<PathBuf>,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default)]
    pub lease_ms: Option<u64>,
    #[serde(default)]
    pub lease_margin_ms: Option<u64>,
}

fn default_listen() -> String {
    "0.0.0.0:7402".into()
}
fn default_data_dir() -> PathBuf {
    "/var/lib/twinrx-witness".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:7403".into()
}

/// A validated witness config.
#[derive(Debug)]
pub struct WitnessSettings {
    /// Where the nodes connect (cluster-link protocol inside TLS 1.3).
    pub listen: SocketAddr,
    /// Holds `witness.json` (the persisted vote and record) and `witness.lock`.
    pub data_dir: PathBuf,
    /// The witness's TLS credentials.
    pub credentials: std::sync::Arc<replicator::Credentials>,
    /// `None` when `admin_listen = "off"`.
    pub admin_listen: Option<SocketAddr>,
    /// Must equal the nodes' `[ha]` lease settings.
    pub ha: ha::WitnessConfig,
    /// Non-fatal findings (a group-readable key file), logged at start.
    pub warnings: Vec<String>,
}

/// Longest lease accepted: beyond this a failed active blocks failover for minutes.
const LEASE_MS_LIMIT: u64 = 60_000;

/// Reads and validates `path`; the error lists every problem, each naming its key.
pub fn load(path: &Path) -> anyhow::Result<WitnessSettings> {
    crate::config::load_toml(path, "witness config", validate)
}

fn addr(key: &str, v: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match v.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "{key} = {v:?}: not an address:port (e.g. \"0.0.0.0:7402\" or \"[::]:7402\")"
            ));
            None
        }
    }
}

/// Validates `raw` read from `path` (relative paths resolve against `path`'s directory).
pub fn validate(path: &Path, raw: RawWitnessConfig) -> Result<WitnessSettings, Vec<String>> {
    let mut problems = Vec::new();
    let warnings = Vec::new();
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let resolve = |p: &Path| -> PathBuf {
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        std::path::absolute(&joined).unwrap_or(joined)
    };

    let listen = addr("listen", &raw.listen, &mut problems);
    let admin_listen = if raw.admin_listen == "off" {
        None
    } else {
        addr("admin_listen", &raw.admin_listen, &mut problems)
    };
    if let (Some(l), Some(a)) = (listen, admin_listen) {
        if l == a {
            problems.push(format!("admin_listen = \"{a}\": already used by listen"));
        }
    }

    let defaults = ha::WitnessConfig::default();
    let lease_ms = raw.lease_ms.unwrap_or(defaults.lease_ms);
    let lease_margin_ms = raw.lease_margin_ms.unwrap_or(defaults.lease_margin_ms);
    if !(1..=LEASE_MS_LIMIT).contains(&lease_ms) {
        problems.push(format!(
            "lease_ms = {lease_ms}: must be between 1 and {LEASE_MS_LIMIT} (and equal to the nodes' ha.lease_ms)"
        ));
    }
    if lease_margin_ms == 0 || lease_margin_ms > lease_ms {
        problems.push(format!(
            "lease_margin_ms = {lease_margin_ms}: must be above 0 and at most lease_ms ({lease_ms}) (and equal to the nodes' ha.lease_margin_ms)"
        ));
    }

    let credentials = crate::keys::load(
        "",
        &crate::keys::RawCredentials {
            ca_file: raw.ca_file.clone(),
            cert_file: raw.cert_file.clone(),
            key_file: raw.key_file.clone(),
            psk_file: raw.psk_file.clone(),
        },
        &resolve,
        &mut problems,
    );

    if problems.is_empty() {
        if let (Some(listen), Some(credentials)) = (listen, credentials) {
            return Ok(WitnessSettings {
                listen,
                data_dir: resolve(&raw.data_dir),
                credentials,
                admin_listen,
                ha: ha::WitnessConfig {
                    lease_ms,
                    lease_margin_ms,
                },
                warnings,
            });
        }
    }
    Err(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A key directory in `dir`/keys; the witness's credential keys naming it.
    fn keys(dir: &Path) -> &'static str {
        if !dir.join("keys/ca.pem").exists() {
            replicator::tls::init_dir(&dir.join("keys"), 30).expect("keys");
        }
        "ca_file = \"keys/ca.pem\"\ncert_file = \"keys/witness.pem\"\nkey_file = \"keys/witness.key\"\n"
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "twinrx-witness-config-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    fn check(dir: &Path, text: &str) -> Result<WitnessSettings, Vec<String>> {
        let raw: RawWitnessConfig = toml::from_str(text).expect("toml");
        validate(&dir.join("witness.toml"), raw)
    }

    #[test]
    fn defaults_are_valid_and_paths_are_relative_to_the_file() {
        let d = scratch("defaults");
        let k = keys(&d);
        let c = check(&d, &format!("{k}data_dir = \"w\"\n")).expect("valid");
        assert_eq!(c.listen, "0.0.0.0:7402".parse().expect("addr"));
        assert_eq!(
            c.admin_listen,
            Some("127.0.0.1:7403".parse().expect("addr"))
        );
        assert_eq!(c.data_dir, d.join("w"));
        assert_eq!(c.ha, ha::WitnessConfig::default());
        assert!(c.warnings.is_empty());
        let off = check(&d, &format!("{k}admin_listen = \"off\"\n")).expect("ok");
        assert_eq!(off.admin_listen, None);
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_key() {
        let d = scratch("problems");
        let problems = check(
            &d,
            "listen = \"nowhere\"\nadmin_listen = \"1.2.3.4\"\nlease_ms = 0\nlease_margin_ms = 0\n",
        )
        .expect_err("invalid");
        let text = problems.join("\n");
        assert!(text.contains("listen = \"nowhere\""), "{text}");
        assert!(text.contains("admin_listen = \"1.2.3.4\""), "{text}");
        assert!(text.contains("lease_ms = 0"), "{text}");
        assert!(text.contains("lease_margin_ms = 0"), "{text}");
        for k in ["ca_file", "cert_file", "key_file"] {
            assert!(text.contains(&format!("{k}: missing")), "{text}");
        }
        assert_eq!(problems.len(), 7, "{text}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_readable_key_a_missing_file_and_a_pre_shared_key_are_refused() {
        let d = scratch("keyfile");
        let k = keys(&d);
        std::fs::set_permissions(
            d.join("keys/witness.key"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        let e = check(&d, k).expect_err("group-readable");
        assert!(
            e[0].contains("key_file") && e[0].contains("chmod 600"),
            "{e:?}"
        );
        std::fs::set_permissions(
            d.join("keys/witness.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        assert!(check(&d, k).is_ok());
        let e = check(&d, &k.replace("keys/ca.pem", "missing.pem")).expect_err("missing file");
        assert!(e[0].contains("missing.pem"), "{e:?}");
        let e = check(&d, "psk_file = \"cluster.psk\"").expect_err("psk");
        assert!(
            e[0].contains("psk_file") && e[0].contains("twinrx keys init"),
            "{e:?}"
        );
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RawWitnessConfig>("listn = \"x\"\n").expect_err("unknown");
        assert!(err.to_string().contains("listn"), "{err}");
    }
}
