//! End-to-end SNMP through the node, with Net-SNMP's own tools: traps and informs of every
//! version land in the stream once with their fields; an inform is answered only once its
//! record is journaled (a node whose disk is full does not answer).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const TRAP_OID: &str = "1.3.6.1.4.1.8072.2.3.0.1";
const VAR_OID: &str = "1.3.6.1.4.1.8072.2.3.2.1";

fn net_snmp(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool)
        .env("MIBS", "")
        .env(
            "SNMP_PERSISTENT_DIR",
            std::env::temp_dir().join("twinrx-test-snmp-persist"),
        )
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (apt-get install snmp)"))
}

fn snmp_node(s: &Scratch, extra_snmp: &str) -> TestNode {
    // The users' secrets come from a file and from the environment, as an operator would.
    std::fs::write(s.path().join("ops.priv"), "privpass-ops-2\n").expect("secret file");
    std::fs::set_permissions(
        s.path().join("ops.priv"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("a secret file is private");
    let node = TestNode::new(s.path(), "", "");
    let cfg = std::fs::read_to_string(&node.config).expect("config").replace(
        &format!("[snmp]\nlisten = [\"{}:5162\"]\n", node.ip),
        &format!(
            "[snmp]\nlisten = [\"{}:5162\"]\n{extra_snmp}\n\
             [[snmp.users]]\nname = \"ops\"\nauth_protocol = \"SHA-256\"\nauth_passphrase_env = \"TWINRX_TEST_OPS_AUTH\"\n\
             priv_protocol = \"AES\"\npriv_passphrase_file = \"ops.priv\"\n\
             [[snmp.users]]\nname = \"md5des\"\nauth_protocol = \"MD5\"\nauth_passphrase = \"authpass-md5\"\n\
             priv_protocol = \"DES\"\npriv_passphrase = \"privpass-des\"\n\
             [[snmp.users]]\nname = \"plain\"\n",
            node.ip
        ),
    );
    std::fs::write(&node.config, cfg).expect("config");
    // (the secret file path is relative to the config's directory)
    node
}

fn start(node: &mut TestNode) {
    std::env::set_var("TWINRX_TEST_OPS_AUTH", "authpass-ops-1");
    node.start();
}

#[test]
fn traps_and_informs_of_every_version_arrive_once_with_their_fields() {
    let s = Scratch::new("snmp");
    let mut node = snmp_node(&s, "communities = [\"public\"]");
    start(&mut node);
    let dest = format!("{}:5162", node.ip);
    let ok = |out: std::process::Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(
        net_snmp(
            "snmptrap",
            &[
                "-v",
                "1",
                "-c",
                "public",
                &dest,
                "1.3.6.1.4.1.8072",
                "192.0.2.9",
                "6",
                "17",
                "",
                VAR_OID,
                "s",
                "v1 trap",
            ],
        ),
        "v1 trap",
    );
    ok(
        net_snmp(
            "snmptrap",
            &[
                "-v", "2c", "-c", "public", &dest, "", TRAP_OID, VAR_OID, "s", "v2c trap",
            ],
        ),
        "v2c trap",
    );
    ok(
        net_snmp(
            "snmpinform",
            &[
                "-v",
                "2c",
                "-c",
                "public",
                "-t",
                "2",
                "-r",
                "1",
                &dest,
                "",
                TRAP_OID,
                VAR_OID,
                "s",
                "v2c inform",
            ],
        ),
        "v2c inform",
    );
    ok(
        net_snmp(
            "snmpinform",
            &[
                "-v",
                "3",
                "-u",
                "ops",
                "-l",
                "authPriv",
                "-a",
                "SHA-256",
                "-A",
                "authpass-ops-1",
                "-x",
                "AES",
                "-X",
                "privpass-ops-2",
                "-t",
                "2",
                "-r",
                "1",
                &dest,
                "",
                TRAP_OID,
                VAR_OID,
                "s",
                "v3 inform authPriv",
            ],
        ),
        "v3 inform",
    );
    ok(
        net_snmp(
            "snmptrap",
            &[
                "-v",
                "3",
                "-e",
                "0x8000000001020304",
                "-u",
                "md5des",
                "-l",
                "authPriv",
                "-a",
                "MD5",
                "-A",
                "authpass-md5",
                "-x",
                "DES",
                "-X",
                "privpass-des",
                &dest,
                "",
                TRAP_OID,
                VAR_OID,
                "s",
                "v3 trap authPriv",
            ],
        ),
        "v3 trap",
    );
    ok(
        net_snmp(
            "snmptrap",
            &[
                "-v",
                "3",
                "-e",
                "0x8000000001020305",
                "-u",
                "plain",
                "-l",
                "noAuthNoPriv",
                &dest,
                "",
                TRAP_OID,
                VAR_OID,
                "s",
                "v3 trap noauth",
            ],
        ),
        "v3 trap noauth",
    );
    // Refused: wrong community, wrong auth password. Counted, not journaled.
    ok(
        net_snmp(
            "snmptrap",
            &[
                "-v",
                "2c",
                "-c",
                "intruder",
                &dest,
                "",
                TRAP_OID,
                VAR_OID,
                "s",
                "bad community",
            ],
        ),
        "bad community",
    );
    ok(
        net_snmp(
            "snmptrap",
            &[
                "-v",
                "3",
                "-e",
                "0x8000000001020306",
                "-u",
                "md5des",
                "-l",
                "authPriv",
                "-a",
                "MD5",
                "-A",
                "wrongpassword",
                "-x",
                "DES",
                "-X",
                "privpass-des",
                &dest,
                "",
                TRAP_OID,
                VAR_OID,
                "s",
                "bad digest",
            ],
        ),
        "bad digest",
    );
    let stream = wait_for("6 SNMP entries", Duration::from_secs(15), || {
        let st = node.stream();
        (st.len() >= 6).then_some(st)
    });
    assert_eq!(stream.len(), 6, "{stream:#?}");
    let find = |text: &str| -> &serde_json::Value {
        let found: Vec<_> = stream
            .iter()
            .filter(|e| {
                e["snmp"]["varbinds"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|vb| vb["value"] == text))
            })
            .collect();
        assert_eq!(found.len(), 1, "{text}: {stream:#?}");
        found[0]
    };
    let v1 = &find("v1 trap")["snmp"];
    assert_eq!(
        (v1["version"].as_str(), v1["pdu_type"].as_str()),
        (Some("1"), Some("trap"))
    );
    assert_eq!(v1["enterprise"], "1.3.6.1.4.1.8072");
    assert_eq!(v1["agent_address"], "192.0.2.9");
    assert_eq!(
        (v1["generic_trap"].as_u64(), v1["specific_trap"].as_u64()),
        (Some(6), Some(17))
    );
    let v2 = &find("v2c trap")["snmp"];
    assert_eq!(
        (
            v2["version"].as_str(),
            v2["pdu_type"].as_str(),
            v2["community"].as_str()
        ),
        (Some("2c"), Some("trapv2"), Some("public"))
    );
    assert_eq!(v2["trap_oid"], TRAP_OID);
    let inf = &find("v2c inform")["snmp"];
    assert_eq!(inf["pdu_type"], "inform");
    let v3i = &find("v3 inform authPriv")["snmp"];
    assert_eq!(
        (
            v3i["version"].as_str(),
            v3i["user"].as_str(),
            v3i["security_level"].as_str()
        ),
        (Some("3"), Some("ops"), Some("authPriv"))
    );
    let v3t = &find("v3 trap authPriv")["snmp"];
    assert_eq!(
        (v3t["user"].as_str(), v3t["pdu_type"].as_str()),
        (Some("md5des"), Some("trapv2"))
    );
    assert_eq!(
        find("v3 trap noauth")["snmp"]["security_level"],
        "noAuthNoPriv"
    );
    for e in &stream {
        assert_eq!(e["protocol"], "snmp");
        assert_eq!(e["transport"], "udp");
        assert!(e.get("parse_error").is_none(), "{e}");
    }
    let st = node.status();
    let snmp = &st["receivers"]["snmp"];
    assert_eq!(snmp["discarded"]["unknown_community"], 1, "{snmp:#}");
    assert_eq!(snmp["discarded"]["wrong_digest"], 1, "{snmp:#}");
    assert_eq!(snmp["informs_answered"], 2, "{snmp:#}");
    // The engine ID persists across restarts and boots grows.
    let engine1 =
        std::fs::read_to_string(node.data_dir().join("snmp-engine.json")).expect("engine file");
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(10)).success());
    start(&mut node);
    let engine2 =
        std::fs::read_to_string(node.data_dir().join("snmp-engine.json")).expect("engine file");
    let e1: serde_json::Value = serde_json::from_str(&engine1).expect("json");
    let e2: serde_json::Value = serde_json::from_str(&engine2).expect("json");
    assert_eq!(e1["engine_id"], e2["engine_id"]);
    assert!(e2["boots"].as_u64() > e1["boots"].as_u64(), "{e1} -> {e2}");
}

#[test]
fn an_inform_is_answered_only_once_journaled() {
    let s = Scratch::new("snmpdurable");
    let mut node = snmp_node(&s, "");
    let _tmpfs = Tmpfs::mount(&node.data_dir(), "1m");
    start(&mut node);
    let dest = format!("{}:5162", node.ip);
    let inform = |text: &str| {
        net_snmp(
            "snmpinform",
            &[
                "-v", "2c", "-c", "public", "-t", "1", "-r", "0", &dest, "", TRAP_OID, VAR_OID,
                "s", text,
            ],
        )
    };
    assert!(inform("before full").status.success());
    // Fill the disk until the journal's appends fail; then an inform must not be answered.
    let filler = node.data_dir().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 1024 * 1024]);
    let mut c = std::net::TcpStream::connect((node.ip, 5514)).expect("tcp");
    c.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    wait_for("the journal to fail", Duration::from_secs(30), || {
        use std::io::Write as _;
        let body = format!("<13>1 - h app - - - filler {}", "z".repeat(2000));
        for _ in 0..20 {
            if c.write_all(format!("{} {body}", body.len()).as_bytes())
                .is_err()
            {
                break;
            }
        }
        (node.status()["journal"]["failing"] == true).then_some(())
    });
    let out = inform("while full");
    assert!(
        !out.status.success(),
        "an inform was acknowledged while the journal could not take it"
    );
    let st = node.status();
    assert_eq!(st["journal"]["failing"], true, "{st:#}");
    // Space returns: the held record is journaled; a new inform is answered.
    std::fs::remove_file(&filler).expect("remove filler");
    wait_for("the journal to resume", Duration::from_secs(20), || {
        (node.status()["journal"]["failing"] == false).then_some(())
    });
    assert!(inform("after full").status.success());
    let stream = wait_for("3 entries", Duration::from_secs(10), || {
        let st = node.stream();
        (st.len() >= 3).then_some(st)
    });
    for text in ["before full", "after full"] {
        assert_eq!(entries_with(&stream, text).len(), 1, "{text}: {stream:#?}");
    }
    // The unanswered inform may still be journaled once space returned (it was held, not
    // dropped), but never twice.
    assert!(entries_with(&stream, "while full").len() <= 1);
}

#[test]
fn generated_traps_and_informs_are_all_in_the_stream_once() {
    let s = Scratch::new("snmpgen");
    let mut node = snmp_node(&s, "");
    start(&mut node);
    let dest = format!("{}:5162", node.ip);
    let mut manifests = Vec::new();
    for (proto, count) in [("snmp-trap", "3000"), ("snmp-inform", "200")] {
        let m = s.path().join(format!("{proto}.json"));
        run(Command::new(BIN)
            .args([
                "gen",
                "--protocol",
                proto,
                "--to",
                &dest,
                "--count",
                count,
                "--rate",
                "5000",
                "--run-id",
            ])
            .arg(proto.replace('-', ""))
            .arg("--manifest")
            .arg(&m));
        manifests.push(m);
    }
    node.wait_stream(3200, Duration::from_secs(20));
    let mut check = Command::new(BIN);
    check.args(["check", "--json", "--node", &node.admin]);
    for m in &manifests {
        check.arg("--manifest").arg(m);
    }
    let out = check.output().expect("check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["sent"], 3200, "{report:#}");
    assert_eq!(report["present"], 3200, "{report:#}");
    assert_eq!(report["duplicated"], 0, "{report:#}");
    assert_eq!(report["acknowledged_missing"], 0, "{report:#}");
    assert!(out.status.success());
}

/// `[snmp] rate_per_source_per_s`: a source over its rate loses the excess, counted; it is
/// never journaled (an inform would be retransmitted).
#[test]
fn a_source_over_its_snmp_rate_is_dropped_and_counted() {
    let s = Scratch::new("snmp-rate");
    let mut node = snmp_node(
        &s,
        "communities = [\"public\"]\nrate_per_source_per_s = 1\nrate_burst = 3",
    );
    start(&mut node);
    let dest = format!("{}:5162", node.ip);
    for i in 0..12 {
        let out = net_snmp(
            "snmptrap",
            &[
                "-v",
                "2c",
                "-c",
                "public",
                &dest,
                "",
                TRAP_OID,
                VAR_OID,
                "s",
                &format!("rate-{i}"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let st = wait_for("the excess counted", Duration::from_secs(10), || {
        let st = node.status();
        (st["receivers"]["snmp"]["rate_limited"].as_u64()? >= 6).then_some(st)
    });
    let limited = st["receivers"]["snmp"]["rate_limited"]
        .as_u64()
        .unwrap_or(0);
    let stream = node.wait_stream((12 - limited) as usize, Duration::from_secs(10));
    // The burst (3) and what the rate refilled while snmptrap ran; the rest counted.
    assert_eq!(stream.len() as u64 + limited, 12, "{st:#}");
    assert!(stream.len() >= 3, "{} accepted", stream.len());
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    assert!(
        metrics.contains(&format!(
            "twinrx_receiver_snmp_discarded_total{{protocol=\"snmp\",reason=\"rate_limited\"}} {limited}"
        )),
        "{metrics}"
    );
}
