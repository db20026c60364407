//! End-to-end sinks: the built `twinrx` and a real Kafka-protocol broker (`noida-db`, installed
//! by `deploy/install-test-peers.sh`) on 127.0.0.1 with an ephemeral port and a fresh data dir
//! per test. The topic is read with rdkafka's consumer in `read_committed` mode, as the
//! monitoring pipeline would. Real signals: SIGKILL mid-batch, SIGSTOP/SIGCONT for fencing,
//! the broker stopped and restarted under load (F14).
//!
//! `bench_kafka_sink_vs_idempotent_producer` (ignored) is the benchmark of
//! docs/PERFORMANCE.md "Kafka sink".

mod common;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The noida-db server binary: `NOIDA_DB_BIN`, else the one inside the pip package (run
/// directly, not through its Python wrapper, so that signals reach the broker itself).
fn noida_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NOIDA_DB_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))",
        ])
        .output()
        .expect("python3 (to locate noida-db)");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && p.is_file(),
        "noida-db is not installed: run deploy/install-test-peers.sh (pip install noida-db==0.2.3)"
    );
    p
}

/// A free TCP port on 127.0.0.1 (bound, then released for the broker).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// A broker process we started; killed by PID on drop, even when the test fails.
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl Broker {
    fn start(scratch: &Path) -> Broker {
        let mut b = Broker {
            child: None,
            port: free_port(),
            dir: scratch.join("broker"),
            log: scratch.join("broker.log"),
        };
        std::fs::create_dir_all(&b.dir).expect("broker dir");
        b.spawn();
        b
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let child = Command::new(noida_bin())
            .arg("start")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--host", "127.0.0.1", "--only", "kafka", "--kafka-port"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn noida-db");
        self.child = Some(child);
        let addr = self.addr();
        wait_for("the broker's port", Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "broker exited at start ({st}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            TcpStream::connect(&addr).ok()
        });
        note(&format!("broker: up on {addr}"));
    }

    /// Stops the broker gracefully (SIGTERM; SIGKILL after 20 s) and waits for it.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        note("broker: SIGTERM");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            keep_evidence(&[Evidence::new("broker", &self.log, None)], None);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One record of the topic as a consumer sees it.
#[derive(Debug, Clone)]
struct Rec {
    header_offset: u64,
    header_epoch: u64,
    body: serde_json::Value,
}

/// Every committed record of `topic` (partitions `0..partitions`), read with
/// `read_committed` up to the end. Empty while the topic does not exist.
fn topic_records(brokers: &str, topic: &str, partitions: i32) -> Vec<Rec> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "twinrx-test-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("test consumer");
    let mut out = Vec::new();
    for p in 0..partitions {
        let Ok((low, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) else {
            return Vec::new();
        };
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "reading {topic}/{p} timed out");
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("consumer error: {e}"),
                Some(Ok(m)) => {
                    let h = m.headers().expect("record headers");
                    let get = |k: &str| -> u64 {
                        h.iter()
                            .find(|x| x.key == k)
                            .and_then(|x| x.value)
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|s| s.parse().ok())
                            .unwrap_or_else(|| panic!("header {k} missing"))
                    };
                    out.push(Rec {
                        header_offset: get("twinrx-offset"),
                        header_epoch: get("twinrx-epoch"),
                        body: serde_json::from_slice(m.payload().expect("payload"))
                            .expect("record body is a JSON entry"),
                    });
                }
            }
        }
    }
    out
}

/// Asserts the records are offsets 0..n, each once, in order, headers matching bodies, all
/// written in epoch 0 (a single node).
fn assert_exactly_once_in_order(recs: &[Rec], n: usize) {
    assert_offsets_once_in_order(recs, n);
    for r in recs {
        assert_eq!(r.header_epoch, 0, "single node: epoch 0");
    }
}

/// Asserts the records are offsets 0..n, each once, in order, headers matching bodies, with
/// epochs that never go down (a pair: each failover raises the epoch).
fn assert_offsets_once_in_order(recs: &[Rec], n: usize) {
    let offsets: Vec<u64> = recs.iter().map(|r| r.header_offset).collect();
    let mut dup = offsets.clone();
    dup.sort_unstable();
    dup.dedup();
    assert_eq!(
        dup.len(),
        offsets.len(),
        "duplicate offsets in the topic ({} records, {} distinct)",
        offsets.len(),
        dup.len()
    );
    assert_eq!(
        offsets,
        (0..n as u64).collect::<Vec<_>>(),
        "topic offsets are not 0..{n} in order"
    );
    for r in recs {
        assert_eq!(r.body["offset"].as_u64(), Some(r.header_offset), "{r:?}");
        assert_eq!(r.body["epoch"].as_u64(), Some(r.header_epoch), "{r:?}");
    }
    if let Some(w) = recs
        .windows(2)
        .find(|w| w[1].header_epoch < w[0].header_epoch)
    {
        panic!(
            "epoch goes down in the topic: offset {} has epoch {} after offset {} with epoch {}",
            w[1].header_offset, w[1].header_epoch, w[0].header_offset, w[0].header_epoch
        );
    }
}

fn kafka_sink_toml(brokers: &str, topic: &str, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"kafka\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
         timeout_ms = 5000\nretry_backoff_ms_min = 100\nretry_backoff_ms_max = 1000\n{extra}\n"
    )
}

fn sink_status(node: &TestNode, name: &str) -> serde_json::Value {
    let st = node.status();
    st["sinks"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no sink {name} in status: {st}"))
}

fn stream_len(node: &TestNode) -> u64 {
    node.status()["stream"]["next_offset"]
        .as_u64()
        .expect("stream.next_offset")
}

/// The stream's length once a single node has published everything its clients sent. The
/// caller has waited for the generator to exit, so: every TCP connection read to its end
/// (`connections_open` 0), everything read journaled (`journal.queued_bytes` 0), and every
/// journal record in the stream (a single node publishes each record once, in seq order:
/// src/node.rs), all in one status document. Messages sent while the node was down are lost
/// on TCP, which these tests do not count.
fn settled_len(node: &TestNode) -> u64 {
    let what = "the node to have read, journaled and published all it received";
    let mut last = serde_json::Value::Null;
    let settled = |st: &serde_json::Value| -> Option<u64> {
        let (journal, stream) = (&st["journal"], &st["stream"]["next_offset"]);
        (st["ha"].is_null()
            && st["receivers"]["syslog"]["connections_open"] == 0
            && journal["queued_bytes"] == 0
            && journal["first_seq"] == 1
            && journal["last_seq"] == *stream)
            .then(|| stream.as_u64())
            .flatten()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        last = try_status(node).unwrap_or(last);
        if let Some(n) = settled(&last) {
            note(&format!("{}: settled at {n} stream entries", node.label()));
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for {what}; last status: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the sink has delivered the whole stream and the stream holds `n` entries.
fn wait_drained(node: &TestNode, n: u64, timeout: Duration) {
    wait_for(
        &format!("the sink to deliver all {n} entries"),
        timeout,
        || {
            let s = sink_status(node, "kafka");
            (stream_len(node) == n && s["next_offset"].as_u64() == Some(n)).then_some(())
        },
    );
}

#[test]
fn kafka_single_node_delivers_every_entry_once_in_order() {
    let s = Scratch::new("ksingle");
    let broker = Broker::start(s.path());
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        &kafka_sink_toml(&broker.addr(), "twinrx", ""),
    );
    node.start();
    let n = 3000;
    let mut g = gen(&node, &s.path().join("m.json"), n, 5000, "single");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_drained(&node, n, Duration::from_secs(60));
    let recs = wait_for("all records in the topic", Duration::from_secs(30), || {
        let r = topic_records(&broker.addr(), "twinrx", 1);
        (r.len() >= n as usize).then_some(r)
    });
    assert_exactly_once_in_order(&recs, n as usize);
    // Every generated message is in the topic once: `twinrx check` on the topic's records.
    let dump = s.path().join("topic.ndjson");
    let text: String = recs.iter().map(|r| format!("{}\n", r.body)).collect();
    std::fs::write(&dump, text).expect("topic dump");
    let out = run(Command::new(BIN)
        .args(["check", "--manifest"])
        .arg(s.path().join("m.json"))
        .arg("--stream")
        .arg(&dump));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("sent {n}  present {n}  missing 0  duplicated 0")),
        "{report}"
    );
    // The record body is the stream entry itself.
    let stream = node.stream();
    for (r, e) in recs.iter().zip(&stream) {
        assert_eq!(&r.body, e);
    }
    let st = sink_status(&node, "kafka");
    assert_eq!(st["state"], "delivering", "{st}");
    assert_eq!(st["lag_entries"], 0, "{st}");
    assert_eq!(st["delivered_offset"], n - 1, "{st}");
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    assert!(
        metrics.contains("twinrx_sink_lag_entries{sink=\"kafka\",type=\"kafka\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "twinrx_sink_delivered_entries_total{{sink=\"kafka\",type=\"kafka\"}} {n}"
        )),
        "{metrics}"
    );
}

#[test]
fn kafka_forwarder_sigkilled_mid_batch_then_restarted_delivers_each_offset_exactly_once() {
    let s = Scratch::new("kkill");
    let broker = Broker::start(s.path());
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        &kafka_sink_toml(
            &broker.addr(),
            "twinrx",
            "batch_records_max = 500\nlinger_ms = 20",
        ),
    );
    node.start();
    let n = 20_000;
    let mut g = gen(&node, &s.path().join("m.json"), n, 8000, "kill");
    // Kill twice while the sink is delivering (transactions open most of the time).
    for (i, at) in [2000u64, 8000].into_iter().enumerate() {
        wait_for(
            &format!("{at} entries delivered before kill {i}"),
            Duration::from_secs(60),
            || {
                let s = sink_status(&node, "kafka");
                (s["next_offset"].as_u64() >= Some(at)).then_some(())
            },
        );
        node.kill9();
        node.start();
    }
    wait_child(&mut g, "gen", Duration::from_secs(120));
    let total = settled_len(&node);
    wait_drained(&node, total, Duration::from_secs(120));
    let recs = topic_records(&broker.addr(), "twinrx", 1);
    assert_exactly_once_in_order(&recs, total as usize);
    let log = node.log_text();
    assert!(
        log.matches("sink resumes").count() >= 3,
        "expected a resume per start:\n{log}"
    );
}

#[test]
fn kafka_broker_stopped_under_load_then_restarted_catches_up_exactly_once_in_order() {
    let s = Scratch::new("kdown");
    let mut broker = Broker::start(s.path());
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        &kafka_sink_toml(&broker.addr(), "twinrx", "batch_records_max = 1000"),
    );
    node.start();
    let n = 24_000;
    let mut g = gen(&node, &s.path().join("m.json"), n, 3000, "down");
    wait_for("2000 delivered", Duration::from_secs(60), || {
        (sink_status(&node, "kafka")["next_offset"].as_u64() >= Some(2000)).then_some(())
    });
    broker.stop();
    // F14: the stream keeps growing on disk; the sink reports its lag and retries.
    let lagging = wait_for(
        "the sink to retry with a lag of 6000+",
        Duration::from_secs(60),
        || {
            // One status document: its sink entry and its problems agree.
            let st = node.status();
            let sink = st["sinks"][0].clone();
            (sink["state"] == "retrying" && sink["lag_entries"].as_u64() >= Some(6000))
                .then_some((st, sink))
        },
    );
    assert_eq!(lagging.0["healthy"], false, "{}", lagging.0);
    assert!(
        lagging.0["problems"].as_array().is_some_and(|p| p
            .iter()
            .any(|x| x.as_str().is_some_and(|t| t.contains("sink kafka")))),
        "{}",
        lagging.0
    );
    assert!(lagging.1["errors"].as_u64() >= Some(1), "{}", lagging.1);
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    assert!(
        metrics.contains("twinrx_sink_up{sink=\"kafka\",type=\"kafka\"} 0"),
        "{metrics}"
    );
    broker.spawn();
    wait_child(&mut g, "gen", Duration::from_secs(120));
    wait_drained(&node, n, Duration::from_secs(120));
    let sink = sink_status(&node, "kafka");
    assert_eq!(sink["lag_entries"], 0, "{sink}");
    assert_eq!(sink["state"], "delivering", "{sink}");
    let recs = topic_records(&broker.addr(), "twinrx", 1);
    assert_exactly_once_in_order(&recs, n as usize);
}

/// Issue #14: a sink whose broker stays down holds the stream's retention only up to
/// `[stream] hold_bytes_max`. Receiving goes on; retention deletes the oldest entries the sink
/// never delivered; back up, the sink records the gap (status, metric, log) and delivers on
/// from the first retained offset, each entry once, in order.
#[test]
fn kafka_broker_stopped_past_hold_bytes_max_the_sink_records_the_gap_and_goes_on() {
    let s = Scratch::new("khold");
    let mut broker = Broker::start(s.path());
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        &format!(
            "[stream]\nsegment_bytes_max = 65536\ncompression = \"none\"\nretention_bytes_max = 262144\n\
             hold_bytes_max = 131072\n\n{}",
            kafka_sink_toml(&broker.addr(), "twinrx", "")
        ),
    );
    node.start();
    let mut g = gen(&node, &s.path().join("m1.json"), 200, 1000, "hold1");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_drained(&node, 200, Duration::from_secs(60));
    broker.stop();
    let n = 4000;
    let mut g = gen(&node, &s.path().join("m2.json"), n - 200, 4000, "hold2");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    // Receiving never stopped for the sink, and retention went past what it delivered.
    wait_for(
        "the stream to hold every message",
        Duration::from_secs(60),
        || (stream_len(&node) == n).then_some(()),
    );
    // Retention runs again within a pass interval (250 ms) of the stream going over its
    // limit: the last batches may have left it over when the stream reached its end.
    let mut last = serde_json::Value::Null;
    let first = wait_for(
        "stream retention to delete what the sink never delivered and bring the stream \
         within its retention (retention_bytes_max + one segment)",
        Duration::from_secs(40),
        || {
            last = node.status()["stream"].clone();
            let first = last["first_offset"].as_u64().filter(|f| *f > 200)?;
            (last["bytes"].as_u64()? <= 262_144 + 65_536).then_some(first)
        },
    );
    eprintln!("the stream after retention: {last}");
    let st = node.status();
    assert!(
        st["problems"].to_string().contains("sink kafka:")
            && st["problems"].to_string().contains("offsets 200..="),
        "{}",
        st["problems"]
    );
    broker.spawn();
    wait_drained(&node, n, Duration::from_secs(120));
    let recs = topic_records(&broker.addr(), "twinrx", 1);
    let offsets: Vec<u64> = recs.iter().map(|r| r.header_offset).collect();
    let (lost_from, resumed) = assert_one_gap(&offsets, 200, first, n);
    let gap = resumed - lost_from;
    let sink = sink_status(&node, "kafka");
    assert_eq!(sink["gap_entries"].as_u64(), Some(gap), "{sink}");
    assert!(
        sink["last_gap"]
            .as_str()
            .is_some_and(|g| g.contains(&format!("offsets {lost_from}..={}", resumed - 1))),
        "{sink}"
    );
    let metrics = get_text(&format!("{}/metrics", node.admin)).expect("metrics");
    assert!(
        metrics.contains(&format!(
            "twinrx_sink_gap_entries_total{{sink=\"kafka\",type=\"kafka\"}} {gap}"
        )),
        "gap metric"
    );
    assert!(
        node.log_text().contains("sink gap"),
        "the log names the gap"
    );
}

#[test]
fn kafka_fencing_paused_older_forwarder_is_rejected_and_the_topic_has_no_duplicate() {
    let s = Scratch::new("kfence");
    let broker = Broker::start(s.path());
    // Same sink config (same pair and sink name, so the same transactional.id) on two nodes.
    let sink = kafka_sink_toml(
        &broker.addr(),
        "twinrx",
        "batch_records_max = 100\nlinger_ms = 20",
    );
    let mut old = TestNode::new(&s.path().join("old"), "", &sink);
    let mut new = TestNode::new(&s.path().join("new"), "", &sink);
    old.start();
    let mut g_old = gen(&old, &s.path().join("old.json"), 4000, 2000, "old");
    wait_for(
        "the old forwarder delivering",
        Duration::from_secs(60),
        || (sink_status(&old, "kafka")["next_offset"].as_u64() >= Some(500)).then_some(()),
    );
    // F4: the old forwarder hangs, maybe mid-transaction.
    old.signal(nix::sys::signal::Signal::SIGSTOP);
    let held = topic_records(&broker.addr(), "twinrx", 1).len() as u64;
    new.start();
    let total = held + 3000;
    let mut g_new = gen(&new, &s.path().join("new.json"), total + 500, 5000, "new");
    wait_child(&mut g_new, "gen to the new node", Duration::from_secs(120));
    let new_len = settled_len(&new);
    wait_for(
        "the new forwarder to catch up",
        Duration::from_secs(120),
        || (sink_status(&new, "kafka")["next_offset"].as_u64() == Some(new_len)).then_some(()),
    );
    // The old one wakes up with entries to deliver: the broker rejects it.
    old.signal(nix::sys::signal::Signal::SIGCONT);
    wait_child(&mut g_old, "gen to the old node", Duration::from_secs(120));
    let st = wait_for(
        "the old forwarder to notice it is fenced",
        Duration::from_secs(60),
        || {
            let s = sink_status(&old, "kafka");
            (s["state"] == "fenced").then_some(s)
        },
    );
    eprintln!("old forwarder after SIGCONT: {st}");
    assert!(st["fenced"].as_u64() >= Some(1), "{st}");
    assert!(old.log_text().contains("sink fenced"), "{}", old.log_text());
    let old_status = old.status();
    assert_eq!(old_status["healthy"], false, "{old_status}");
    let metrics = get_text(&format!("{}/metrics", old.admin)).expect("metrics");
    assert!(
        metrics.contains("twinrx_sink_fenced_total{sink=\"kafka\",type=\"kafka\"} 1"),
        "{metrics}"
    );
    // The old node keeps receiving; whatever it has, the topic gets none of it.
    let old_stream = old.stream();
    let new_stream = new.stream();
    assert!(
        old_stream.len() as u64
            > sink_status(&old, "kafka")["next_offset"]
                .as_u64()
                .unwrap_or(0)
    );
    let recs = topic_records(&broker.addr(), "twinrx", 1);
    assert_exactly_once_in_order(&recs, new_stream.len());
    // A prefix from the old forwarder, then only the new one's entries.
    let cut = recs
        .iter()
        .position(|r| old_stream.get(r.header_offset as usize) != Some(&r.body))
        .unwrap_or(recs.len());
    assert!(
        cut as u64 >= held,
        "the old forwarder's committed records stay"
    );
    for r in &recs[cut..] {
        assert_eq!(
            Some(&r.body),
            new_stream.get(r.header_offset as usize),
            "record {} is not the new forwarder's",
            r.header_offset
        );
    }
    assert!(
        recs.len() > cut,
        "the new forwarder delivered after the old one"
    );
}

#[test]
fn kafka_three_partitions_resume_from_the_highest_offset_of_all_partitions() {
    let s = Scratch::new("kparts");
    let broker = Broker::start(s.path());
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        &kafka_sink_toml(
            &broker.addr(),
            "parts",
            "partitions = 3\nbatch_records_max = 300",
        ),
    );
    node.start();
    let mut g = gen(&node, &s.path().join("m.json"), 9000, 6000, "parts");
    wait_for("1500 delivered", Duration::from_secs(60), || {
        (sink_status(&node, "kafka")["next_offset"].as_u64() >= Some(1500)).then_some(())
    });
    node.kill9();
    node.start();
    wait_child(&mut g, "gen", Duration::from_secs(60));
    let n = settled_len(&node);
    wait_drained(&node, n, Duration::from_secs(60));
    let recs = topic_records(&broker.addr(), "parts", 3);
    let mut offsets: Vec<u64> = recs.iter().map(|r| r.header_offset).collect();
    // Each partition in order; offset o in partition o % 3.
    for p in 0..3u64 {
        let mine: Vec<u64> = offsets.iter().copied().filter(|o| o % 3 == p).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "partition {p} out of order"
        );
    }
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (0..n).collect::<Vec<_>>(),
        "each offset once over all partitions"
    );
}

/// The entries of the file sink's files, oldest first, and the rotated files that exist
/// (`path.N` .. `path.1`; the current `path` may be missing: a crash inside a rotation).
fn file_lines(path: &Path, keep: usize) -> (Vec<serde_json::Value>, Vec<PathBuf>) {
    let rotated: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|i| PathBuf::from(format!("{}.{i}", path.display())))
        .filter(|p| p.exists())
        .collect();
    let mut files = rotated.clone();
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for l in text.lines() {
            out.push(serde_json::from_str(l).expect("file line is a JSON entry"));
        }
    }
    (out, rotated)
}

#[test]
fn file_sink_delivers_once_in_order_resumes_after_sigkill_and_rotates() {
    let s = Scratch::new("file");
    let out = s.path().join("out").join("stream.ndjson");
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        &format!(
            "[[sink]]\nname = \"file\"\ntype = \"file\"\npath = \"{}\"\nrotate_bytes_max = 200000\nkeep_files = 1000\nbatch_records_max = 200\n",
            out.display()
        ),
    );
    node.start();
    let n = 12_000;
    let mut g = gen(&node, &s.path().join("m.json"), n, 6000, "file");
    wait_for("2000 lines written", Duration::from_secs(60), || {
        (sink_status(&node, "file")["next_offset"].as_u64() >= Some(2000)).then_some(())
    });
    node.kill9();
    // A write cut short by the crash: a torn last line, cut on restart. The kill may land in
    // a rotation after `path` was renamed to `path.1` and before the new `path` was created
    // (src/sink/file.rs: the sink then resumes from the newest rotated file); the torn write
    // then went to the newly created file, so create it as the sink would have.
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .expect("sink file");
        f.write_all(b"{\"v\":1,\"offset\":").expect("torn line");
    }
    node.start();
    wait_child(&mut g, "gen", Duration::from_secs(120));
    let n = settled_len(&node);
    wait_for("the file sink to drain", Duration::from_secs(60), || {
        let st = sink_status(&node, "file");
        (st["next_offset"].as_u64() == Some(n)).then_some(())
    });
    assert!(node.log_text().contains("torn last line truncated"));
    let (lines, rotated) = file_lines(&out, 1000);
    let offsets: Vec<u64> = lines
        .iter()
        .map(|l| l["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(
        offsets,
        (0..n).collect::<Vec<_>>(),
        "file offsets are not 0..{n} once each in order"
    );
    assert_eq!(
        lines,
        node.stream(),
        "the files hold the stream entries as they are"
    );
    assert!(
        rotated.len() >= 5,
        "expected rotations, got {} rotated files",
        rotated.len()
    );
    for f in &rotated {
        let len = std::fs::metadata(f).expect("rotated").len();
        assert!(
            (200_000..400_000).contains(&len),
            "rotated file {} has {len} bytes",
            f.display()
        );
    }
    // keep_files bounds the rotated files: restart with keep_files = 2 and rotate once more.
    node.kill9();
    let cfg = std::fs::read_to_string(&node.config).expect("config");
    std::fs::write(
        &node.config,
        cfg.replace("keep_files = 1000", "keep_files = 2"),
    )
    .expect("config");
    node.start();
    let mut g = gen(&node, &s.path().join("m2.json"), 2000, 5000, "file2");
    wait_child(&mut g, "gen", Duration::from_secs(60));
    wait_for(
        "rotation with keep_files = 2",
        Duration::from_secs(60),
        || {
            let st = sink_status(&node, "file");
            let n = stream_len(&node);
            (st["next_offset"].as_u64() == Some(n)
                && !Path::new(&format!("{}.3", out.display())).exists())
            .then_some(())
        },
    );
}

/// Starts `node` with its standard output appended to `out` (the stdout sink's target).
fn start_with_stdout(node: &mut TestNode, out: &Path) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .expect("node log");
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .expect("stdout file");
    node.child = Some(
        Command::new(BIN)
            .args(["node", "--config"])
            .arg(&node.config)
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("spawn twinrx node"),
    );
    let admin = node.admin.clone();
    wait_for("the node's admin API", Duration::from_secs(20), || {
        get_json(&format!("{admin}/status"))
    });
}

#[test]
fn stdout_sink_to_a_file_resumes_after_sigkill_without_duplicate() {
    let s = Scratch::new("stdout");
    let out = s.path().join("stdout.ndjson");
    let mut node = TestNode::new(
        &s.path().join("a"),
        "",
        "[[sink]]\nname = \"out\"\ntype = \"stdout\"\nstart_at = \"start\"\nbatch_records_max = 100\n",
    );
    start_with_stdout(&mut node, &out);
    let mut g = gen(&node, &s.path().join("m.json"), 6000, 4000, "stdout");
    wait_for("1000 lines on stdout", Duration::from_secs(60), || {
        (sink_status(&node, "out")["next_offset"].as_u64() >= Some(1000)).then_some(())
    });
    node.kill9();
    start_with_stdout(&mut node, &out);
    wait_child(&mut g, "gen", Duration::from_secs(60));
    let n = settled_len(&node);
    wait_for("the stdout sink to drain", Duration::from_secs(60), || {
        (sink_status(&node, "out")["next_offset"].as_u64() == Some(n)).then_some(())
    });
    let text = std::fs::read_to_string(&out).expect("stdout file");
    let offsets: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["offset"]
                .as_u64()
                .expect("offset")
        })
        .collect();
    assert_eq!(
        offsets,
        (0..n).collect::<Vec<_>>(),
        "stdout offsets are not 0..{n} once each in order"
    );
}

/// Benchmark (docs/PERFORMANCE.md "Kafka sink"): records/s from the stream into the broker
/// through the sink (transactions of `batch_records_max`), against rdkafka's idempotent
/// producer writing the same entry lines straight to the same broker in the same run.
/// `cargo test --release --test sink_e2e -- --ignored --nocapture bench_kafka_sink`
#[test]
#[ignore]
fn bench_kafka_sink_vs_idempotent_producer() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
    let n: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // Extra sink keys, e.g. BENCH_SINK="batch_records_max = 5000".
    let extra = std::env::var("BENCH_SINK").unwrap_or_default();
    let s = Scratch::new("kbench");
    let broker = Broker::start(s.path());
    // 1. Fill the stream with the sink off.
    let mut node = TestNode::new(&s.path().join("a"), "", "");
    node.start();
    let mut g = gen(&node, &s.path().join("m.json"), n, 50_000, "bench");
    wait_child(&mut g, "gen", Duration::from_secs(600));
    wait_for(
        "the stream to hold every message",
        Duration::from_secs(120),
        || (stream_len(&node) == n).then_some(()),
    );
    let lines: Vec<Vec<u8>> = get_text(&format!("{}/stream?from=0", node.admin))
        .expect("stream")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    node.kill9();
    // 2. Baseline: rdkafka's idempotent producer, same lines, same headers, no transactions.
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let t0 = Instant::now();
    for (i, l) in lines.iter().enumerate() {
        let off = i.to_string();
        let h = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "twinrx-offset",
                value: Some(off.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "twinrx-epoch",
                value: Some("0"),
            });
        let mut rec = BaseRecord::to("baseline")
            .partition(0)
            .key(off.as_str())
            .payload(l.as_slice())
            .headers(h);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let base_s = t0.elapsed().as_secs_f64();
    // 3. The sink: restart the node with a Kafka sink and time the drain.
    let cfg = std::fs::read_to_string(&node.config).expect("config");
    std::fs::write(
        &node.config,
        format!(
            "{cfg}\n{}",
            kafka_sink_toml(&broker.addr(), "twinrx", &extra)
        ),
    )
    .expect("config");
    node.start();
    // Timed from the moment the sink has read the (empty) topic back and delivers.
    let (t0, from) = wait_for("the sink to open", Duration::from_secs(60), || {
        let s = sink_status(&node, "kafka");
        (s["state"] == "delivering")
            .then(|| (Instant::now(), s["next_offset"].as_u64().unwrap_or(0)))
    });
    wait_for("the sink to drain", Duration::from_secs(600), || {
        (sink_status(&node, "kafka")["next_offset"].as_u64() == Some(n)).then_some(())
    });
    let sink_s = t0.elapsed().as_secs_f64();
    let sink_n = n - from;
    let recs = topic_records(&broker.addr(), "twinrx", 1);
    assert_exactly_once_in_order(&recs, n as usize);
    println!(
        "BENCH records={n} avg_entry_bytes={} idempotent_producer={:.0}/s ({base_s:.2}s) sink_transactional={:.0}/s ({sink_n} in {sink_s:.2}s, sink keys [{extra}]) ratio={:.2}",
        bytes / n as usize,
        n as f64 / base_s,
        sink_n as f64 / sink_s,
        (sink_n as f64 / sink_s) / (n as f64 / base_s)
    );
}

// ----- The Kafka sink in a pair: failover (F1) and a hung active (F4) under load -----------
//
// A local trio helper (witness + node a + node b on their own loopback addresses, the same
// `[[sink]]` on both nodes, so the same transactional id): tests/common has none yet.

/// `twinrx witness` and the two nodes of a pair. Every process is killed by PID on drop
/// (the nodes by `TestNode`'s own drop; SIGKILL also ends a SIGSTOPped node).
struct Trio {
    witness: Option<Child>,
    witness_log: PathBuf,
    witness_admin: String,
    nodes: [TestNode; 2],
}

impl Trio {
    /// Starts the witness, then nodes a and b with `[pair]`, `[ha] witness` and `sink`.
    fn start(scratch: &Path, sink: &str) -> Trio {
        let wip = common::unique_ip();
        let wdir = scratch.join("witness");
        std::fs::create_dir_all(&wdir).expect("witness dir");
        let keys = scratch.join("keys");
        common::write_keys(&keys);
        let wcfg = wdir.join("witness.toml");
        std::fs::write(
            &wcfg,
            format!(
                "listen = \"{wip}:7402\"\nadmin_listen = \"{wip}:7403\"\n\
                 data_dir = \"data\"\n{}",
                common::creds(&keys, "witness")
            ),
        )
        .expect("witness config");
        let witness_log = wdir.join("witness.log");
        let log = std::fs::File::create(&witness_log).expect("witness log");
        let mut witness = Command::new(BIN)
            .args(["witness", "--config"])
            .arg(&wcfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn twinrx witness");
        wait_for("the witness's admin API", Duration::from_secs(20), || {
            if let Ok(Some(st)) = witness.try_wait() {
                panic!(
                    "witness exited at start ({st}): {}",
                    std::fs::read_to_string(&witness_log).unwrap_or_default()
                );
            }
            get_json(&format!("http://{wip}:7403/status"))
        });
        let mut a = TestNode::new(&scratch.join("a"), "", "");
        let mut b = TestNode::new(&scratch.join("b"), "", "");
        let pair = |name: &str| {
            format!(
                "[pair]\npeer = [\"{ip}:7400\"]\nlisten = [\"{ip}:7400\"]\n{}\n\
                 [ha]\nwitness = \"{wip}:7402\"\n\n{sink}",
                common::creds(&keys, name),
                ip = b.ip
            )
        };
        for (node, name) in [(&a, "a"), (&b, "b")] {
            let pair = pair(name);
            let cfg = std::fs::read_to_string(&node.config).expect("config");
            let cfg = cfg.replace("name = \"a\"", &format!("name = \"{name}\""));
            std::fs::write(&node.config, format!("{cfg}\n{pair}")).expect("config");
        }
        a.start();
        b.start();
        Trio {
            witness: Some(witness),
            witness_log,
            witness_admin: format!("http://{wip}:7403"),
            nodes: [a, b],
        }
    }

    /// Waits until the pair is redundant (one active, one standby, both say so) and returns
    /// the index of the active.
    fn wait_redundant(&self, timeout: Duration) -> usize {
        wait_for("the pair to be redundant", timeout, || {
            let st: Vec<serde_json::Value> =
                self.nodes.iter().map(try_status).collect::<Option<_>>()?;
            let roles: Vec<&str> = st
                .iter()
                .map(|s| s["ha"]["role"].as_str().unwrap_or(""))
                .collect();
            let red = st.iter().all(|s| s["ha"]["redundant"] == true);
            match roles[..] {
                ["active", "standby"] if red => Some(0),
                ["standby", "active"] if red => Some(1),
                _ => None,
            }
        })
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The nodes keep their own evidence when they drop, after this.
            let admin = self
                .witness
                .is_some()
                .then_some(self.witness_admin.as_str());
            keep_evidence(&[Evidence::new("witness", &self.witness_log, admin)], None);
        }
        if let Some(mut c) = self.witness.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The node's status, or None while it does not answer (killed, restarting). Never call it
/// on a SIGSTOPped node (the request would wait for the client's timeout).
fn try_status(node: &TestNode) -> Option<serde_json::Value> {
    get_json(&format!("{}/status", node.admin))
}

fn ha_role(st: &serde_json::Value) -> &str {
    st["ha"]["role"].as_str().unwrap_or("")
}

fn publishes(st: &serde_json::Value) -> bool {
    matches!(ha_role(st), "active" | "solo")
}

fn kafka_of(st: &serde_json::Value) -> serde_json::Value {
    st["sinks"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "kafka").cloned())
        .unwrap_or_else(|| panic!("no kafka sink in status: {st}"))
}

/// `twinrx gen` sending every message to each node (devices send to both addresses).
fn gen_both(
    nodes: &[TestNode; 2],
    transport: &str,
    manifest: &Path,
    count: u64,
    rate: u64,
    run_id: &str,
) -> Child {
    Command::new(BIN)
        .args(["gen", "--transport", transport, "--run-id", run_id])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--to", &format!("{}:5514", nodes[0].ip)])
        .args(["--to", &format!("{}:5514", nodes[1].ip)])
        .arg("--manifest")
        .arg(manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn twinrx gen")
}

/// The active's stream length once it holds an entry for each of the `sent` messages (the
/// generator has exited; it sent each message to both nodes, and the tests then require each
/// one once in the stream, so nothing else can come).
fn pair_settled_len(active: &TestNode, sent: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = try_status(active).unwrap_or_default();
        let n = st["stream"]["next_offset"].as_u64().unwrap_or(0);
        if n >= sent {
            note(&format!("{}: stream holds {n} entries", active.label()));
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for the active's stream to hold the {sent} messages sent: {n} entries; stream {} ha {}",
            st["stream"],
            st["ha"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The topic after the pair has settled: the active's whole stream delivered, the topic
/// holding as many records as the stream. Asserts each offset once, in order, each record
/// the stream entry itself, epochs never going down. Returns (records, stream dump path).
fn settled_topic(
    broker: &Broker,
    active: &TestNode,
    sent: u64,
    dir: &Path,
) -> (Vec<Rec>, Vec<serde_json::Value>, PathBuf) {
    let n = pair_settled_len(active, sent);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let k = kafka_of(&active.status());
        if stream_len(active) == n && k["next_offset"].as_u64() == Some(n) {
            break;
        }
        if Instant::now() > deadline {
            // Say why: the sink's state and error, and the largest entries of the stream.
            let text = get_text(&format!("{}/stream?from=0", active.admin)).unwrap_or_default();
            let mut big: Vec<(usize, usize, String)> = text
                .lines()
                .enumerate()
                .map(|(i, l)| (l.len(), i, l.chars().take(400).collect()))
                .collect();
            big.sort_unstable_by(|a, b| b.cmp(a));
            big.truncate(3);
            panic!("the sink did not deliver all {n} entries in 120 s: {k}\nlargest entries (bytes, offset, head): {big:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = get_text(&format!("{}/stream?from=0", active.admin)).expect("stream dump");
    let dump = dir.join("stream.ndjson");
    std::fs::write(&dump, &text).expect("write stream dump");
    let stream: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("stream line is JSON"))
        .collect();
    assert_eq!(
        stream.len() as u64,
        n,
        "the stream dump holds the whole stream"
    );
    let recs = wait_for(
        &format!("{n} records in the topic"),
        Duration::from_secs(60),
        || {
            let r = topic_records(&broker.addr(), "twinrx", 1);
            (r.len() >= n as usize).then_some(r)
        },
    );
    assert_eq!(
        recs.len(),
        stream.len(),
        "the topic holds as many records as the stream"
    );
    assert_offsets_once_in_order(&recs, stream.len());
    for (r, e) in recs.iter().zip(&stream) {
        assert_eq!(
            &r.body, e,
            "topic record {} is not the stream entry",
            r.header_offset
        );
    }
    (recs, stream, dump)
}

/// `twinrx check` on a stream dump: exits 0, and every generated message is there once.
fn check_dump(manifest: &Path, dump: &Path, sent: u64) {
    let out = run(Command::new(BIN)
        .args(["check", "--manifest"])
        .arg(manifest)
        .arg("--stream")
        .arg(dump));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "sent {sent}  present {sent}  missing 0  duplicated 0"
        )),
        "{report}"
    );
}

/// Records per epoch in the topic, in order: [(epoch, count)].
fn epochs_in(recs: &[Rec]) -> Vec<(u64, usize)> {
    let mut out: Vec<(u64, usize)> = Vec::new();
    for r in recs {
        match out.last_mut() {
            Some((e, c)) if *e == r.header_epoch => *c += 1,
            _ => out.push((r.header_epoch, 1)),
        }
    }
    out
}

/// Waits until one node is active with its peer in standby (a redundant pair) and its sink has
/// delivered up to `at`; returns that node's index and its sink's next offset.
fn fault_target(t: &Trio, at: u64) -> (usize, u64) {
    wait_for(
        &format!("a redundant pair whose active has delivered {at} entries"),
        Duration::from_secs(60),
        || {
            let st: Vec<serde_json::Value> =
                t.nodes.iter().map(try_status).collect::<Option<_>>()?;
            let i = st.iter().position(|s| ha_role(s) == "active")?;
            let next = kafka_of(&st[i])["next_offset"].as_u64()?;
            (ha_role(&st[1 - i]) == "standby"
                && st[i]["ha"]["redundant"] == true
                && kafka_of(&st[i])["state"] == "delivering"
                && next >= at)
                .then_some((i, next))
        },
    )
}

const PAIR_SINK_EXTRA: &str = "batch_records_max = 500\nlinger_ms = 20";

#[test]
fn kafka_pair_failover_under_load_topic_holds_every_entry_once() {
    let s = Scratch::new("kpairkill");
    let broker = Broker::start(s.path());
    let mut t = Trio::start(
        s.path(),
        &kafka_sink_toml(&broker.addr(), "twinrx", PAIR_SINK_EXTRA),
    );
    let act = t.wait_redundant(Duration::from_secs(60));
    let stb = 1 - act;
    // Only the active delivers; the standby's sink waits.
    wait_for(
        "the active's sink delivering, the standby's waiting",
        Duration::from_secs(30),
        || {
            let a = kafka_of(&t.nodes[act].status());
            let b = kafka_of(&t.nodes[stb].status());
            (a["state"] == "delivering" && b["state"] == "standby").then_some(())
        },
    );
    let epoch_before = t.nodes[act].status()["ha"]["epoch"]
        .as_u64()
        .expect("ha.epoch");
    let manifest = s.path().join("m.json");
    let n = 20_000;
    let mut g = gen_both(&t.nodes, "tcp", &manifest, n, 3500, "pairkill");
    // The node active at that moment (the pair may have switched under load: see the report).
    let (act, killed_at) = fault_target(&t, 5000);
    let stb = 1 - act;
    // F1 under load: the active is powered off.
    let t0 = Instant::now();
    t.nodes[act].kill9();
    let failover = wait_for("the standby to take over", Duration::from_secs(30), || {
        let st = try_status(&t.nodes[stb])?;
        publishes(&st).then(|| t0.elapsed())
    });
    let resumed = wait_for(
        "the new active's sink to deliver",
        Duration::from_secs(60),
        || {
            let k = kafka_of(&try_status(&t.nodes[stb])?);
            (k["state"] == "delivering" && k["next_offset"].as_u64() > Some(killed_at))
                .then(|| t0.elapsed())
        },
    );
    wait_child(&mut g, "gen", Duration::from_secs(120));
    // F3: the killed node comes back with its data dir and rejoins as standby.
    t.nodes[act].start();
    // Whichever node is active once the pair is redundant again (the rejoin may cost another
    // failover: see the report), the topic must hold the stream exactly once.
    let act2 = t.wait_redundant(Duration::from_secs(120));
    let new_active = &t.nodes[act2];
    let epoch_after = new_active.status()["ha"]["epoch"]
        .as_u64()
        .expect("ha.epoch");
    assert!(
        epoch_after > epoch_before,
        "failover raises the epoch ({epoch_before} -> {epoch_after})"
    );
    assert_eq!(
        kafka_of(&t.nodes[1 - act2].status())["state"],
        "standby",
        "the standby's sink waits"
    );
    let (recs, _stream, dump) = settled_topic(&broker, new_active, n, s.path());
    let epochs = epochs_in(&recs);
    assert!(
        epochs.len() >= 2 && epochs.last().unwrap().0 == epoch_after,
        "the topic holds entries of the first epoch and then the new active's epoch: {epochs:?}"
    );
    check_dump(&manifest, &dump, n);
    // The same check on what the monitoring pipeline reads: the topic itself.
    let topic_dump = s.path().join("topic.ndjson");
    let text: String = recs.iter().map(|r| format!("{}\n", r.body)).collect();
    std::fs::write(&topic_dump, text).expect("topic dump");
    check_dump(&manifest, &topic_dump, n);
    eprintln!(
        "FIGURES pair SIGKILL: records={} killed_at_offset={killed_at} failover_ms={} \
         new_sink_delivering_ms={} epochs(epoch,records)={epochs:?} active_at_end={} killed={}",
        recs.len(),
        failover.as_millis(),
        resumed.as_millis(),
        ["a", "b"][act2],
        ["a", "b"][act],
    );
}

#[test]
fn kafka_pair_sigstopped_old_active_is_fenced_and_writes_nothing() {
    use nix::sys::signal::Signal;
    let s = Scratch::new("kpairstop");
    let broker = Broker::start(s.path());
    let t = Trio::start(
        s.path(),
        &kafka_sink_toml(&broker.addr(), "twinrx", PAIR_SINK_EXTRA),
    );
    let old = t.wait_redundant(Duration::from_secs(60));
    wait_for(
        "the active's sink delivering",
        Duration::from_secs(30),
        || (kafka_of(&t.nodes[old].status())["state"] == "delivering").then_some(()),
    );
    let manifest = s.path().join("m.json");
    let n = 20_000;
    // UDP, as most devices send: the hung node's socket fills and drops, the sender never
    // blocks, so the new active keeps receiving at full rate while the old one is stopped.
    let mut g = gen_both(&t.nodes, "udp", &manifest, n, 3500, "pairstop");
    // The node active at that moment (the pair may have switched under load: see the report).
    let (old, _) = fault_target(&t, 4000);
    let new = 1 - old;
    let before = t.nodes[old].status();
    let epoch_old = before["ha"]["epoch"].as_u64().expect("ha.epoch");
    // F4 under load: the active hangs, maybe in the middle of a transaction.
    let t0 = Instant::now();
    t.nodes[old].signal(Signal::SIGSTOP);
    let failover = wait_for("the standby to take over", Duration::from_secs(30), || {
        publishes(&try_status(&t.nodes[new])?).then(|| t0.elapsed())
    });
    // Stay stopped ~3 s (longer than the failover) and until the new active's sink delivers.
    let new_epoch_delivering = wait_for(
        "the new active's sink to deliver, 3 s after SIGSTOP",
        Duration::from_secs(60),
        || {
            let st = try_status(&t.nodes[new])?;
            let k = kafka_of(&st);
            (t0.elapsed() >= Duration::from_secs(3)
                && k["state"] == "delivering"
                && k["epoch"].as_u64() > Some(epoch_old))
            .then_some(k)
        },
    );
    let stopped_for = t0.elapsed();
    t.nodes[old].signal(Signal::SIGCONT);
    let woken_at = Instant::now();
    // The old active wakes up: its lease lapsed, so it publishes nothing from the first moment
    // (checked on every status read); within about a heartbeat interval it hears the peer's
    // higher epoch and follows it; its sink waits (or was fenced by the broker when it tried
    // to finish the transaction it was in). The first status after the wake may predate the
    // first heartbeat it hears: the wait is for the deposed state, not for that moment.
    let woke = wait_for(
        "the old active to follow the new epoch, publishing nothing",
        Duration::from_secs(30),
        || {
            let st = try_status(&t.nodes[old])?;
            assert!(!publishes(&st), "the woken old active publishes: {st}");
            let k = kafka_of(&st);
            (st["ha"]["epoch"].as_u64() > Some(epoch_old)
                && (k["state"] == "standby" || k["state"] == "fenced"))
                .then_some(st)
        },
    );
    let adopted_after = woken_at.elapsed();
    eprintln!(
        "[kpairstop] the woken node followed epoch {} {} ms after SIGCONT",
        woke["ha"]["epoch"],
        adopted_after.as_millis()
    );
    let woke_sink = kafka_of(&woke);
    let woke_epoch = woke["ha"]["epoch"].as_u64().expect("ha.epoch");
    wait_child(&mut g, "gen", Duration::from_secs(120));
    // While it stays deposed (same epoch), the old node's sink delivers nothing more.
    let later = t.nodes[old].status();
    let old_sink = kafka_of(&later);
    let still_deposed = later["ha"]["epoch"].as_u64() == Some(woke_epoch);
    if still_deposed {
        assert!(!publishes(&later), "{later}");
        assert!(
            old_sink["state"] == "standby" || old_sink["state"] == "fenced",
            "the deposed node's sink: {old_sink}"
        );
        assert_eq!(
            old_sink["delivered"], woke_sink["delivered"],
            "the deposed node's sink delivered after it woke up: {woke_sink} -> {old_sink}"
        );
    }
    // Whichever node is active once the pair is redundant again (the rejoin may cost another
    // failover: see the report), the topic must hold the stream exactly once.
    let act2 = t.wait_redundant(Duration::from_secs(120));
    let epoch_end = t.nodes[act2].status()["ha"]["epoch"]
        .as_u64()
        .expect("ha.epoch");
    assert!(
        epoch_end > epoch_old,
        "failover raises the epoch ({epoch_old} -> {epoch_end})"
    );
    let (recs, _stream, dump) = settled_topic(&broker, &t.nodes[act2], n, s.path());
    // What the old node had counted as delivered when it woke is in the topic, all of it
    // before the first record of a newer epoch.
    let first_new = recs
        .iter()
        .position(|r| r.header_epoch > epoch_old)
        .expect("records of the new epoch");
    if let Some(d) = woke_sink["delivered_offset"].as_u64() {
        assert!(
            d < first_new as u64,
            "the old node claims offset {d} delivered, at or past the new epoch's first record {first_new}"
        );
    }
    let epochs = epochs_in(&recs);
    check_dump(&manifest, &dump, n);
    let before_sink = kafka_of(&before);
    eprintln!(
        "FIGURES pair SIGSTOP: records={} stopped_ms={} failover_ms={} epochs(epoch,records)={epochs:?} \
         old sink before SIGSTOP delivered={} delivered_offset={} | on waking state={} delivered={} | \
         after gen state={} delivered={} delivered_offset={} fenced={} still_deposed={still_deposed} active_at_end={} | new sink at SIGCONT next_offset={}",
        recs.len(),
        stopped_for.as_millis(),
        failover.as_millis(),
        before_sink["delivered"],
        before_sink["delivered_offset"],
        woke_sink["state"],
        woke_sink["delivered"],
        old_sink["state"],
        old_sink["delivered"],
        old_sink["delivered_offset"],
        old_sink["fenced"],
        ["a", "b"][act2],
        new_epoch_delivering["next_offset"],
    );
}
