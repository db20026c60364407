//! End-to-end stream retention (issue #14 items 1 and 3) against the built `twinrx`: real
//! processes, real files, load from `twinrx gen` over TCP.
//!
//! - A single node with a small `[stream]` retention deletes whole old segments (its stream
//!   builder runs retention every 10 s, and as soon as the stream is over its limit); `GET /stream?from=0` is then 410 Gone with
//!   `{"first_offset": F}`; `twinrx tail --from earliest` prints F.. the last entry without a
//!   gap, and a restart finds the same first offset.
//! - A file sink whose file system is full holds retention only up to
//!   `[stream] hold_bytes_max`: receiving goes on, retention deletes what it never delivered,
//!   `status` says which offsets it lost; once the disk has room it records the gap
//!   (`gap_entries`, the log line naming the offsets) and delivers on from the first retained
//!   offset. A sink whose target is empty starts at the first retained offset.
//! - Config errors name their keys.
//!
//! - A pair with a small stream retention deletes on both nodes (each node's stream writer
//!   runs it, held at the merger's checkpoint): 410 and `tail --from earliest` on both, the
//!   pair stays redundant.
//! - The active keeps what a stopped standby's copy of the stream still needs (age retention
//!   of 1 s, the default hold), and deletes it once the standby has caught up.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Segments of 64 KiB (the smallest allowed), the stream kept to two of them.
const SMALL_STREAM: &str =
    "[stream]\nsegment_bytes_max = 65536\nretention_bytes_max = 131072\ncompression = \"none\"\n";

fn stream_status(node: &TestNode) -> serde_json::Value {
    node.status()["stream"].clone()
}

/// Waits until the stream holds `n` entries (every message sent was received and published).
fn wait_stream_next(node: &TestNode, n: u64, timeout: Duration) {
    wait_for(&format!("{n} entries in the stream"), timeout, || {
        (stream_status(node)["next_offset"].as_u64() == Some(n)).then_some(())
    });
}

/// Waits until retention has deleted offsets below at least `min`; returns the first offset.
fn wait_first_offset_above(node: &TestNode, min: u64, timeout: Duration) -> u64 {
    wait_for(
        &format!("stream retention to delete offsets below {min}"),
        timeout,
        || {
            stream_status(node)["first_offset"]
                .as_u64()
                .filter(|f| *f >= min)
        },
    )
}

/// `GET url`: the status code and the body, whatever the status.
fn get_any(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().expect("admin reachable");
    let code = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .expect("body");
    (code, body)
}

/// The offsets `twinrx tail` prints (no follow).
fn tail_offsets(node: &TestNode, from: &str) -> Vec<u64> {
    let out = run(Command::new(BIN).args(["tail", "--from", from, "--node", &node.admin]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("tail line is JSON");
            v["offset"].as_u64().expect("offset")
        })
        .collect()
}

#[test]
fn small_stream_retention_deletes_old_segments_then_410_and_tail_from_earliest() {
    let s = Scratch::new("retention-single");
    let mut node = TestNode::new(&s.path().join("a"), "", SMALL_STREAM);
    node.start();
    let n = 3000;
    let mut g = gen(&node, &s.path().join("m.json"), n, 3000, "ret");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_stream_next(&node, n, Duration::from_secs(60));
    // A retention pass as soon as the stream is over its limit (at most every 250 ms) and
    // every 10 s: wait for one after the last entry. The stream keeps two segments and the
    // one being written at most.
    wait_first_offset_above(&node, n / 2, Duration::from_secs(40));
    let st = wait_for(
        "the stream within two segments and the one being written",
        Duration::from_secs(40),
        || {
            let st = stream_status(&node);
            (st["bytes"].as_u64() <= Some(131_072 + 65_536)).then_some(st)
        },
    );
    note(&format!("stream after retention: {st}"));
    let first = st["first_offset"].as_u64().expect("first_offset");
    assert!(first >= n / 2, "{st}");
    assert_eq!(st["retention_bytes_max"], 131_072);

    // Below the first retained offset: 410 Gone, saying where the stream starts.
    let (code, body) = get_any(&format!("{}/stream?from=0", node.admin));
    assert_eq!(code, 410, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("410 body is JSON");
    assert_eq!(v["first_offset"].as_u64(), Some(first), "{v}");
    assert_eq!(v["from"], 0, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("deleted by stream retention")),
        "{v}"
    );
    let (code, _) = get_any(&format!("{}/stream?from={}", node.admin, first - 1));
    assert_eq!(code, 410, "one below the first retained offset");
    let (code, body) = get_any(&format!("{}/stream?from={first}&limit=1", node.admin));
    assert_eq!(code, 200, "{body}");

    // `tail --from earliest` (and the default) prints F .. n-1, contiguous.
    let offsets = tail_offsets(&node, "earliest");
    assert_eq!(offsets, (first..n).collect::<Vec<_>>());
    let out = run(Command::new(BIN).args(["tail", "--node", &node.admin]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() as u64,
        n - first,
        "tail without --from starts at the earliest entry too"
    );
    // `tail --from 0` is refused, naming the first offset held.
    let out = Command::new(BIN)
        .args(["tail", "--from", "0", "--node", &node.admin])
        .output()
        .expect("run tail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tail --from 0 must fail: {err}");
    assert!(
        err.contains(&format!("the stream now starts at offset {first}"))
            && err.contains("--from earliest"),
        "{err}"
    );

    // `twinrx check` against the node cannot see the whole stream any more, and says why.
    let out = Command::new(BIN)
        .args(["check", "--node", &node.admin, "--manifest"])
        .arg(s.path().join("m.json"))
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("stream retention has deleted its first entries"),
        "{err}"
    );

    // A restart after deletion: the same first offset, the same entries, offsets go on.
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    node.start();
    assert_eq!(stream_status(&node)["first_offset"].as_u64(), Some(first));
    assert_eq!(
        tail_offsets(&node, "earliest"),
        (first..n).collect::<Vec<_>>()
    );
    let mut g = gen(&node, &s.path().join("m2.json"), 10, 100, "ret2");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_stream_next(&node, n + 10, Duration::from_secs(30));
    assert_eq!(
        tail_offsets(&node, &first.to_string()),
        (first..n + 10).collect::<Vec<_>>()
    );
}

fn sink_status(node: &TestNode, name: &str) -> serde_json::Value {
    let st = node.status();
    st["sinks"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no sink {name} in status: {st}"))
}

fn file_offsets(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("file line is JSON");
            v["offset"].as_u64().expect("offset")
        })
        .collect()
}

#[test]
fn a_sink_down_past_hold_bytes_max_loses_the_oldest_records_the_gap_and_goes_on() {
    let s = Scratch::new("retention-hold");
    let out_dir = s.path().join("out");
    let disk = Tmpfs::mount(&out_dir, "1m");
    let out = out_dir.join("stream.ndjson");
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        &format!(
            "[stream]\nsegment_bytes_max = 65536\ncompression = \"none\"\nretention_bytes_max = 262144\n\
             hold_bytes_max = 131072\n\n\
             [[sink]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\n\
             retry_backoff_ms_min = 50\nretry_backoff_ms_max = 500\n",
            out.display()
        ),
    );
    node.start();
    assert_eq!(sink_status(&node, "file")["hold_bytes_max"], 131_072);
    // Delivered: 0..200.
    let mut g = gen(&node, &s.path().join("m1.json"), 200, 1000, "hold1");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_for(
        "the sink to deliver 200 entries",
        Duration::from_secs(30),
        || (sink_status(&node, "file")["next_offset"] == 200).then_some(()),
    );
    // The sink's disk fills up: it cannot write, and stays down.
    let filler = fill(&disk.0);
    let n = 4000;
    let mut g = gen(&node, &s.path().join("m2.json"), n - 200, 4000, "hold2");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    // Receiving never stopped: everything is in the stream.
    wait_stream_next(&node, n, Duration::from_secs(60));
    assert_eq!(sink_status(&node, "file")["state"], "retrying");
    // Past the hold, retention deletes what the sink never delivered, and status says so.
    let first = wait_first_offset_above(&node, 201, Duration::from_secs(40));
    // Either before the sink read on (retention passed it) or after (it met the gap); the
    // sink records it on its next pass, not at the deletion itself. The gap starts at 200 or
    // a little after: a write that fits in the last page of the sink's file still succeeds
    // on the full tmpfs (seen under stress-ng: 201..=3567).
    let gap_from = wait_for(
        "the sink's gap among the status problems",
        Duration::from_secs(30),
        || {
            let st = node.status();
            st["problems"].as_array()?.iter().find_map(|p| {
                let p = p.as_str()?;
                let rest = p
                    .strip_prefix("sink file: stream retention deleted offsets ")
                    .or_else(|| p.strip_prefix("sink file: offsets "))?;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().ok()
            })
        },
    );
    assert!(
        (200..first).contains(&gap_from),
        "the gap starts at {gap_from}: the sink's position (200) or a little after, below {first}"
    );
    // Retention runs again within 250 ms of the stream going over its limit: the last
    // batches may have left it over a moment ago.
    let bytes = wait_for(
        "a sink that is down to keep the stream within its retention (262,144 + one segment)",
        Duration::from_secs(10),
        || {
            let bytes = node.status()["stream"]["bytes"].as_u64()?;
            (bytes <= 262_144 + 65_536).then_some(bytes)
        },
    );
    note(&format!("the stream after retention: {bytes} bytes"));

    // The disk has room again: the sink records the gap and delivers on from the first
    // retained offset.
    std::fs::remove_file(&filler).expect("remove filler");
    wait_for(
        "the sink to deliver the rest",
        Duration::from_secs(60),
        || (sink_status(&node, "file")["next_offset"] == n).then_some(()),
    );
    let sink = sink_status(&node, "file");
    note(&format!("sink after the gap: {sink}"));
    let offsets = file_offsets(&out);
    let (lost_from, resumed) = assert_one_gap(&offsets, 200, first, n);
    assert_eq!(
        sink["gap_entries"].as_u64(),
        Some(resumed - lost_from),
        "{sink}"
    );
    // One gap per retention pass that deleted more of it while the sink was down.
    assert!(sink["gaps"].as_u64() >= Some(1), "{sink}");
    assert!(
        sink["last_gap"]
            .as_str()
            .is_some_and(|g| g.contains(&format!("offsets {lost_from}..={}", resumed - 1))),
        "{sink}"
    );
    assert!(
        node.status()["problems"]
            .to_string()
            .contains(&format!("sink file: offsets {lost_from}..={}", resumed - 1)),
        "the gap stays visible in status"
    );
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    assert!(
        metrics.contains(&format!(
            "twinrx_sink_gap_entries_total{{sink=\"file\",type=\"file\"}} {}",
            resumed - lost_from
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("gap"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = strip_ansi(&node.log_text());
    assert!(
        log.lines()
            .any(|l| l.contains("sink gap") && l.contains(&format!("first_lost={lost_from}"))),
        "the log names the offsets lost"
    );
}

#[test]
fn a_sink_with_an_empty_target_starts_at_the_first_retained_offset() {
    let s = Scratch::new("retention-empty");
    let mut node = TestNode::new(&s.path().join("a"), "", SMALL_STREAM);
    node.start();
    let n = 3000;
    let mut g = gen(&node, &s.path().join("m.json"), n, 3000, "empty");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_stream_next(&node, n, Duration::from_secs(60));
    let first = wait_first_offset_above(&node, n / 2, Duration::from_secs(40));
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    // A file sink added now: its file is empty.
    let out = s.path().join("out.ndjson");
    let cfg = std::fs::read_to_string(&node.config).expect("config");
    std::fs::write(
        &node.config,
        format!(
            "{cfg}\n[[sink]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\n",
            out.display()
        ),
    )
    .expect("config");
    node.start();
    wait_for(
        "the sink to deliver the stream",
        Duration::from_secs(30),
        || (sink_status(&node, "file")["next_offset"] == n).then_some(()),
    );
    assert_eq!(file_offsets(&out), (first..n).collect::<Vec<_>>());
    let sink = sink_status(&node, "file");
    assert_eq!(sink["gap_entries"], 0, "an empty target is no gap: {sink}");
    assert!(sink["last_gap"].is_null(), "{sink}");
}

#[test]
fn retention_config_errors_name_the_keys() {
    let s = Scratch::new("retention-config");
    let node = TestNode::new(
        &s.path().join("a"),
        "",
        "[journal]\nretention_bytes_max = 1000\n\n\
         [stream]\nsegment_bytes_max = 1048576\nretention_bytes_max = 4194304\n\
         hold_bytes_max = 8388608\nretention_age_max_s = 0\n",
    );
    let out = Command::new(BIN)
        .arg("node")
        .arg("--config")
        .arg(&node.config)
        .output()
        .expect("run twinrx node");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad config must not start: {err}");
    for want in [
        "3 problems",
        "journal.retention_bytes_max = 1000: must be at least two segments (2 × journal.segment_bytes_max = 134217728)",
        "stream.hold_bytes_max = 8388608: must not be above stream.retention_bytes_max (4194304)",
        "stream.retention_age_max_s = 0: must be at least 1",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// A trio whose two nodes get `extra` appended to their configs (nothing started).
fn trio_with(tag: &str, extra: &str) -> Trio {
    let trio = Trio::new(tag);
    for n in [&trio.a, &trio.b] {
        let text = std::fs::read_to_string(&n.config).expect("config");
        std::fs::write(&n.config, format!("{text}\n{extra}\n")).expect("config");
    }
    trio
}

/// Waits until node `n`'s stream holds `count` entries, committed.
fn wait_committed(n: &TestNode, count: u64, timeout: Duration) {
    wait_for(
        &format!("{count} committed entries on {}", n.label()),
        timeout,
        || {
            let st = stream_status(n);
            (st["next_offset"] == count && st["committed_end"] == count).then_some(())
        },
    );
}

#[test]
fn pair_stream_retention_deletes_on_both_nodes_and_reads_start_at_the_first_retained_offset() {
    let mut trio = trio_with(
        "retention-pair",
        &format!("{SMALL_STREAM}\n[merger]\ncheckpoint_entries = 500\n"),
    );
    let active = trio.start();
    let n = 3000;
    let mut g = trio.gen("retpair", n, 3000, "tcp");
    g.wait(Duration::from_secs(60));
    for name in ["a", "b"] {
        wait_committed(trio.node(name), n, Duration::from_secs(60));
    }
    for name in [active, Trio::other(active)] {
        let node = trio.node(name);
        wait_first_offset_above(node, n / 2, Duration::from_secs(60));
        // Retention, the segment being written, and what lies after the merger's last
        // checkpoint (every 500 entries here, ~300 KB): the writer holds the stream there.
        // Over its limit, the stream's retention runs within 250 ms: a pass is due, not one
        // every few seconds.
        let (first, bytes) = wait_for(
            &format!("{name}: the stream within about its retention (131,072 + 5 x 65,536 bytes)"),
            Duration::from_secs(10),
            || {
                let st = stream_status(node);
                let bytes = st["bytes"].as_u64()?;
                (bytes <= 131_072 + 5 * 65_536).then_some((st["first_offset"].as_u64()?, bytes))
            },
        );
        eprintln!("[retention-pair] {name}: {bytes} bytes from offset {first}");
        let (code, body) = get_any(&format!("{}/stream?from=0", node.admin));
        assert_eq!(code, 410, "{name}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("410 body is JSON");
        let f = v["first_offset"].as_u64().expect("first_offset");
        assert!(f >= first, "{name}: {v}");
        // Retention may run again between the two reads (within 250 ms while the stream is
        // over its limit): the tail starts at the first offset retained when it started.
        let tail = tail_offsets(node, "earliest");
        let start = tail.first().copied().unwrap_or(n);
        assert!(start >= f, "{name}: the tail starts at {start}, below {f}");
        assert_eq!(
            tail,
            (start..n).collect::<Vec<_>>(),
            "{name}: tail --from earliest is the first retained offset .. the end"
        );
    }
    trio.wait_redundant(Duration::from_secs(30));
}

#[test]
fn the_active_keeps_what_a_stopped_standbys_stream_copy_needs_then_deletes_it() {
    // Entries older than 1 s go, unless someone still needs them (the default hold, 1 GiB).
    let mut trio = trio_with(
        "retention-peer-hold",
        "[stream]\nsegment_bytes_max = 65536\ncompression = \"none\"\nretention_age_max_s = 1\n\n\
         [merger]\ncheckpoint_entries = 500\n",
    );
    let active = trio.start();
    let standby = Trio::other(active);
    let mut g = trio.gen("hold1", 300, 1000, "tcp");
    g.wait(Duration::from_secs(60));
    wait_committed(trio.node(standby), 300, Duration::from_secs(60));
    trio.node_mut(standby).kill9();
    // The active alone: 3000 more entries, 25+ segments, all older than 1 s soon.
    let n = 3300;
    let mut g = gen(
        trio.node(active),
        &trio.dir().join("m2.json"),
        n - 300,
        3000,
        "hold2",
    );
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_committed(trio.node(active), n, Duration::from_secs(60));
    // Several retention passes (every 5 s on a pair): the standby's copy ends at 300, so
    // nothing from there on may go.
    let until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < until {
        let first = stream_status(trio.node(active))["first_offset"]
            .as_u64()
            .expect("first_offset");
        assert!(
            first <= 300,
            "retention deleted offsets up to {first} the stopped standby still needs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Back, caught up: then the old entries go.
    trio.node_mut(standby).start();
    trio.resync(standby);
    wait_committed(trio.node(standby), n, Duration::from_secs(60));
    let first = wait_first_offset_above(trio.node(active), 301, Duration::from_secs(60));
    note(&format!(
        "active's first offset once the standby caught up: {first}"
    ));
    let offsets = tail_offsets(trio.node(standby), "earliest");
    assert_eq!(
        offsets.last(),
        Some(&(n - 1)),
        "the standby holds the whole stream's end"
    );
    let f = offsets[0];
    assert_eq!(offsets, (f..n).collect::<Vec<_>>());
    trio.wait_redundant(Duration::from_secs(30));
}

/// Issue #14 item 3, last part: the active's retention deleted entries the standby lacks, so
/// its `SyncReply` tells the standby to restart its copy at the first retained offset (with
/// the merger's progress at the active's checkpoint); one `twinrx resync`, and `status` says
/// where the copy starts.
#[test]
fn a_standby_away_longer_than_the_retention_comes_back_with_one_resync() {
    // The hold is two segments: a standby away while more piles up no longer holds the
    // active's retention (entries older than 1 s go).
    let mut trio = trio_with(
        "retention-away",
        "[stream]\nsegment_bytes_max = 65536\ncompression = \"none\"\nretention_age_max_s = 1\nhold_bytes_max = 131072\n\n\
         [merger]\ncheckpoint_entries = 500\n",
    );
    let active = trio.start();
    let standby = Trio::other(active);
    let mut g = trio.gen("away1", 300, 1000, "tcp");
    g.wait(Duration::from_secs(60));
    wait_committed(trio.node(standby), 300, Duration::from_secs(60));
    trio.node_mut(standby).kill9();
    let n = 3300;
    let mut g = gen(
        trio.node(active),
        &trio.dir().join("m2.json"),
        n - 300,
        3000,
        "away2",
    );
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_committed(trio.node(active), n, Duration::from_secs(60));
    let first = wait_first_offset_above(trio.node(active), 301, Duration::from_secs(60));
    note(&format!(
        "active deleted up to {first} while the standby was away"
    ));
    trio.node_mut(standby).start();
    let out = trio.resync(standby);
    assert!(
        out.contains("stream copy restarted at offset"),
        "the resync says the copy restarted: {out}"
    );
    wait_committed(trio.node(standby), n, Duration::from_secs(60));
    let offsets = tail_offsets(trio.node(standby), "earliest");
    let f = offsets[0];
    assert!(
        f >= first,
        "the standby's copy starts at the active's first retained offset"
    );
    assert_eq!(offsets, (f..n).collect::<Vec<_>>());
    let st = trio.node(standby).status();
    assert_eq!(
        st["stream"]["first_offset"].as_u64(),
        Some(f),
        "{}",
        st["stream"]
    );
    assert_eq!(
        st["ha"]["stream_copy_restarted"]["offset"].as_u64(),
        Some(f),
        "status says where the copy restarted: {}",
        st["ha"]
    );
    let out = Command::new(BIN)
        .args(["status", "--node", &trio.node(standby).admin])
        .output()
        .expect("run twinrx status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("stream copy restarted at offset {f}")),
        "{text}"
    );
    trio.wait_redundant(Duration::from_secs(30));
    // The note survives a restart of the standby (kept in its data directory).
    trio.node(standby).signal(nix::sys::signal::Signal::SIGTERM);
    trio.node_mut(standby).wait_exit(Duration::from_secs(30));
    trio.node_mut(standby).start();
    let restarted = trio.node(standby).status();
    assert_eq!(
        restarted["ha"]["stream_copy_restarted"]["offset"].as_u64(),
        Some(f),
        "status still says where the copy restarted: {}",
        restarted["ha"]
    );
    trio.wait_redundant(Duration::from_secs(60));

    // Then the active fails. The new active's merger starts from the progress that came with
    // the restart (the active's checkpoint): it publishes the new messages and none of the
    // journal records the deleted entries accounted for (without that progress: the 300
    // records of the first load that the standby journaled, a second time).
    trio.node_mut(active).kill9();
    let mut g = gen(
        trio.node(standby),
        &trio.dir().join("m3.json"),
        50,
        1000,
        "away3",
    );
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_for(
        "the former standby to publish the new messages",
        Duration::from_secs(60),
        || {
            (stream_status(trio.node(standby))["next_offset"].as_u64() >= Some(n + 50))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let st = stream_status(trio.node(standby));
    assert_eq!(
        st["next_offset"].as_u64(),
        Some(n + 50),
        "the new active publishes each record once: {st}"
    );
}

/// Files in `dir` whose names end with `suffix`.
fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    })
}

/// `[journal]`/`[stream] compression` (#14 item 6), on by default: a pair with small segments
/// compresses its sealed segments of all three areas, reports the saving per area, and serves
/// every entry from them (the final check reads both streams from offset 0), also after each
/// node restarted.
#[test]
fn a_pair_serves_every_entry_from_compressed_segments_before_and_after_restarts() {
    let mut trio = trio_with(
        "compressed",
        "[journal]\nsegment_bytes_max = 65536\n\n[stream]\nsegment_bytes_max = 65536\n",
    );
    let active = trio.start();
    let n = 3000;
    let mut g = trio.gen("zst", n, 3000, "tcp");
    g.wait(Duration::from_secs(60));
    for name in ["a", "b"] {
        wait_committed(trio.node(name), n, Duration::from_secs(60));
    }
    for name in ["a", "b"] {
        let node = trio.node(name);
        let areas = wait_for(
            &format!("{name}: sealed segments of each area compressed to under half"),
            Duration::from_secs(30),
            || {
                let st = node.status();
                let areas = st["disk"]["areas"].clone();
                ["journal", "peer", "stream"]
                    .iter()
                    .all(|a| {
                        let (on_disk, written) = (
                            areas[a]["bytes"].as_u64().unwrap_or(0),
                            areas[a]["bytes_as_written"].as_u64().unwrap_or(0),
                        );
                        // The segment being written stays as written (up to 64 KiB).
                        written > 4 * 65_536 && on_disk < (written - 65_536) / 2 + 65_536
                    })
                    .then_some(areas)
            },
        );
        note(&format!("{name}: areas {areas}"));
        for area in ["journal", "peer", "stream"] {
            let dir = node.data_dir().join(area);
            assert!(
                count_files(&dir, ".zseg") >= 2,
                "{name}/{area}: compressed segments in {}",
                dir.display()
            );
            assert!(
                areas[area]["bytes_per_entry"].as_u64().is_some(),
                "{name}/{area}: {}",
                areas[area]
            );
        }
    }
    let manifest = g.manifest.clone();
    trio.final_check(&[&manifest]);
    // Each node restarted in turn: it opens its compressed segments, and both streams still
    // read whole from offset 0.
    for name in [Trio::other(active), active] {
        trio.node(name).signal(nix::sys::signal::Signal::SIGTERM);
        trio.node_mut(name).wait_exit(Duration::from_secs(30));
        trio.node_mut(name).start();
        trio.wait_redundant(Duration::from_secs(60));
    }
    trio.final_check(&[&manifest]);
}
