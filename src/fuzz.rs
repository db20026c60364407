//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run with `cargo +nightly fuzz`),
//! also replayed over the seed corpora by `tests/fuzz_corpus.rs` on stable. Each takes any
//! bytes and must neither panic nor hang; what it returns is not checked here.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;

use receiver::record::{Protocol, Record, Transport};
use receiver::snmp::{
    AuthProtocol, Engine, Outcome, PrivProtocol, Secret, SnmpConfig, SnmpReceiver, UsmUser,
};
use receiver::syslog::{Frame, TcpFramer};
use twinrx_types::{Epoch, NodeId, Offset, Seq, UnixNanos};

const SOURCE: &str = "192.0.2.7:514";

fn source() -> SocketAddr {
    SOURCE
        .parse()
        .unwrap_or(SocketAddr::from(([192, 0, 2, 7], 514)))
}

/// The stream entry of `raw` as the stream writer builds it (parse and render).
fn render(protocol: Protocol, raw: &[u8], decoded: Vec<u8>) {
    let rec = Record {
        protocol,
        transport: Transport::Udp,
        received_at: UnixNanos(1_764_036_000_000_000_001),
        key: receiver::key::syslog_key(source().ip(), raw),
        source: source(),
        raw: raw.to_vec(),
        decoded,
    };
    let (line, _) = crate::stream::entry_json(
        Offset(1),
        Epoch(1),
        &[(NodeId::A, Seq(1))],
        false,
        &rec,
        &[],
    );
    assert!(
        serde_json::from_slice::<serde_json::Value>(&line).is_ok(),
        "an entry is not JSON"
    );
}

/// Syslog: `data` as one UDP message (key, parse, entry), and as a TCP byte stream cut into
/// reads at the lengths its first bytes give, deframed (RFC 6587) with a small limit.
pub fn syslog(data: &[u8]) {
    render(Protocol::Syslog, data, Vec::new());
    let mut framer = TcpFramer::new(256);
    let cuts: Vec<usize> = data
        .iter()
        .take(4)
        .map(|b| usize::from(*b % 64) + 1)
        .collect();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(1)
            .min(rest.len());
        let (read, more) = rest.split_at(n);
        framer.extend(read);
        while let Some(frame) = framer.next_frame() {
            match frame {
                Frame::Message(m) => assert!(m.len() <= 256, "a frame above the limit"),
                Frame::Oversize { .. } => {}
                Frame::BadFraming(_) => return,
            }
        }
        rest = more;
        i += 1;
    }
    let _ = framer.finish();
}

thread_local! {
    /// One receiver for all inputs: localising passphrases costs a megabyte of hashing each.
    static SNMP: RefCell<Option<SnmpReceiver>> = const { RefCell::new(None) };
}

/// The engine and user of the Net-SNMP captures in `receiver/tests/fixtures/snmp` (the seed
/// corpus): `ops`, SHA / AES, `auth-pass-123` / `priv-pass-456`, and a user of each other
/// security level.
fn snmp_receiver() -> Option<SnmpReceiver> {
    let pass = |p: &str| Secret::Passphrase(p.to_string());
    let config = SnmpConfig {
        communities: Some(vec!["public".to_string()]),
        users: vec![
            UsmUser {
                name: "ops".into(),
                auth: Some((AuthProtocol::Sha1, pass("auth-pass-123"))),
                privacy: Some((PrivProtocol::Aes128, pass("priv-pass-456"))),
            },
            UsmUser {
                name: "md5des".into(),
                auth: Some((AuthProtocol::Md5, pass("auth-pass-123"))),
                privacy: Some((PrivProtocol::Des, pass("priv-pass-456"))),
            },
            UsmUser {
                name: "sha512".into(),
                auth: Some((AuthProtocol::Sha512, pass("auth-pass-123"))),
                privacy: None,
            },
            UsmUser {
                name: "none".into(),
                auth: None,
                privacy: None,
            },
        ],
        ..SnmpConfig::default()
    };
    let engine = Engine {
        engine_id: b"\x80\x00\x1f\x88\x04twinrx-test".to_vec(),
        boots: 3,
    };
    SnmpReceiver::new(config, engine, twinrx_types::Millis(1_000)).ok()
}

/// SNMP: `data` as one datagram to the receiver (BER, v1/v2c/v3, USM authentication and
/// decryption, informs), and what it journals rendered as a stream entry.
pub fn snmp(data: &[u8]) {
    SNMP.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = snmp_receiver();
        }
        let Some(r) = slot.as_mut() else {
            return;
        };
        let outcome = r.handle_datagram(twinrx_types::Millis(2_000), UnixNanos(0), source(), data);
        match outcome {
            Outcome::Accept { decoded, .. } | Outcome::KeepRaw { decoded, .. } => {
                render(Protocol::Snmp, data, decoded)
            }
            _ => {}
        }
    });
}

/// The cluster link: frame payload decoders, sealed frames, and the listening side's
/// handshake fed `data` by a stranger.
pub fn link(data: &[u8]) {
    replicator::fuzz::frames(data);
    replicator::fuzz::server_handshake(data);
}

/// The config loaders: `data` as a node's and as a witness's TOML file, deserialized and
/// validated (relative paths resolve below a directory that does not exist).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent-twinrx-fuzz/node.toml");
    if let Ok(raw) = toml::from_str::<crate::config::RawConfig>(text) {
        let _ = crate::config::validate(path, raw);
    }
    if let Ok(raw) = toml::from_str::<crate::witness::config::RawWitnessConfig>(text) {
        let _ = crate::witness::config::validate(path, raw);
    }
}
