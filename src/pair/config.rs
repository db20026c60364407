//! The `[pair]` section of a node's config: the links to the peer node, the pair's key and
//! the fsync policy of the peer-journal copy. Absent section = a single node (no link).
//!
//! Contract: [`validate`] reports every problem into the node's problem list, each naming
//! its key (`pair.peer[1]`, `pair.key_file`, …), and returns [`PairSettings`] only when the
//! section is valid. The link's credentials are read here ([`crate::keys::load`]), so a
//! missing or unreadable certificate, or a key file others may read, is a config problem.
//!
//! Links: link `i` is `listen[i]` on node b and `peer[i]` on node a. Node a dials, node b
//! listens (deterministic: never two sessions for one link). Each node needs the list it
//! uses (`peer` on a, `listen` on b); the other list may be given too (the same config shape
//! on both nodes) and must then have the same length.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use twinrx_types::NodeId;

/// `[pair]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPair {
    /// The peer's link addresses, one per link (node a dials them).
    #[serde(default)]
    pub peer: Vec<String>,
    /// This node's link listen addresses, one per link (node b listens on them).
    #[serde(default)]
    pub listen: Vec<String>,
    /// The link's credentials (docs/config.md `[pair]`).
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The former pre-shared key: refused, naming the way to certificates.
    pub psk_file: Option<PathBuf>,
    #[serde(default = "default_copy_fsync")]
    pub copy_fsync: String,
}

fn default_copy_fsync() -> String {
    "batch".into()
}

/// How this node takes part in link `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSide {
    /// Node a: connects to the peer's address.
    Dial(SocketAddr),
    /// Node b: listens on this address.
    Listen(SocketAddr),
}

impl LinkSide {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkSide::Dial(_) => "dial",
            LinkSide::Listen(_) => "listen",
        }
    }
    pub fn addr(&self) -> SocketAddr {
        match self {
            LinkSide::Dial(a) | LinkSide::Listen(a) => *a,
        }
    }
}

/// A validated `[pair]` section.
#[derive(Debug, Clone)]
pub struct PairSettings {
    pub me: NodeId,
    pub peer: NodeId,
    /// One per link, in config order.
    pub links: Vec<LinkSide>,
    /// This node's TLS credentials for the link (and for its session with the witness).
    pub credentials: std::sync::Arc<replicator::Credentials>,
    pub copy_fsync: journal::FsyncPolicy,
    /// Non-fatal findings (a group-readable key file), logged at start.
    pub warnings: Vec<String>,
}

/// Most links a pair may configure (each is a session with its own tasks and stats).
const LINKS_MAX: usize = 8;

fn addrs(key: &str, list: &[String], problems: &mut Vec<String>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(sa) => {
                if out.contains(&sa) {
                    problems.push(format!("{key}[{i}] = {a:?}: listed twice"));
                }
                out.push(sa);
            }
            Err(_) => problems.push(format!(
                "{key}[{i}] = {a:?}: not an address:port (e.g. \"10.0.0.2:7400\" or \"[fd00::2]:7400\")"
            )),
        }
    }
    out
}

/// Validates `[pair]` of node `me`; relative paths are resolved with `resolve`.
pub fn validate(
    raw: Option<&RawPair>,
    me: NodeId,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<PairSettings> {
    let raw = raw?;
    let before = problems.len();
    let warnings = Vec::new();
    let peer = addrs("pair.peer", &raw.peer, problems);
    let listen = addrs("pair.listen", &raw.listen, problems);
    let (used_key, used, other_key, other) = if me == NodeId::A {
        ("pair.peer", &raw.peer, "pair.listen", &raw.listen)
    } else {
        ("pair.listen", &raw.listen, "pair.peer", &raw.peer)
    };
    if used.is_empty() {
        problems.push(format!(
            "{used_key}: missing: node {me} {} one address per link",
            if me == NodeId::A {
                "dials the peer: give the peer's link addresses,"
            } else {
                "listens for the peer: give"
            }
        ));
    } else if used.len() > LINKS_MAX {
        problems.push(format!(
            "{used_key}: {} links: at most {LINKS_MAX}",
            used.len()
        ));
    }
    if !other.is_empty() && other.len() != used.len() {
        problems.push(format!(
            "{other_key}: {} addresses but {used_key} has {}: one per link on both",
            other.len(),
            used.len()
        ));
    }
    let copy_fsync = match raw.copy_fsync.parse::<journal::FsyncPolicy>() {
        Ok(p) => p,
        Err(_) => {
            problems.push(format!(
                "pair.copy_fsync = {:?}: must be \"batch\", \"interval:<ms>\" or \"never\"",
                raw.copy_fsync
            ));
            journal::FsyncPolicy::Batch
        }
    };
    let credentials = crate::keys::load(
        "pair.",
        &crate::keys::RawCredentials {
            ca_file: raw.ca_file.clone(),
            cert_file: raw.cert_file.clone(),
            key_file: raw.key_file.clone(),
            psk_file: raw.psk_file.clone(),
        },
        resolve,
        problems,
    );
    if problems.len() != before {
        return None;
    }
    let links = if me == NodeId::A {
        peer.into_iter().map(LinkSide::Dial).collect()
    } else {
        listen.into_iter().map(LinkSide::Listen).collect()
    };
    Some(PairSettings {
        me,
        peer: me.peer(),
        links,
        credentials: credentials?,
        copy_fsync,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("twinrx-pair-config-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    /// A key directory in `dir`/keys, and the `[pair]` keys of node `me` naming it.
    fn keys(dir: &Path, me: &str) -> String {
        if !dir.join("keys/ca.pem").exists() {
            replicator::tls::init_dir(&dir.join("keys"), 30).expect("keys");
        }
        format!("ca_file = \"keys/ca.pem\"\ncert_file = \"keys/{me}.pem\"\nkey_file = \"keys/{me}.key\"\n")
    }

    fn check(dir: &Path, me: NodeId, text: &str) -> Result<Option<PairSettings>, Vec<String>> {
        let raw: RawPair = toml::from_str(text).expect("toml");
        let base = dir.to_path_buf();
        let resolve = move |p: &Path| base.join(p);
        let mut problems = Vec::new();
        let s = validate(Some(&raw), me, &resolve, &mut problems);
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn node_a_dials_the_peer_list_and_node_b_listens_on_its_list() {
        let d = scratch("sides");
        let text = format!(
            "peer = [\"10.0.0.2:7400\", \"10.1.0.2:7400\"]\n\
             listen = [\"10.0.0.1:7400\", \"10.1.0.1:7400\"]\n{}",
            keys(&d, "a")
        );
        let a = check(&d, NodeId::A, &text).expect("valid").expect("some");
        assert_eq!(
            a.links,
            vec![
                LinkSide::Dial("10.0.0.2:7400".parse().expect("addr")),
                LinkSide::Dial("10.1.0.2:7400".parse().expect("addr")),
            ]
        );
        assert_eq!(a.peer, NodeId::B);
        assert_eq!(a.copy_fsync, journal::FsyncPolicy::Batch);
        let b = check(
            &d,
            NodeId::B,
            &format!("listen = [\"10.0.0.1:7400\"]\n{}", keys(&d, "b")),
        )
        .expect("valid")
        .expect("some");
        assert_eq!(
            b.links,
            vec![LinkSide::Listen("10.0.0.1:7400".parse().expect("addr"))]
        );
        let mut problems = Vec::new();
        assert!(validate(None, NodeId::A, &|p: &Path| p.to_path_buf(), &mut problems).is_none());
        assert!(problems.is_empty());
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn every_problem_is_reported_naming_the_key() {
        let d = scratch("problems");
        let e = check(
            &d,
            NodeId::A,
            "peer = [\"x\"]\nlisten = [\"10.0.0.1:1\", \"10.0.0.1:1\"]\ncopy_fsync = \"often\"\n",
        )
        .expect_err("invalid");
        let text = e.join("\n");
        assert!(text.contains("pair.peer[0] = \"x\""), "{text}");
        assert!(
            text.contains("pair.listen[1] = \"10.0.0.1:1\": listed twice"),
            "{text}"
        );
        assert!(
            text.contains("pair.listen: 2 addresses but pair.peer has 1"),
            "{text}"
        );
        assert!(text.contains("pair.copy_fsync = \"often\""), "{text}");
        for k in ["ca_file", "cert_file", "key_file"] {
            assert!(text.contains(&format!("pair.{k}: missing")), "{text}");
        }
        assert_eq!(e.len(), 7, "{text}");
        let e = check(&d, NodeId::B, "peer = [\"10.0.0.2:7400\"]\n").expect_err("no listen");
        assert!(e[0].contains("pair.listen: missing"), "{e:?}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_key_others_may_read_and_a_pre_shared_key_are_refused_naming_the_fix() {
        let d = scratch("keyfile");
        let text = format!("peer = [\"10.0.0.2:7400\"]\n{}", keys(&d, "a"));
        for mode in [0o644, 0o640] {
            std::fs::set_permissions(d.join("keys/a.key"), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let e = check(&d, NodeId::A, &text).expect_err("readable key");
            assert!(
                e[0].contains("pair.key_file") && e[0].contains("chmod 600"),
                "{e:?}"
            );
        }
        std::fs::set_permissions(d.join("keys/a.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        assert!(check(&d, NodeId::A, &text).is_ok());
        // A certificate file that is not one.
        std::fs::write(d.join("bad.pem"), "hello\n").expect("write");
        let bad = text.replace("keys/a.pem", "bad.pem");
        let e = check(&d, NodeId::A, &bad).expect_err("bad cert");
        assert!(e[0].contains("bad.pem"), "{e:?}");
        // A config of the pre-shared-key link says what to do instead.
        let e = check(
            &d,
            NodeId::A,
            "peer = [\"10.0.0.2:7400\"]\npsk_file = \"cluster.psk\"\n",
        )
        .expect_err("psk");
        assert!(
            e[0].contains("pair.psk_file") && e[0].contains("twinrx keys init"),
            "{e:?}"
        );
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RawPair>("peers = []\n").expect_err("unknown");
        assert!(err.to_string().contains("peers"), "{err}");
    }
}
