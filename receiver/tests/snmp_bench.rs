//! A rough throughput figure for the SNMP core alone (no sockets, no journal), on captured
//! datagrams: `cargo test --release -p receiver --test snmp_bench -- --ignored --nocapture`.

use receiver::snmp::{
    AuthProtocol, Engine, Outcome, PrivProtocol, Secret, SnmpConfig, SnmpReceiver, UsmUser,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;
use twinrx_types::{Millis, UnixNanos};

#[test]
#[ignore = "a measurement, not a check; run in release by hand"]
fn handle_datagram_throughput() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snmp");
    let pass = |p: &str| Secret::Passphrase(p.into());
    let mut r = SnmpReceiver::new(
        SnmpConfig {
            users: vec![UsmUser {
                name: "ops".into(),
                auth: Some((AuthProtocol::Sha1, pass("auth-pass-123"))),
                privacy: Some((PrivProtocol::Aes128, pass("priv-pass-456"))),
            }],
            ..SnmpConfig::default()
        },
        Engine {
            engine_id: b"\x80\x00\x1f\x88\x04twinrx-test".to_vec(),
            boots: 3,
        },
        Millis(0),
    )
    .expect("valid");
    let src: SocketAddr = "192.0.2.1:1000".parse().expect("literal");
    for name in ["v1-trap", "v2c-trap", "v3-trap-sha-aes"] {
        let d = std::fs::read(dir.join(format!("{name}.bin"))).expect("fixture");
        let n = 200_000u32;
        let start = Instant::now();
        for _ in 0..n {
            let out = r.handle_datagram(Millis(0), UnixNanos(0), src, &d);
            assert!(matches!(out, Outcome::Accept { .. }));
        }
        let per = start.elapsed() / n;
        println!(
            "{name}: {per:?} per datagram, {:.0} datagrams/s on one core",
            1.0 / per.as_secs_f64()
        );
    }
}
