//! The merger's checkpoints (issue #14): a restarted node folds only the stream lines after
//! its last checkpoint, and the merger it then runs continues exactly once; a damaged
//! checkpoint is refused (logged) and the whole stream folded instead. Real processes: a pair
//! with its witness, `twinrx gen` to both nodes, SIGTERM/SIGKILL.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const SEC: Duration = Duration::from_secs(1);

/// Appends a `[merger]` section taking a checkpoint every 1,000 entries (or second).
fn small_checkpoints(t: &Trio) {
    for n in [&t.a, &t.b] {
        let text = std::fs::read_to_string(&n.config).expect("read config");
        std::fs::write(
            &n.config,
            format!("{text}\n[merger]\ncheckpoint_entries = 1000\ncheckpoint_interval_s = 1\n"),
        )
        .expect("write config");
    }
}

fn checkpoint_offset(n: &TestNode) -> Option<u64> {
    n.status()["stream"]["checkpoint_offset"].as_u64()
}

/// `(checkpoint, lines_folded, stream_end)` from the node's last "HA state restored" log line.
fn restored(n: &TestNode) -> (Option<u64>, u64, u64) {
    let log = strip_ansi(&n.log_text());
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("HA state restored"))
        .unwrap_or_else(|| panic!("no 'HA state restored' line in {}", n.label()))
        .to_string();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let ck = field("checkpoint");
    let ck = ck
        .strip_prefix("Some(")
        .and_then(|v| v.strip_suffix(')'))
        .and_then(|v| v.parse().ok());
    let folded = field("lines_folded").parse().expect("lines_folded");
    let end = field("stream_end").parse().expect("stream_end");
    (ck, folded, end)
}

#[test]
fn a_restarted_standby_folds_from_its_checkpoint_then_takes_over_exactly_once() {
    let tag = "ckpt";
    let mut t = Trio::new(tag);
    small_checkpoints(&t);
    let act = t.start();
    let sby = Trio::other(act);
    let mut g1 = t.gen("ck1", 6_000, 3_000, "udp");
    g1.wait(60 * SEC);
    t.wait_stream_end(act, 6_000, 60 * SEC);
    // Both nodes checkpoint: the active as it publishes, the standby as it stores the
    // replicated entries; each stores one once its lines are committed.
    for n in [act, sby] {
        let at = wait_for(
            &format!("[{tag}] a checkpoint of at least 5,000 entries on {n}"),
            30 * SEC,
            || checkpoint_offset(t.node(n)).filter(|&o| o >= 5_000),
        );
        note(&format!("[{tag}] {n}: checkpoint at {at}"));
    }

    // A restart of the standby folds only what follows its checkpoint.
    t.node(sby).signal(Signal::SIGTERM);
    assert!(t.node_mut(sby).wait_exit(30 * SEC).success());
    t.node_mut(sby).start();
    t.wait_redundant(60 * SEC);
    let (ck, folded, _) = restored(t.node(sby));
    let end = t.node(sby).status()["stream"]["next_offset"]
        .as_u64()
        .expect("next_offset");
    note(&format!(
        "[{tag}] {sby} restored from checkpoint {ck:?}, folded {folded} of {end} lines"
    ));
    let ck = ck.unwrap_or_else(|| panic!("[{tag}] {sby} did not start from its checkpoint"));
    assert!(ck >= 5_000, "[{tag}] checkpoint {ck}");
    assert!(
        folded + ck <= end + 1 && folded < 2_000,
        "[{tag}] {sby} folded {folded} lines after checkpoint {ck} of {end}"
    );

    // The merger that runs from that fold publishes every message once: the restored node
    // takes over under load.
    let mut g2 = t.gen("ck2", 8_000, 2_000, "udp");
    t.wait_stream_end(act, 6_000 + 2_000, 60 * SEC);
    t.node(act).signal(Signal::SIGKILL);
    t.node_mut(act).wait_exit(10 * SEC);
    wait_for(
        &format!("[{tag}] {sby} publishing after the kill of {act}"),
        15 * SEC,
        || is_publishing_active(&ha_of(t.node(sby))?).then_some(()),
    );
    g2.wait(120 * SEC);
    t.node_mut(act).start();
    t.resync(act);
    t.final_check(&[&g1.manifest, &g2.manifest]);
}

#[test]
fn a_damaged_checkpoint_is_refused_and_the_whole_stream_folded() {
    let tag = "ckpt-bad";
    let mut t = Trio::new(tag);
    small_checkpoints(&t);
    let act = t.start();
    let sby = Trio::other(act);
    let mut g = t.gen("ckb", 3_000, 3_000, "udp");
    g.wait(60 * SEC);
    t.wait_stream_end(act, 3_000, 60 * SEC);
    wait_for(&format!("[{tag}] a checkpoint on {sby}"), 30 * SEC, || {
        checkpoint_offset(t.node(sby)).filter(|&o| o >= 2_000)
    });
    // The standby's copy of the stream is complete before it stops, so "the whole stored
    // stream" is all 3,000 entries (its copy may lag the active's by a batch otherwise).
    t.wait_stream_end(sby, 3_000, 60 * SEC);
    t.node(sby).signal(Signal::SIGTERM);
    assert!(t.node_mut(sby).wait_exit(30 * SEC).success());
    let path = t.node(sby).data_dir().join("history").join("checkpoint");
    let mut img = std::fs::read(&path).expect("read checkpoint");
    let mid = img.len() / 2;
    img[mid] ^= 0x5a;
    std::fs::write(&path, &img).expect("damage checkpoint");
    t.node_mut(sby).start();
    t.wait_redundant(60 * SEC);
    let (ck, folded, end) = restored(t.node(sby));
    assert_eq!(ck, None, "[{tag}] a damaged checkpoint must not be used");
    assert!(
        folded == end && end >= 3_000,
        "[{tag}] the whole stored stream folded: {folded} lines of {end}"
    );
    assert!(
        t.node(sby)
            .log_text()
            .contains("merger checkpoint not used; folding the whole stored stream"),
        "[{tag}] the refusal is logged"
    );
    // It takes a good checkpoint again and the pair goes on exactly once.
    let mut g2 = t.gen("ckb2", 2_000, 2_000, "udp");
    g2.wait(60 * SEC);
    t.final_check(&[&g.manifest, &g2.manifest]);
    wait_for(
        &format!("[{tag}] a new checkpoint on {sby}"),
        30 * SEC,
        || checkpoint_offset(t.node(sby)).filter(|&o| o >= 4_000),
    );
}
