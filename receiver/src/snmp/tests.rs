//! Unit tests of the core: exact outcomes for hand-built messages. The Net-SNMP interop tests
//! are in `receiver/tests/snmp_netsnmp.rs`.

use super::*;
use rasn_snmp::v3::{ScopedPdu, ScopedPduData};

const ENGINE: &[u8] = b"\x80\x00\x1f\x88\x04twinrx-a";
const SRC: &str = "192.0.2.10:40000";

fn src() -> SocketAddr {
    SRC.parse().expect("literal")
}

fn receiver(config: SnmpConfig) -> SnmpReceiver {
    SnmpReceiver::new(
        config,
        Engine {
            engine_id: ENGINE.to_vec(),
            boots: 7,
        },
        Millis(1_000),
    )
    .expect("valid config")
}

fn handle(r: &mut SnmpReceiver, at: SocketAddr, bytes: &[u8]) -> Outcome {
    r.handle_datagram(Millis(2_000), UnixNanos(0), at, bytes)
}

fn json_of(decoded: &[u8]) -> Json {
    serde_json::from_slice(decoded).expect("decoded is JSON")
}

fn token(t: &str) -> Vec<(String, GenValue)> {
    vec![(
        "1.3.6.1.4.1.99999.1.1".to_owned(),
        GenValue::OctetString(t.as_bytes().to_vec()),
    )]
}

#[test]
fn v2c_trap_is_accepted_with_fields_and_a_key_without_request_id() {
    let mut r = receiver(SnmpConfig::default());
    let a =
        encode_v2c_trap(b"public", 1, 4321, "1.3.6.1.4.1.99999.0.1", &token("x")).expect("encodes");
    let b =
        encode_v2c_trap(b"public", 2, 4321, "1.3.6.1.4.1.99999.0.1", &token("x")).expect("encodes");
    let (
        Outcome::Accept {
            key: ka,
            decoded,
            reply: None,
        },
        Outcome::Accept { key: kb, .. },
    ) = (handle(&mut r, src(), &a), handle(&mut r, src(), &b))
    else {
        panic!("not accepted");
    };
    assert_eq!(ka, kb, "the request-id is not content");
    assert_eq!(
        json_of(&decoded),
        json!({
            "version": "2c", "community": "public", "pdu_type": "trapv2", "request_id": 1,
            "uptime": 4321, "trap_oid": "1.3.6.1.4.1.99999.0.1",
            "varbinds": [
                {"oid": "1.3.6.1.2.1.1.3.0", "type": "TimeTicks", "value": 4321},
                {"oid": "1.3.6.1.6.3.1.1.4.1.0", "type": "OBJECT IDENTIFIER",
                 "value": "1.3.6.1.4.1.99999.0.1"},
                {"oid": "1.3.6.1.4.1.99999.1.1", "type": "OCTET STRING", "value": "x"},
            ],
        })
    );
    let c =
        encode_v2c_trap(b"public", 1, 4321, "1.3.6.1.4.1.99999.0.1", &token("y")).expect("encodes");
    let Outcome::Accept { key: kc, .. } = handle(&mut r, src(), &c) else {
        panic!("not accepted");
    };
    assert_ne!(ka, kc);
    let other: SocketAddr = "192.0.2.11:40000".parse().expect("literal");
    let Outcome::Accept { key: kd, .. } = handle(&mut r, other, &a) else {
        panic!("not accepted");
    };
    assert_ne!(ka, kd, "the source IP is content");
    assert_eq!(r.stats().accepted(Accepted::V2cTrap), 4);
}

#[test]
fn inform_retransmission_is_answered_again_but_journaled_once() {
    let mut r = receiver(SnmpConfig::default());
    let inform = encode_v2c_inform(b"public", -77, 1, "1.3.6.1.4.1.99999.0.2", &token("i"))
        .expect("encodes");
    let at = |ms| Millis(ms);
    let Outcome::Accept {
        key,
        reply: Some(reply),
        ..
    } = r.handle_datagram(at(2_000), UnixNanos(0), src(), &inform)
    else {
        panic!("not accepted");
    };
    assert_eq!(parse_response(&reply), Some(-77));
    assert_eq!(
        r.handle_datagram(at(3_000), UnixNanos(0), src(), &inform),
        Outcome::DuplicateInform {
            reply: reply.clone()
        }
    );
    // Another source with the same request-id is another inform.
    let other: SocketAddr = "192.0.2.11:40000".parse().expect("literal");
    assert!(matches!(
        r.handle_datagram(at(3_000), UnixNanos(0), other, &inform),
        Outcome::Accept { .. }
    ));
    // The window counts from the last copy; after it, a copy is new again.
    assert!(matches!(
        r.handle_datagram(at(7_500), UnixNanos(0), src(), &inform),
        Outcome::DuplicateInform { .. }
    ));
    assert!(matches!(
        r.handle_datagram(at(13_000), UnixNanos(0), src(), &inform),
        Outcome::Accept { .. }
    ));
    // A failed append is forgotten, so the retransmission is journaled.
    r.handle_append_failed(src(), key);
    assert!(matches!(
        r.handle_datagram(at(13_100), UnixNanos(0), src(), &inform),
        Outcome::Accept { .. }
    ));
    assert_eq!(r.stats().duplicate_informs, 2);
    assert_eq!(r.stats().accepted(Accepted::V2cInform), 4);
}

#[test]
fn community_allow_list_drops_strangers_even_with_garbage_pdus() {
    let mut r = receiver(SnmpConfig {
        communities: Some(vec!["public".into()]),
        ..SnmpConfig::default()
    });
    let trap = encode_v2c_trap(b"secret", 1, 1, "1.3.6.1.4.1.99999.0.1", &[]).expect("encodes");
    assert_eq!(
        handle(&mut r, src(), &trap),
        Outcome::Discard(DiscardReason::UnknownCommunity)
    );
    let mut garbage = trap.clone();
    let len = garbage.len();
    garbage.truncate(len - 3);
    assert_eq!(
        handle(&mut r, src(), &garbage),
        Outcome::Discard(DiscardReason::UnknownCommunity)
    );
    assert_eq!(r.stats().discarded(DiscardReason::UnknownCommunity), 2);
    let ip = src().ip();
    assert_eq!(
        r.stats().per_source[&ip].discarded(DiscardReason::UnknownCommunity),
        2
    );
}

#[test]
fn garbage_is_kept_raw_with_the_error_and_oversize_is_refused() {
    let mut r = receiver(SnmpConfig::default());
    let Outcome::KeepRaw {
        key,
        decoded,
        reason: DiscardReason::BadBer,
    } = handle(&mut r, src(), b"hello")
    else {
        panic!("not kept raw");
    };
    assert!(json_of(&decoded)["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("bad_ber")));
    assert_eq!(
        key,
        KeyBuilder::new("snmp-raw")
            .source(src().ip())
            .part(b"hello")
            .finish()
    );
    let trap = encode_v2c_trap(b"public", 1, 1, "1.3.6.1.4.1.99999.0.1", &[]).expect("encodes");
    assert!(matches!(
        handle(&mut r, src(), &trap[..trap.len() - 1]),
        Outcome::KeepRaw {
            reason: DiscardReason::BadBer,
            ..
        }
    ));
    let mut v2 = trap.clone();
    v2[4] = 2; // version INTEGER 2
    assert!(matches!(
        handle(&mut r, src(), &v2),
        Outcome::KeepRaw {
            reason: DiscardReason::BadVersion,
            ..
        }
    ));
    assert_eq!(
        handle(&mut r, src(), &vec![0x30; 65_537]),
        Outcome::Discard(DiscardReason::Oversize)
    );
    assert_eq!(r.stats().discarded(DiscardReason::BadBer), 2);
}

#[test]
fn per_source_counters_are_bounded() {
    let mut r = receiver(SnmpConfig::default());
    for i in 0..(MAX_SOURCES as u32 + 10) {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        handle(&mut r, SocketAddr::new(ip.into(), 1), b"x");
    }
    assert_eq!(r.stats().per_source.len(), MAX_SOURCES);
    assert_eq!(r.stats().other_sources.discarded(DiscardReason::BadBer), 10);
}

#[test]
fn config_problems_are_all_reported() {
    let err = SnmpReceiver::new(
        SnmpConfig {
            users: vec![
                UsmUser {
                    name: "u".into(),
                    auth: Some((AuthProtocol::Sha1, Secret::Passphrase("short".into()))),
                    privacy: None,
                },
                UsmUser {
                    name: "v".into(),
                    auth: None,
                    privacy: Some((
                        PrivProtocol::Aes128,
                        Secret::Passphrase("longenough".into()),
                    )),
                },
            ],
            ..SnmpConfig::default()
        },
        Engine {
            engine_id: vec![1, 2],
            boots: 1,
        },
        Millis(0),
    )
    .err()
    .expect("refused");
    assert_eq!(err.problems.len(), 3, "{err}");
}

/// A v3 sender built from the receiver's own encoder: a receiver whose engine is `engine`
/// with `boots` encodes the message (authPriv for `user`). Informs are made reportable, as
/// senders do. Used for what Net-SNMP's tools cannot be made to send (a stale boots value).
fn v3_from(engine: &[u8], boots: u32, user: &UsmUser, now: Millis, inform: bool) -> Vec<u8> {
    let mut sender = SnmpReceiver::new(
        SnmpConfig {
            users: vec![user.clone()],
            ..SnmpConfig::default()
        },
        Engine {
            engine_id: engine.to_vec(),
            boots,
        },
        Millis(0),
    )
    .expect("valid");
    let keys = sender.users[0].keys(engine).expect("passphrase keys");
    let pdu = v2::Pdu {
        request_id: 5,
        error_status: 0,
        error_index: 0,
        variable_bindings: Vec::new(),
    };
    let scoped = ScopedPdu {
        engine_id: rasn::types::OctetString::from(engine.to_vec()),
        name: rasn::types::OctetString::from(Vec::new()),
        data: if inform {
            v2::Pdus::InformRequest(v2::InformRequest(pdu))
        } else {
            v2::Pdus::Trap(v2::Trap(pdu))
        },
    };
    let mut bytes = sender.encode_v3(now, 99, user.name.as_bytes(), &keys, scoped);
    if inform {
        // Mark it reportable (flags octet 0x03 -> 0x07): re-MAC after changing the flags.
        let flags_at = bytes
            .windows(3)
            .position(|w| w == [0x04, 0x01, 0x03])
            .expect("flags octet string")
            + 2;
        bytes[flags_at] |= 4;
        let range = tlv::v3_auth_params(&bytes).expect("auth params");
        bytes[range.clone()].fill(0);
        let (proto, key) = keys.auth.as_ref().expect("auth");
        let mac = proto.mac(key, &bytes);
        bytes[range].copy_from_slice(&mac);
    }
    bytes
}

fn v3_inform_from(engine: &[u8], boots: u32, user: &UsmUser, now: Millis) -> Vec<u8> {
    v3_from(engine, boots, user, now, true)
}

#[test]
fn v3_traps_from_a_remote_engine_that_went_back_in_time_are_refused_silently() {
    // RFC 3414 §3.2 step 7b, for traps from authoritative senders.
    let user = UsmUser {
        name: "ops".into(),
        auth: Some((AuthProtocol::Md5, Secret::Passphrase("auth-pass-1".into()))),
        privacy: Some((PrivProtocol::Des, Secret::Passphrase("priv-pass-1".into()))),
    };
    let mut r = receiver(SnmpConfig {
        users: vec![user.clone()],
        ..SnmpConfig::default()
    });
    let remote = b"\x80\x00\x00\x00\x01remote";
    let at = |r: &mut SnmpReceiver, ms: u64, bytes: &[u8]| {
        r.handle_datagram(Millis(ms), UnixNanos(0), src(), bytes)
    };
    // Boots 5, time 10 s: first sighting, accepted.
    let first = v3_from(remote, 5, &user, Millis(10_000), false);
    assert!(matches!(
        at(&mut r, 2_000, &first),
        Outcome::Accept { reply: None, .. }
    ));
    // Boots went back: refused, no Report (a trap is not reportable).
    let old_boots = v3_from(remote, 4, &user, Millis(50_000), false);
    assert_eq!(
        at(&mut r, 3_000, &old_boots),
        Outcome::Discard(DiscardReason::NotInTimeWindow)
    );
    // Same boots, but 200 s later its time still says 10 s: a replay.
    assert_eq!(
        at(&mut r, 202_000, &first),
        Outcome::Discard(DiscardReason::NotInTimeWindow)
    );
    // Within 150 s of its clock: fine (and a reboot with a higher boots is fine too).
    let later = v3_from(remote, 5, &user, Millis(100_000), false);
    assert!(matches!(
        at(&mut r, 203_000, &later),
        Outcome::Accept { .. }
    ));
    let rebooted = v3_from(remote, 6, &user, Millis(1_000), false);
    assert!(matches!(
        at(&mut r, 204_000, &rebooted),
        Outcome::Accept { .. }
    ));
    assert_eq!(r.stats().discarded(DiscardReason::NotInTimeWindow), 2);
    assert_eq!(r.stats().error_reports, 0);
}

#[test]
fn v3_inform_with_stale_boots_gets_an_authenticated_not_in_time_window_report() {
    let user = UsmUser {
        name: "ops".into(),
        auth: Some((
            AuthProtocol::Sha256,
            Secret::Passphrase("auth-pass-1".into()),
        )),
        privacy: Some((
            PrivProtocol::Aes128,
            Secret::Passphrase("priv-pass-1".into()),
        )),
    };
    let mut r = receiver(SnmpConfig {
        users: vec![user.clone()],
        ..SnmpConfig::default()
    });
    // Right boots (7) and time: accepted, and the Response decrypts.
    let ok = v3_inform_from(ENGINE, 7, &user, Millis(1_000));
    let Outcome::Accept {
        reply: Some(reply), ..
    } = handle(&mut r, src(), &ok)
    else {
        panic!("fresh inform not accepted");
    };
    assert!(tlv::v3_auth_params(&reply).is_some());
    // Boots 6: notInTimeWindow, answered with a Report that is itself authenticated.
    let stale = v3_inform_from(ENGINE, 6, &user, Millis(1_000));
    let Outcome::Reply(report) = handle(&mut r, src(), &stale) else {
        panic!("no report");
    };
    let msg: rasn_snmp::v3::Message = rasn::ber::decode(&report).expect("report decodes");
    assert_eq!(
        &msg.global_data.flags[..],
        &[1],
        "authNoPriv, not reportable"
    );
    let ScopedPduData::CleartextPdu(scoped) = msg.scoped_data else {
        panic!("report is not cleartext");
    };
    let v2::Pdus::Report(v2::Report(pdu)) = scoped.data else {
        panic!("not a report");
    };
    assert_eq!(
        value::dotted(&pdu.variable_bindings[0].name),
        "1.3.6.1.6.3.15.1.1.2.0"
    );
    assert_eq!(r.stats().discarded(DiscardReason::NotInTimeWindow), 1);
    // Time more than 150 s off: same.
    let late = v3_inform_from(ENGINE, 7, &user, Millis(200_000));
    assert!(matches!(handle(&mut r, src(), &late), Outcome::Reply(_)));
    assert_eq!(r.stats().discarded(DiscardReason::NotInTimeWindow), 2);
    assert_eq!(r.stats().accepted(Accepted::V3Inform), 1);
}
