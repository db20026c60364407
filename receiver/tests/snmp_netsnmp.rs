//! The SNMP core against the real Net-SNMP tools (`snmptrap`, `snmpinform`): every version,
//! every USM auth and privacy protocol the installed Net-SNMP has, refusals, keys, duplicate
//! informs, and mutated captured datagrams.
//!
//! The harness is a UDP socket on 127.0.0.1 feeding `SnmpReceiver::handle_datagram` in a
//! thread and sending replies at once (there is no journal here; the node's wiring sends an
//! inform's reply only after fsync). Tests wait on conditions with deadlines.

use proptest::prelude::*;
use receiver::snmp::{
    encode_v2c_inform, encode_v2c_trap, parse_response, Accepted, AuthProtocol, DiscardReason,
    Engine, GenValue, Outcome, PrivProtocol, Secret, SnmpConfig, SnmpReceiver, SnmpStats, UsmUser,
};
use serde_json::{json, Value as Json};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twinrx_types::{Key, Millis, UnixNanos};

/// This node's engine ID in the tests (what `snmpinform -v 3` discovers).
const ENGINE_ID: &[u8] = b"\x80\x00\x1f\x88\x04twinrx-test";
/// The engine ID `snmptrap -v 3` sends traps with (`-e`).
const SENDER_ENGINE: &str = "0x8000000001020304";
const AUTH_PASS: &str = "auth-pass-123";
const PRIV_PASS: &str = "priv-pass-456";
const DEADLINE: Duration = Duration::from_secs(20);

/// One datagram the harness handled.
#[derive(Clone, Debug)]
struct Seen {
    from: SocketAddr,
    datagram: Vec<u8>,
    outcome: Outcome,
}

struct Harness {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    core: Arc<Mutex<SnmpReceiver>>,
    /// Added to the clock given to the core (to make a sender's time stale).
    clock_offset_ms: Arc<AtomicU64>,
    /// After the next Reply is sent, add this much to the clock (0 = off).
    jump_after_reply_ms: Arc<AtomicU64>,
    /// Drop this many inform Responses (of accepted informs), to make the sender retransmit.
    drop_responses: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl Harness {
    fn start(config: SnmpConfig) -> Harness {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("set timeout");
        let addr = socket.local_addr().expect("local addr");
        let origin = Instant::now();
        let core = SnmpReceiver::new(
            config,
            Engine {
                engine_id: ENGINE_ID.to_vec(),
                boots: 3,
            },
            Millis(0),
        )
        .expect("valid config");
        let core = Arc::new(Mutex::new(core));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clock_offset_ms = Arc::new(AtomicU64::new(0));
        let jump_after_reply_ms = Arc::new(AtomicU64::new(0));
        let drop_responses = Arc::new(AtomicU64::new(0));
        let thread = {
            let (core, seen, stop) = (core.clone(), seen.clone(), stop.clone());
            let (offset, jump) = (clock_offset_ms.clone(), jump_after_reply_ms.clone());
            let drop_responses = drop_responses.clone();
            std::thread::spawn(move || {
                // Larger than max_message_bytes, so oversize datagrams are seen whole.
                let mut buf = vec![0u8; 70_000];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let now = Millis(
                        origin.elapsed().as_millis() as u64 + offset.load(Ordering::Relaxed),
                    );
                    let outcome = core.lock().expect("core lock").handle_datagram(
                        now,
                        UnixNanos(0),
                        from,
                        &buf[..n],
                    );
                    let reply = match &outcome {
                        Outcome::Accept { reply: Some(_), .. }
                            if drop_responses
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok() =>
                        {
                            None
                        }
                        Outcome::Accept { reply, .. } => reply.clone(),
                        Outcome::DuplicateInform { reply } | Outcome::Reply(reply) => {
                            Some(reply.clone())
                        }
                        Outcome::KeepRaw { .. } | Outcome::Discard(_) => None,
                    };
                    if matches!(outcome, Outcome::Reply(_)) {
                        let j = jump.swap(0, Ordering::Relaxed);
                        offset.fetch_add(j, Ordering::Relaxed);
                    }
                    // Recorded before the reply goes out, as the node journals before it
                    // answers: a sender that got its Response finds its message recorded.
                    seen.lock().expect("seen lock").push(Seen {
                        from,
                        datagram: buf[..n].to_vec(),
                        outcome,
                    });
                    if let Some(reply) = reply {
                        socket.send_to(&reply, from).expect("send reply");
                    }
                }
            })
        };
        let dir = std::env::temp_dir().join(format!(
            "twinrx-snmp-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir for Net-SNMP state");
        Harness {
            addr,
            seen,
            core,
            clock_offset_ms,
            jump_after_reply_ms,
            drop_responses,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// Runs a Net-SNMP tool with isolated state and no MIBs, killed after the deadline.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let mut child = Command::new(tool)
            .args(args)
            .env("MIBS", "")
            .env("SNMP_PERSISTENT_DIR", &self.dir)
            .env("SNMPCONFPATH", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {tool} (apt-get install snmp): {e}"));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if child.try_wait().expect("wait for tool").is_some() {
                return child.wait_with_output().expect("tool output");
            }
            if Instant::now() > deadline {
                child.kill().expect("kill a hung tool");
                panic!("{tool} {args:?} did not finish within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn run_ok(&self, tool: &str, args: &[&str]) {
        let out = self.run(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    fn stats(&self) -> SnmpStats {
        self.core.lock().expect("core lock").stats().clone()
    }

    /// Waits until `n` datagrams were handled in all; returns them all.
    fn wait_for_count(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} datagrams arrived: {seen:#?}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The accepted outcomes so far: (key, decoded JSON).
    fn accepted(&self) -> Vec<(Key, Json)> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s.outcome {
                Outcome::Accept { key, decoded, .. } => Some((
                    key,
                    serde_json::from_slice(&decoded).expect("decoded is JSON"),
                )),
                _ => None,
            })
            .collect()
    }

    /// Waits until `n` messages were accepted in all.
    fn wait_accepted(&self, n: usize) -> Vec<(Key, Json)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let acc = self.accepted();
            if acc.len() >= n {
                return acc;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} accepted: {:#?}",
                acc.len(),
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A panic in the harness thread fails the test that owns it.
            if t.join().is_err() && !std::thread::panicking() {
                panic!("harness thread panicked");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn user(name: &str, auth: Option<AuthProtocol>, privacy: Option<PrivProtocol>) -> UsmUser {
    UsmUser {
        name: name.to_owned(),
        auth: auth.map(|a| (a, Secret::Passphrase(AUTH_PASS.into()))),
        privacy: privacy.map(|p| (p, Secret::Passphrase(PRIV_PASS.into()))),
    }
}

const AUTHS: [(AuthProtocol, &str); 6] = [
    (AuthProtocol::Md5, "MD5"),
    (AuthProtocol::Sha1, "SHA"),
    (AuthProtocol::Sha224, "SHA-224"),
    (AuthProtocol::Sha256, "SHA-256"),
    (AuthProtocol::Sha384, "SHA-384"),
    (AuthProtocol::Sha512, "SHA-512"),
];
const PRIVS: [(PrivProtocol, &str); 6] = [
    (PrivProtocol::Des, "DES"),
    (PrivProtocol::Aes128, "AES"),
    (PrivProtocol::Aes192, "AES-192"),
    (PrivProtocol::Aes256, "AES-256"),
    (PrivProtocol::Aes192Reeder, "AES-192-C"),
    (PrivProtocol::Aes256Reeder, "AES-256-C"),
];

/// Every security combination tested: noAuthNoPriv, authNoPriv with every auth protocol,
/// authPriv with every privacy protocol under MD5, SHA and SHA-256 (and SHA-512 + AES-256).
fn combinations() -> Vec<(String, Vec<String>, UsmUser)> {
    let mut out = Vec::new();
    let name = "u-none".to_owned();
    out.push((
        name.clone(),
        vec!["-l".into(), "noAuthNoPriv".into()],
        user(&name, None, None),
    ));
    for (auth, a) in AUTHS {
        let name = format!("u-{a}");
        out.push((
            name.clone(),
            vec![
                "-l".into(),
                "authNoPriv".into(),
                "-a".into(),
                a.into(),
                "-A".into(),
                AUTH_PASS.into(),
            ],
            user(&name, Some(auth), None),
        ));
    }
    let pairs = AUTHS
        .iter()
        .filter(|(_, a)| matches!(*a, "MD5" | "SHA" | "SHA-256"))
        .flat_map(|auth| PRIVS.iter().map(move |p| (*auth, *p)))
        .chain([(AUTHS[5], PRIVS[3])]);
    for ((auth, a), (privacy, p)) in pairs {
        let name = format!("u-{a}-{p}");
        out.push((
            name.clone(),
            vec![
                "-l".into(),
                "authPriv".into(),
                "-a".into(),
                a.into(),
                "-A".into(),
                AUTH_PASS.into(),
                "-x".into(),
                p.into(),
                "-X".into(),
                PRIV_PASS.into(),
            ],
            user(&name, Some(auth), Some(privacy)),
        ));
    }
    out
}

fn config_with_all_users() -> SnmpConfig {
    SnmpConfig {
        users: combinations().into_iter().map(|(_, _, u)| u).collect(),
        ..SnmpConfig::default()
    }
}

const TRAP_OID: &str = "1.3.6.1.4.1.8072.2.3.0.1";
const VB_OID: &str = "1.3.6.1.4.1.8072.2.3.2.1";

fn v2_varbinds(uptime: u64, text: &str) -> Json {
    json!([
        {"oid": "1.3.6.1.2.1.1.3.0", "type": "TimeTicks", "value": uptime},
        {"oid": "1.3.6.1.6.3.1.1.4.1.0", "type": "OBJECT IDENTIFIER", "value": TRAP_OID},
        {"oid": VB_OID, "type": "OCTET STRING", "value": text},
    ])
}

#[test]
fn v1_trap_from_snmptrap_is_accepted_with_its_fields() {
    let h = Harness::start(SnmpConfig::default());
    let t = h.target();
    #[rustfmt::skip]
    let args = [
        "-v", "1", "-c", "public", &t, "1.3.6.1.4.1.8072.2.3", "192.0.2.7", "6", "17", "1234",
        VB_OID, "s", "hello v1", "1.3.6.1.4.1.8072.2.3.2.2", "i", "-42",
        "1.3.6.1.4.1.8072.2.3.2.3", "x", "001B213A4F5E", "1.3.6.1.4.1.8072.2.3.2.4", "c", "7",
        "1.3.6.1.4.1.8072.2.3.2.5", "a", "10.1.2.3", "1.3.6.1.4.1.8072.2.3.2.6", "o",
        "1.3.6.1.2.1.2",
    ];
    h.run_ok("snmptrap", &args);
    let acc = h.wait_accepted(1);
    assert_eq!(
        acc[0].1,
        json!({
            "version": "1", "community": "public", "pdu_type": "trap",
            "enterprise": "1.3.6.1.4.1.8072.2.3", "agent_address": "192.0.2.7",
            "generic_trap": 6, "specific_trap": 17, "uptime": 1234,
            "varbinds": [
                {"oid": VB_OID, "type": "OCTET STRING", "value": "hello v1"},
                {"oid": "1.3.6.1.4.1.8072.2.3.2.2", "type": "INTEGER", "value": -42},
                {"oid": "1.3.6.1.4.1.8072.2.3.2.3", "type": "OCTET STRING",
                 "value": {"hex": "001b213a4f5e"}},
                {"oid": "1.3.6.1.4.1.8072.2.3.2.4", "type": "Counter32", "value": 7},
                {"oid": "1.3.6.1.4.1.8072.2.3.2.5", "type": "IpAddress", "value": "10.1.2.3"},
                {"oid": "1.3.6.1.4.1.8072.2.3.2.6", "type": "OBJECT IDENTIFIER",
                 "value": "1.3.6.1.2.1.2"},
            ],
        })
    );
    assert_eq!(h.stats().accepted(Accepted::V1Trap), 1);
}

#[test]
fn v2c_trap_from_snmptrap_is_accepted_with_every_value_type() {
    let h = Harness::start(SnmpConfig::default());
    let t = h.target();
    #[rustfmt::skip]
    let args = [
        "-v", "2c", "-c", "public", &t, "4321", TRAP_OID, VB_OID, "s", "hello v2c",
        "1.3.6.1.4.1.8072.2.3.2.2", "u", "4000000000", "1.3.6.1.4.1.8072.2.3.2.3", "t", "99",
        "1.3.6.1.4.1.8072.2.3.2.4", "C", "18446744073709551615", "1.3.6.1.4.1.8072.2.3.2.5",
        "n", "",
    ];
    h.run_ok("snmptrap", &args);
    let acc = h.wait_accepted(1);
    let d = &acc[0].1;
    assert_eq!(d["version"], "2c");
    assert_eq!(d["community"], "public");
    assert_eq!(d["pdu_type"], "trapv2");
    assert_eq!(d["uptime"], 4321);
    assert_eq!(d["trap_oid"], TRAP_OID);
    assert!(d["request_id"].is_i64());
    assert_eq!(
        d["varbinds"].as_array().expect("list")[2..],
        json!([
            {"oid": VB_OID, "type": "OCTET STRING", "value": "hello v2c"},
            {"oid": "1.3.6.1.4.1.8072.2.3.2.2", "type": "Gauge32", "value": 4000000000u64},
            {"oid": "1.3.6.1.4.1.8072.2.3.2.3", "type": "TimeTicks", "value": 99},
            {"oid": "1.3.6.1.4.1.8072.2.3.2.4", "type": "Counter64",
             "value": 18446744073709551615u64},
            {"oid": "1.3.6.1.4.1.8072.2.3.2.5", "type": "NULL", "value": null},
        ])
        .as_array()
        .expect("list")[..]
    );
}

#[test]
fn v2c_inform_from_snmpinform_gets_its_response() {
    let h = Harness::start(SnmpConfig::default());
    let t = h.target();
    #[rustfmt::skip]
    let args = [
        "-v", "2c", "-c", "public", "-r", "0", "-t", "5", &t, "555", TRAP_OID, VB_OID, "s",
        "inform v2c",
    ];
    h.run_ok("snmpinform", &args);
    let acc = h.wait_accepted(1);
    let d = &acc[0].1;
    assert_eq!(d["pdu_type"], "inform");
    assert_eq!(d["varbinds"], v2_varbinds(555, "inform v2c"));
    assert_eq!(h.stats().accepted(Accepted::V2cInform), 1);
}

#[test]
fn v3_traps_for_every_security_combination() {
    let h = Harness::start(config_with_all_users());
    let t = h.target();
    let combos = combinations();
    for (i, (name, level_args, _)) in combos.iter().enumerate() {
        let text = format!("v3 trap {name}");
        let mut args: Vec<&str> = vec!["-v", "3", "-e", SENDER_ENGINE, "-u", name];
        args.extend(level_args.iter().map(String::as_str));
        args.extend([t.as_str(), "777", TRAP_OID, VB_OID, "s", text.as_str()]);
        h.run_ok("snmptrap", &args);
        let acc = h.wait_accepted(i + 1);
        let d = &acc[i].1;
        let level = &level_args[1];
        assert_eq!(d["version"], "3", "{name}");
        assert_eq!(d["user"], name.as_str());
        assert_eq!(d["security_level"], level.as_str(), "{name}");
        assert_eq!(d["pdu_type"], "trapv2");
        // Net-SNMP sets contextEngineID to the tool's own local engine ID, not `-e`.
        assert!(d["context_engine_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()));
        assert_eq!(d["context_name"], "");
        assert_eq!(d["varbinds"], v2_varbinds(777, &text), "{name}");
    }
    let stats = h.stats();
    assert_eq!(stats.accepted(Accepted::V3Trap), combos.len() as u64);
    assert_eq!(
        stats.total,
        stats
            .per_source
            .values()
            .next()
            .expect("one source")
            .clone()
    );
}

#[test]
fn v3_informs_for_every_security_combination_discover_our_engine() {
    let h = Harness::start(config_with_all_users());
    let t = h.target();
    let combos = combinations();
    for (i, (name, level_args, _)) in combos.iter().enumerate() {
        let text = format!("v3 inform {name}");
        let mut args: Vec<&str> = vec!["-v", "3", "-r", "0", "-t", "5", "-u", name];
        args.extend(level_args.iter().map(String::as_str));
        args.extend([t.as_str(), "888", TRAP_OID, VB_OID, "s", text.as_str()]);
        // Exit status 0 means Net-SNMP verified our (authenticated, encrypted) Response.
        h.run_ok("snmpinform", &args);
        let acc = h.wait_accepted(i + 1);
        let d = &acc[i].1;
        assert_eq!(d["user"], name.as_str());
        assert_eq!(d["security_level"], level_args[1].as_str(), "{name}");
        assert_eq!(d["pdu_type"], "inform");
        assert_eq!(d["varbinds"], v2_varbinds(888, &text), "{name}");
    }
    let stats = h.stats();
    assert_eq!(stats.accepted(Accepted::V3Inform), combos.len() as u64);
    assert!(stats.discovery_reports >= 1);
}

#[test]
fn v3_inform_after_a_clock_jump_is_refused_then_resynchronised() {
    let h = Harness::start(SnmpConfig {
        users: vec![user(
            "ops",
            Some(AuthProtocol::Sha256),
            Some(PrivProtocol::Aes128),
        )],
        ..SnmpConfig::default()
    });
    // Our clock jumps 1000 s right after the discovery Report: the inform then carries a
    // time 1000 s behind ours (RFC 3414 §3.2 step 7a), gets the authenticated
    // notInTimeWindow Report, and Net-SNMP retries with our time.
    h.jump_after_reply_ms.store(1_000_000, Ordering::Relaxed);
    let t = h.target();
    #[rustfmt::skip]
    let args = [
        "-v", "3", "-r", "2", "-t", "5", "-u", "ops", "-l", "authPriv", "-a", "SHA-256", "-A",
        AUTH_PASS, "-x", "AES", "-X", PRIV_PASS, &t, "1", TRAP_OID, VB_OID, "s", "late",
    ];
    h.run_ok("snmpinform", &args);
    h.wait_accepted(1);
    assert!(h.clock_offset_ms.load(Ordering::Relaxed) >= 1_000_000);
    assert_eq!(h.stats().discarded(DiscardReason::NotInTimeWindow), 1);
    assert_eq!(h.stats().accepted(Accepted::V3Inform), 1);
}

#[test]
fn refusals_are_counted_and_valid_traps_still_arrive() {
    let h = Harness::start(SnmpConfig {
        communities: Some(vec!["public".into()]),
        users: vec![user(
            "ops",
            Some(AuthProtocol::Sha1),
            Some(PrivProtocol::Aes128),
        )],
        // Small enough that an oversize datagram fits the loopback MTU.
        max_message_bytes: 1_500,
        ..SnmpConfig::default()
    });
    let t = h.target();
    let v3 = |u: &str, a: &str, x: &str, text: &str| {
        #[rustfmt::skip]
        let args = [
            "-v", "3", "-e", SENDER_ENGINE, "-u", u, "-l", "authPriv", "-a", "SHA", "-A", a,
            "-x", "AES", "-X", x, &t, "1", TRAP_OID, VB_OID, "s", text,
        ];
        h.run_ok("snmptrap", &args);
    };
    let good = |text: &str| {
        #[rustfmt::skip]
        let args = [
            "-v", "2c", "-c", "public", &t, "1", TRAP_OID, VB_OID, "s", text,
        ];
        h.run_ok("snmptrap", &args)
    };
    good("ok 1");
    #[rustfmt::skip]
    let args = [
        "-v", "2c", "-c", "wrong", &t, "1", TRAP_OID, VB_OID, "s", "x",
    ];
    h.run_ok("snmptrap", &args);
    #[rustfmt::skip]
    let args = [
        "-v", "1", "-c", "wrong", &t, "1.3.6.1.4.1.8072", "", "6", "1", "1",
    ];
    h.run_ok("snmptrap", &args);
    good("ok 2");
    v3("nobody", AUTH_PASS, PRIV_PASS, "x");
    v3("ops", "wrong-auth-pass", PRIV_PASS, "x");
    v3("ops", AUTH_PASS, "wrong-priv-pass", "x");
    v3("ops", AUTH_PASS, PRIV_PASS, "ok 3");
    good("ok 4");
    h.wait_for_count(9);

    // Hand-made bad input between valid traps.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let valid = encode_v2c_trap(b"public", 9, 1, TRAP_OID, &[]).expect("encodes");
    sock.send_to(&valid[..valid.len() - 4], h.addr)
        .expect("send");
    let mut flipped = valid.clone();
    flipped[1] ^= 0x40;
    sock.send_to(&flipped, h.addr).expect("send");
    sock.send_to(&[0x30; 1_501], h.addr).expect("send");
    sock.send_to(&valid, h.addr).expect("send");
    h.wait_for_count(13);

    let s = h.stats();
    let outcomes: Vec<String> = h
        .seen()
        .iter()
        .map(|s| format!("{:?}", s.outcome))
        .collect();
    let outcomes = outcomes.join("\n");
    assert_eq!(
        s.discarded(DiscardReason::UnknownCommunity),
        2,
        "{outcomes}"
    );
    assert_eq!(s.discarded(DiscardReason::UnknownUser), 1);
    assert_eq!(s.discarded(DiscardReason::WrongDigest), 1);
    assert_eq!(s.discarded(DiscardReason::DecryptionError), 1);
    assert_eq!(s.discarded(DiscardReason::BadBer), 2);
    assert_eq!(s.discarded(DiscardReason::Oversize), 1);
    assert_eq!(s.accepted(Accepted::V2cTrap), 4, "{outcomes}");
    assert_eq!(s.accepted(Accepted::V3Trap), 1);
    let texts: Vec<Json> = h
        .accepted()
        .iter()
        .filter_map(|(_, d)| d["varbinds"].get(2).map(|v| v["value"].clone()))
        .collect();
    assert_eq!(
        texts,
        vec![json!("ok 1"), json!("ok 2"), json!("ok 3"), json!("ok 4")]
    );
    let raw = h
        .seen()
        .into_iter()
        .filter(|s| matches!(s.outcome, Outcome::KeepRaw { .. }))
        .count();
    assert_eq!(raw, 2, "truncated and bit-flipped datagrams are kept raw");
}

#[test]
fn keys_ignore_request_ids_and_salts_but_not_varbinds() {
    let h = Harness::start(SnmpConfig {
        users: vec![user(
            "ops",
            Some(AuthProtocol::Md5),
            Some(PrivProtocol::Des),
        )],
        ..SnmpConfig::default()
    });
    let t = h.target();
    let v2c = |text: &str| {
        #[rustfmt::skip]
        let args = [
            "-v", "2c", "-c", "public", &t, "100", TRAP_OID, VB_OID, "s", text,
        ];
        h.run_ok("snmptrap", &args)
    };
    let v3 = || {
        #[rustfmt::skip]
        let args = [
            "-v", "3", "-e", SENDER_ENGINE, "-u", "ops", "-l", "authPriv", "-a", "MD5", "-A",
            AUTH_PASS, "-x", "DES", "-X", PRIV_PASS, &t, "100", TRAP_OID, VB_OID, "s", "same",
        ];
        h.run_ok("snmptrap", &args)
    };
    v2c("same");
    v2c("same");
    v2c("different");
    v3();
    v3();
    #[rustfmt::skip]
    h.run_ok("snmptrap", &[
        "-v", "3", "-e", SENDER_ENGINE, "-n", "ctx1", "-u", "ops", "-l", "authPriv",
        "-a", "MD5", "-A", AUTH_PASS, "-x", "DES", "-X", PRIV_PASS,
        &t, "100", TRAP_OID, VB_OID, "s", "same",
    ]);
    let acc = h.wait_accepted(6);
    let ids: Vec<i64> = acc[..2]
        .iter()
        .map(|(_, d)| d["request_id"].as_i64().expect("request id"))
        .collect();
    assert_ne!(ids[0], ids[1], "snmptrap chose different request-ids");
    assert_eq!(acc[0].0, acc[1].0, "same trap, same key");
    assert_ne!(acc[0].0, acc[2].0, "one varbind differs");
    let salts: Vec<Vec<u8>> = h.seen()[3..5].iter().map(|s| s.datagram.clone()).collect();
    assert_ne!(
        salts[0], salts[1],
        "the two authPriv sends differ on the wire"
    );
    assert_eq!(
        acc[3].0, acc[4].0,
        "same v3 trap, same key despite salt and msgID"
    );
    assert_ne!(acc[3].0, acc[0].0);
    assert_eq!(acc[5].1["context_name"], "ctx1");
    assert_ne!(acc[5].0, acc[3].0, "the context is part of a v3 key");
}

#[test]
fn duplicate_inform_is_answered_but_accepted_once_per_source() {
    let h = Harness::start(SnmpConfig::default());
    let inform = encode_v2c_inform(
        b"public",
        4242,
        10,
        TRAP_OID,
        &[(VB_OID.to_owned(), GenValue::OctetString(b"dup".to_vec()))],
    )
    .expect("encodes");
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2 (Linux loopback /8)");
    for s in [&a, &b] {
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    }
    let mut buf = [0u8; 2048];
    for (sock, expect_dup) in [(&a, false), (&a, true), (&b, false)] {
        sock.send_to(&inform, h.addr).expect("send");
        let (n, _) = sock.recv_from(&mut buf).expect("a Response");
        assert_eq!(parse_response(&buf[..n]), Some(4242));
        let last = h.seen().pop().expect("handled");
        assert_eq!(
            matches!(last.outcome, Outcome::DuplicateInform { .. }),
            expect_dup,
            "{last:?}"
        );
    }
    let acc = h.accepted();
    assert_eq!(acc.len(), 2);
    assert_ne!(acc[0].0, acc[1].0, "the source IP is part of the key");
    assert_eq!(h.stats().duplicate_informs, 1);
    assert_eq!(h.seen()[2].from.ip().to_string(), "127.0.0.2");
}

/// Datagrams captured from snmptrap/snmpinform (see `fixtures/snmp/README.md`).
fn fixtures() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snmp");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "fixtures missing in {}", dir.display());
    files
        .iter()
        .map(|p| std::fs::read(p).expect("fixture"))
        .collect()
}

/// A receiver with the user the fixtures were captured with (keys derived once, then cloned).
fn fixture_receiver() -> SnmpReceiver {
    static BASE: std::sync::OnceLock<SnmpReceiver> = std::sync::OnceLock::new();
    BASE.get_or_init(new_fixture_receiver).clone()
}

fn new_fixture_receiver() -> SnmpReceiver {
    SnmpReceiver::new(
        SnmpConfig {
            users: vec![user(
                "ops",
                Some(AuthProtocol::Sha1),
                Some(PrivProtocol::Aes128),
            )],
            ..SnmpConfig::default()
        },
        Engine {
            engine_id: ENGINE_ID.to_vec(),
            boots: 3,
        },
        Millis(0),
    )
    .expect("valid")
}

#[test]
fn captured_fixtures_are_accepted_unmutated() {
    let mut r = fixture_receiver();
    let src: SocketAddr = "192.0.2.1:1000".parse().expect("literal");
    for (i, f) in fixtures().iter().enumerate() {
        let out = r.handle_datagram(Millis(0), UnixNanos(0), src, f);
        assert!(
            matches!(out, Outcome::Accept { .. }),
            "fixture {i}: {out:?}"
        );
    }
}

proptest! {
    // PROPTEST_CASES=100000 for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// Parsers never panic on mutated real datagrams; every outcome is one of the documented
    /// ones, and garbage is never dropped silently.
    #[test]
    fn mutated_real_datagrams_never_panic(
        which in 0usize..64,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        static ALL: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        let all = ALL.get_or_init(fixtures);
        let mut d = all[which % all.len()].clone();
        for (at, x) in flips {
            let i = at.index(d.len());
            d[i] ^= x;
        }
        if truncate {
            d.truncate(cut.index(d.len() + 1));
        }
        let mut r = fixture_receiver();
        let src: SocketAddr = "192.0.2.1:1000".parse().expect("literal");
        let before = r.stats().clone();
        let out = r.handle_datagram(Millis(0), UnixNanos(0), src, &d);
        let after = r.stats();
        match out {
            Outcome::Accept { decoded, .. } | Outcome::KeepRaw { decoded, .. } => {
                let _: Json = serde_json::from_slice(&decoded).expect("decoded is JSON");
            }
            Outcome::Discard(reason) => {
                prop_assert_eq!(after.discarded(reason), before.discarded(reason) + 1);
            }
            Outcome::DuplicateInform { .. } | Outcome::Reply(_) => {}
        }
    }
}

/// Regenerates `fixtures/snmp/*.bin` from the installed Net-SNMP:
/// `cargo test -p receiver --test snmp_netsnmp -- --ignored capture_fixtures`.
#[test]
#[ignore = "writes fixtures; run by hand to refresh them"]
fn capture_fixtures() {
    let h = Harness::start(SnmpConfig {
        users: vec![user(
            "ops",
            Some(AuthProtocol::Sha1),
            Some(PrivProtocol::Aes128),
        )],
        ..SnmpConfig::default()
    });
    let t = h.target();
    let v3 = [
        "-u", "ops", "-l", "authPriv", "-a", "SHA", "-A", AUTH_PASS, "-x", "AES", "-X", PRIV_PASS,
    ];
    #[rustfmt::skip]
    let args = [
        "-v", "1", "-c", "public", &t, "1.3.6.1.4.1.8072.2.3", "192.0.2.7", "6", "17", "1234",
        VB_OID, "s", "fixture v1", "1.3.6.1.4.1.8072.2.3.2.2", "i", "-42",
    ];
    h.run_ok("snmptrap", &args);
    #[rustfmt::skip]
    let args = [
        "-v", "2c", "-c", "public", &t, "4321", TRAP_OID, VB_OID, "s", "fixture v2c",
        "1.3.6.1.4.1.8072.2.3.2.4", "C", "123456789012",
    ];
    h.run_ok("snmptrap", &args);
    #[rustfmt::skip]
    let args = [
        "-v", "2c", "-c", "public", &t, "555", TRAP_OID, VB_OID, "x", "00FF10",
    ];
    h.run_ok("snmpinform", &args);
    let mut trap: Vec<&str> = vec!["-v", "3", "-e", SENDER_ENGINE];
    trap.extend(v3);
    trap.extend([t.as_str(), "777", TRAP_OID, VB_OID, "s", "fixture v3 trap"]);
    h.run_ok("snmptrap", &trap);
    let mut inform: Vec<&str> = vec!["-v", "3"];
    inform.extend(v3);
    inform.extend([
        t.as_str(),
        "888",
        TRAP_OID,
        VB_OID,
        "s",
        "fixture v3 inform",
    ]);
    h.run_ok("snmpinform", &inform);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snmp");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let accepted: Vec<Seen> = h
        .seen()
        .into_iter()
        .filter(|s| matches!(s.outcome, Outcome::Accept { .. }))
        .collect();
    let names = [
        "v1-trap",
        "v2c-trap",
        "v2c-inform",
        "v3-trap-sha-aes",
        "v3-inform-sha-aes",
    ];
    assert_eq!(accepted.len(), names.len(), "{accepted:#?}");
    for (s, name) in accepted.iter().zip(names) {
        std::fs::write(dir.join(format!("{name}.bin")), &s.datagram).expect("write fixture");
    }
}

#[test]
fn retransmitted_informs_are_answered_but_accepted_once() {
    let h = Harness::start(SnmpConfig {
        users: vec![user(
            "ops",
            Some(AuthProtocol::Sha1),
            Some(PrivProtocol::Des),
        )],
        ..SnmpConfig::default()
    });
    let t = h.target();
    // The first Response of each inform is lost: Net-SNMP retransmits after 1 s.
    h.drop_responses.store(1, Ordering::Relaxed);
    #[rustfmt::skip]
    let args = [
        "-v", "2c", "-c", "public", "-r", "3", "-t", "1", &t, "5", TRAP_OID, VB_OID, "s",
        "again v2c",
    ];
    h.run_ok("snmpinform", &args);
    h.drop_responses.store(1, Ordering::Relaxed);
    #[rustfmt::skip]
    let args = [
        "-v", "3", "-r", "3", "-t", "1", "-u", "ops", "-l", "authPriv", "-a", "SHA", "-A",
        AUTH_PASS, "-x", "DES", "-X", PRIV_PASS, &t, "5", TRAP_OID, VB_OID, "s", "again v3",
    ];
    h.run_ok("snmpinform", &args);
    let s = h.stats();
    assert_eq!(s.accepted(Accepted::V2cInform), 1);
    assert_eq!(s.accepted(Accepted::V3Inform), 1);
    assert_eq!(s.duplicate_informs, 2, "{:#?}", h.seen());
}

#[test]
fn net_snmp_understands_our_error_reports() {
    let h = Harness::start(SnmpConfig {
        users: vec![user(
            "ops",
            Some(AuthProtocol::Sha1),
            Some(PrivProtocol::Aes128),
        )],
        ..SnmpConfig::default()
    });
    let t = h.target();
    let inform = |u: &str, a: &str, x: &str| {
        #[rustfmt::skip]
        let args = [
            "-v", "3", "-r", "0", "-t", "3", "-u", u, "-l", "authPriv", "-a", "SHA", "-A", a,
            "-x", "AES", "-X", x, &t, "5", TRAP_OID,
        ];
        h.run("snmpinform", &args)
    };
    let unknown = inform("nobody", AUTH_PASS, PRIV_PASS);
    let wrong_auth = inform("ops", "wrong-auth-pass", PRIV_PASS);
    for (out, what) in [
        (&unknown, "Unknown user name"),
        (&wrong_auth, "Authentication failure"),
    ] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "expected {what:?} in {err}");
    }
    let s = h.stats();
    assert_eq!(s.discarded(DiscardReason::UnknownUser), 1);
    assert_eq!(s.discarded(DiscardReason::WrongDigest), 1);
    assert_eq!(s.error_reports, 2);
    assert_eq!(s.accepted(Accepted::V3Inform), 0);
}

#[test]
fn localized_keys_work_for_the_engine_they_were_localized_for() {
    let engine = [0x80, 0, 0, 0, 1, 2, 3, 4];
    let localized = |hash: AuthProtocol, pass: &str| Secret::LocalizedKey {
        engine_id: engine.to_vec(),
        key: hash.localize(&hash.password_to_key(pass.as_bytes()), &engine),
    };
    let h = Harness::start(SnmpConfig {
        users: vec![UsmUser {
            name: "loc".into(),
            auth: Some((
                AuthProtocol::Sha256,
                localized(AuthProtocol::Sha256, AUTH_PASS),
            )),
            privacy: Some((
                PrivProtocol::Aes256,
                localized(AuthProtocol::Sha256, PRIV_PASS),
            )),
        }],
        ..SnmpConfig::default()
    });
    let t = h.target();
    let trap = |e: &str| {
        #[rustfmt::skip]
        let args = [
            "-v", "3", "-e", e, "-u", "loc", "-l", "authPriv", "-a", "SHA-256", "-A", AUTH_PASS,
            "-x", "AES-256", "-X", PRIV_PASS, &t, "5", TRAP_OID, VB_OID, "s", "localized",
        ];
        h.run_ok("snmptrap", &args)
    };
    trap(SENDER_ENGINE);
    trap("0x8000000001020305");
    h.wait_for_count(2);
    let s = h.stats();
    assert_eq!(s.accepted(Accepted::V3Trap), 1);
    assert_eq!(
        s.discarded(DiscardReason::UnknownUser),
        1,
        "other engine: no key"
    );
}
