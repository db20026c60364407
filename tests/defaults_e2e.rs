//! End-to-end default retention (issue #14 item 2) against the built `twinrx`: a node with no
//! retention key on a small real filesystem (a 16 MiB tmpfs as its data dir) keeps journal and
//! stream within their default shares of it (25 % and 55 % on a single node, 80 % together),
//! however much it receives; `status` (JSON and text) shows each area's size, its limit and
//! where the limit comes from, and the hours of history at the current rate.
//!
//! A pair on two 128 MiB tmpfs data dirs keeps journal, peer copy and stream within 20 %, 20 %
//! and 40 % of each node's filesystem.
//!
//! A filesystem too small for two segments of an area refuses to start naming the key.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const FS_BYTES: u64 = 16 << 20;

/// Bytes in use on the filesystem holding `path` (`None` once it is gone: a failed test).
fn used_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64)
}

/// Watches the use of the filesystem holding `path` every 10 ms for its peak, until `done`.
fn watch_peak(
    path: &Path,
    done: &Arc<AtomicBool>,
) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let (p, done, path) = (peak.clone(), done.clone(), path.to_path_buf());
    let h = std::thread::spawn(move || {
        while !done.load(Relaxed) {
            let Some(used) = used_bytes(&path) else {
                return;
            };
            p.fetch_max(used, Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (peak, h)
}

#[test]
fn a_node_without_retention_keys_stays_within_its_share_of_a_small_disk() {
    let s = Scratch::new("defaults-share");
    let dir = s.path().join("a");
    let disk = Tmpfs::mount(&dir.join("data"), "16m");
    let mut node = TestNode::new(
        &dir,
        "",
        // Uncompressed: the shares are counted in bytes on disk, and the load is sized to
        // go past them as written (compression is its own test, retention_e2e).
        "[journal]\nsegment_bytes_max = 65536\ncompression = \"none\"\n\n\
         [stream]\nsegment_bytes_max = 65536\ncompression = \"none\"\n",
    );
    node.start();
    let st = node.status();
    let d = &st["disk"];
    assert_eq!(d["fs_bytes"], FS_BYTES, "{d}");
    assert_eq!(d["budget_pct"], 80, "{d}");
    let (journal_max, stream_max) = (FS_BYTES * 25 / 100, FS_BYTES * 55 / 100);
    let budget = FS_BYTES * 80 / 100;
    assert_eq!(d["bytes_max"], journal_max + stream_max, "{d}");
    let a = &d["areas"];
    assert_eq!(a["journal"]["bytes_max"], journal_max, "{d}");
    assert_eq!(a["journal"]["limit"], "default", "{d}");
    assert_eq!(a["journal"]["share_pct"], 25, "{d}");
    assert_eq!(a["stream"]["bytes_max"], stream_max, "{d}");
    assert_eq!(a["stream"]["share_pct"], 55, "{d}");
    assert!(a["peer"].is_null(), "a single node has no peer copy: {d}");
    assert!(a["stream"]["hours"].is_null(), "idle: unknown: {d}");
    assert_eq!(st["stream"]["retention_bytes_max"], stream_max);
    assert_eq!(
        st["stream"]["hold_bytes_max"], stream_max,
        "hold: the stream's limit"
    );
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    for want in [
        format!("twinrx_disk_area_limit_bytes{{area=\"journal\"}} {journal_max}"),
        format!("twinrx_disk_area_limit_bytes{{area=\"stream\"}} {stream_max}"),
        "twinrx_disk_area_bytes{area=\"stream\"} ".to_string(),
    ] {
        assert!(metrics.contains(&want), "missing {want:?} in:\n{metrics}");
    }

    // The filesystem's use, watched throughout (every 10 ms) for its peak.
    let done = Arc::new(AtomicBool::new(false));
    let (peak, watcher) = watch_peak(&disk.0, &done);
    // ~10 MB of journal and ~22 MB of stream for 40,000 200-byte messages: each area several
    // times its share, the two together twice the filesystem.
    let n = 40_000;
    let mut g = gen(&node, &s.path().join("m.json"), n, 2_000, "share");
    // While the load runs (the rate is measured over samples 5 s apart): hours of history.
    let st = wait_for(
        "status to show hours of history at the current rate",
        Duration::from_secs(30),
        || {
            let st = node.status();
            let a = &st["disk"]["areas"];
            (a["journal"]["hours"].as_f64().is_some() && a["stream"]["hours"].as_f64().is_some())
                .then_some(st)
        },
    );
    let a = &st["disk"]["areas"];
    for area in ["journal", "stream"] {
        let hours = a[area]["hours"].as_f64().expect("hours");
        let rate = a[area]["entries_per_s"].as_f64().expect("rate");
        // 2,000 messages/s; the limit holds seconds of them, not hours.
        assert!(
            rate > 500.0 && rate < 4_000.0,
            "{area}: {rate} entries/s: {a}"
        );
        assert!(hours > 0.0 && hours < 0.1, "{area}: {hours} h: {a}");
    }
    let text = String::from_utf8_lossy(
        &run(Command::new(BIN).args(["status", "--node", &node.admin])).stdout,
    )
    .into_owned();
    assert!(text.contains("\ndisk      data dir "), "{text}");
    assert!(
        text.contains("limits (80 % of the 16.0 MiB filesystem at most)"),
        "{text}"
    );
    assert!(text.contains("of 4.0 MiB (default, 25 %)"), "{text}");
    assert!(text.contains("of 8.8 MiB (default, 55 %)"), "{text}");
    assert!(text.contains(" of history at "), "{text}");
    wait_child(&mut g, "gen", Duration::from_secs(120));
    wait_for(
        "all messages in the stream",
        Duration::from_secs(60),
        || (node.status()["stream"]["next_offset"] == n).then_some(()),
    );
    done.store(true, Relaxed);
    watcher.join().expect("watcher");
    let peak = peak.load(Relaxed);
    let st = node.status();
    let line = format!(
        "[defaults] peak {peak} bytes of {FS_BYTES} (budget {budget}); disk {}",
        st["disk"]
    );
    note(&line);
    eprintln!("{line}");
    // Nothing refused: the disk never filled.
    assert_eq!(st["journal"]["append_errors"], 0, "{}", st["journal"]);
    assert_eq!(st["receivers"]["syslog"]["accepted"]["tcp"], n);
    // Retention deleted the oldest segments of both areas.
    assert!(
        st["journal"]["first_seq"].as_u64() > Some(1),
        "{}",
        st["journal"]
    );
    assert!(
        st["stream"]["first_offset"].as_u64() > Some(0),
        "{}",
        st["stream"]
    );
    // The peak: the budget, plus what arrives between two passes of retention (at most every
    // 250 ms once over, at 2,000 messages/s ~0.4 MB) and the node's small files.
    assert!(
        peak <= budget + (1 << 20),
        "peak use {peak} bytes above the 80 % budget {budget} + 1 MiB"
    );
    // And each area within its limit once the load is over (the next pass of retention).
    let d = wait_for(
        "journal and stream within their limits",
        Duration::from_secs(30),
        || {
            let d = node.status()["disk"].clone();
            let within = [("journal", journal_max), ("stream", stream_max)]
                .iter()
                .all(|(area, max)| d["areas"][area]["bytes"].as_u64() <= Some(*max));
            within.then_some(d)
        },
    );
    assert!(used_bytes(&disk.0) <= Some(budget + (256 << 10)), "{d}");
}

#[test]
fn a_filesystem_too_small_for_two_segments_refuses_to_start_naming_the_key() {
    let s = Scratch::new("defaults-tiny");
    let dir = s.path().join("a");
    let _disk = Tmpfs::mount(&dir.join("data"), "1m");
    let node = TestNode::new(&dir, "", "[journal]\nsegment_bytes_max = 1048576\n");
    let out = Command::new(BIN)
        .arg("node")
        .arg("--config")
        .arg(&node.config)
        .output()
        .expect("run twinrx node");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not start: {err}");
    for want in [
        "1 problem with the disk budget",
        "journal.retention_bytes_max is unset and its default, 25 % of the 1048576-byte \
         filesystem holding node.data_dir (262144 bytes), is below two segments (2 × \
         journal.segment_bytes_max = 2097152): set journal.retention_bytes_max, lower \
         journal.segment_bytes_max, or give node.data_dir a larger filesystem",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn a_pair_without_retention_keys_keeps_journal_peer_copy_and_stream_within_their_shares() {
    const PAIR_FS_BYTES: u64 = 128 << 20;
    let mut t = Trio::new("defaults-pair");
    // Small segments; a checkpoint every 2 s, since the pair's stream retention is held at
    // the merger's last checkpoint (every 60 s by default: more than this disk at this rate).
    for n in [&t.a, &t.b] {
        let text = std::fs::read_to_string(&n.config).expect("config");
        std::fs::write(
            &n.config,
            format!(
                "{text}\n[journal]\nsegment_bytes_max = 262144\ncompression = \"none\"\n\n\
                 [stream]\nsegment_bytes_max = 262144\ncompression = \"none\"\n\n\
                 [merger]\ncheckpoint_interval_s = 2\n"
            ),
        )
        .expect("config");
    }
    let disks: Vec<Tmpfs> = [&t.a, &t.b]
        .iter()
        .map(|n| Tmpfs::mount(&n.data_dir(), "128m"))
        .collect();
    let act = t.start();
    let shares = [("journal", 20), ("peer", 20), ("stream", 40)];
    for name in ["a", "b"] {
        let d = t.node(name).status()["disk"].clone();
        assert_eq!(d["fs_bytes"], PAIR_FS_BYTES, "{name}: {d}");
        for (area, pct) in shares {
            let a = &d["areas"][area];
            assert_eq!(
                a["bytes_max"],
                PAIR_FS_BYTES * pct / 100,
                "{name} {area}: {d}"
            );
            assert_eq!(a["limit"], "default", "{name} {area}: {d}");
            assert_eq!(a["share_pct"], pct, "{name} {area}: {d}");
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let (peaks, watchers): (Vec<_>, Vec<_>) = disks.iter().map(|d| watch_peak(&d.0, &done)).unzip();
    // 1,000-byte messages to both nodes: ~53 MB in each journal and its copy, ~67 MB of
    // stream (~1,070 and ~1,340 bytes per message), each above its share; the three together
    // above the filesystem.
    let n = 50_000;
    let mut g = Command::new(BIN)
        .args([
            "gen",
            "--transport",
            "tcp",
            "--run-id",
            "pair",
            "--size",
            "1000",
        ])
        .args(["--count", &n.to_string(), "--rate", "1000"])
        .args(["--to", &format!("{}:5514", t.a.ip)])
        .args(["--to", &format!("{}:5514", t.b.ip)])
        .arg("--manifest")
        .arg(t.dir().join("m.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn twinrx gen");
    let st = wait_for(
        "the active's status to show hours of history for each area",
        Duration::from_secs(60),
        || {
            let st = t.node(act).status();
            shares
                .iter()
                .all(|(area, _)| st["disk"]["areas"][area]["hours"].as_f64().is_some())
                .then_some(st)
        },
    );
    let line = format!("[defaults-pair] {act} under load: {}", st["disk"]);
    note(&line);
    eprintln!("{line}");
    let text = String::from_utf8_lossy(
        &run(Command::new(BIN).args(["status", "--node", &t.node(act).admin])).stdout,
    )
    .into_owned();
    assert!(
        text.contains("  peer copy ") && text.contains("of 25.6 MiB (default, 20 %)"),
        "{text}"
    );
    assert!(text.contains("of 51.2 MiB (default, 40 %)"), "{text}");
    wait_child(&mut g, "gen", Duration::from_secs(180));
    for name in ["a", "b"] {
        t.wait_stream_end(name, n, Duration::from_secs(120));
    }
    // Within the limits after the next passes (the stream writer's every 5 s, the copy's
    // every 10 s).
    for name in ["a", "b"] {
        let node = t.node(name);
        let st = wait_for(
            &format!("{name}: journal, peer copy and stream within their limits"),
            Duration::from_secs(60),
            || {
                let st = node.status();
                let d = &st["disk"];
                shares
                    .iter()
                    .all(|(area, _)| {
                        d["areas"][area]["bytes"].as_u64() <= d["areas"][area]["bytes_max"].as_u64()
                    })
                    .then_some(st)
            },
        );
        assert_eq!(
            st["journal"]["append_errors"], 0,
            "{name}: {}",
            st["journal"]
        );
        assert!(
            st["journal"]["first_seq"].as_u64() > Some(1),
            "{name}: {}",
            st["journal"]
        );
        assert!(
            st["stream"]["first_offset"].as_u64() > Some(0),
            "{name}: {}",
            st["stream"]
        );
        assert!(
            st["disk"]["bytes"].as_u64() <= Some(PAIR_FS_BYTES * 80 / 100 + (4 << 20)),
            "{name}: {}",
            st["disk"]
        );
    }
    done.store(true, Relaxed);
    for w in watchers {
        w.join().expect("watcher");
    }
    let peaks: Vec<u64> = peaks.iter().map(|p| p.load(Relaxed)).collect();
    let line = format!(
        "[defaults-pair] peak use a {} b {} of {PAIR_FS_BYTES} bytes (budget {})",
        peaks[0],
        peaks[1],
        PAIR_FS_BYTES * 80 / 100
    );
    note(&line);
    eprintln!("{line}");
    // The budget plus what arrives between passes: the stream writer's every 5 s (and held at
    // the merger's last checkpoint), the copy's every 1 s; at ~3.4 MB/s into the three areas
    // together, about 8 MB measured (115 MB of 134).
    for (name, peak) in ["a", "b"].iter().zip(&peaks) {
        assert!(
            *peak <= PAIR_FS_BYTES * 80 / 100 + (16 << 20),
            "{name}: peak use {peak} bytes, more than the budget + 16 MiB"
        );
    }
}
