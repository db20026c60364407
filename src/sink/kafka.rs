//! Kafka sink: a transactional producer (`rdkafka`), one transaction per batch.
//!
//! - **Fencing (SPEC G3)**: `transactional.id` is fixed per pair and sink, so a new
//!   forwarder's `init_transactions` fences any older producer with the same id at the
//!   broker; the old one's produce and commit are then rejected (`PRODUCER_FENCED` /
//!   `INVALID_PRODUCER_EPOCH`, librdkafka's fatal `_FENCED`) even if it never learns why. The
//!   sink reports [`SinkError::Fenced`] and the driver stops delivering.
//! - **Exactly-once resume**: every record carries the stream offset and epoch, in headers
//!   (`twinrx-offset`, `twinrx-epoch`, decimal) and in the body (the entry line itself). On
//!   open, *after* `init_transactions` (which aborts a transaction the previous forwarder left
//!   open), a `read_committed` consumer reads the last record of every partition (ListOffsets
//!   gives the last stable offset; a short fetch back from it finds the last committed record,
//!   skipping aborted ones and transaction markers) and the sink resumes after the highest
//!   offset found. An unfinished or aborted batch is invisible to `read_committed`, so it is
//!   delivered again, once.
//! - **Partitioning**: entry at offset `o` goes to partition `o % partitions`. One partition
//!   (the default) keeps the whole stream in order for every consumer; N partitions spread
//!   the load but a consumer sees the order only within a partition.
//! - Any other error aborts the transaction (best effort), drops the producer and lets the
//!   driver re-open after a backoff: a new producer, `init_transactions`, read-back.

use super::config::KafkaConfig;
use super::{parse_head, Delivered, Entry, Resume, Sink, SinkError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Header names of the record fields the resume rule reads back.
pub const HEADER_OFFSET: &str = "twinrx-offset";
pub const HEADER_EPOCH: &str = "twinrx-epoch";

type Producer = ThreadedProducer<DefaultProducerContext>;

pub struct KafkaSink {
    name: String,
    cfg: KafkaConfig,
    batch_records_max: usize,
    rt: tokio::runtime::Handle,
    producer: Option<Producer>,
}

/// Whether an error means another producer with our `transactional.id` took over.
fn is_fence_code(c: RDKafkaErrorCode) -> bool {
    matches!(
        c,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionCoordinatorFenced
    )
}

impl KafkaSink {
    pub fn new(
        name: &str,
        cfg: KafkaConfig,
        batch_records_max: usize,
        rt: tokio::runtime::Handle,
    ) -> KafkaSink {
        KafkaSink {
            name: name.to_string(),
            cfg,
            batch_records_max,
            rt,
            producer: None,
        }
    }

    /// The client config shared by the producer, the admin client and the read-back
    /// consumer: brokers, then the pass-through properties (TLS, SASL, ...).
    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("client.id", format!("twinrx-sink-{}", self.name))
            // Never let a metadata request create the topic with the broker's defaults.
            .set("allow.auto.create.topics", "false")
            .set(
                "socket.timeout.ms",
                self.cfg.timeout.as_millis().max(10).to_string(),
            );
        for (k, v) in &self.cfg.properties {
            c.set(k, v);
        }
        c
    }

    /// Classifies an error of the producer: fenced, or retry (after dropping the producer).
    fn classify(&self, what: &str, e: &KafkaError) -> SinkError {
        let fatal = self
            .producer
            .as_ref()
            .and_then(|p| p.client().fatal_error());
        let fenced = e.rdkafka_error_code().is_some_and(is_fence_code)
            || fatal.as_ref().is_some_and(|(c, _)| is_fence_code(*c));
        let text = match &fatal {
            Some((c, s)) => format!("{what}: {e} (fatal: {c:?}: {s})"),
            None => format!("{what}: {e}"),
        };
        if fenced {
            SinkError::Fenced(format!(
                "{text}; transactional.id {:?} is now used by another forwarder",
                self.cfg.transactional_id
            ))
        } else {
            SinkError::Retry(text)
        }
    }

    fn new_producer(&self) -> Result<Producer, SinkError> {
        let mut c = self.base_config();
        c.set("transactional.id", &self.cfg.transactional_id)
            .set("enable.idempotence", "true")
            .set("linger.ms", self.cfg.linger_ms.to_string())
            .set(
                "transaction.timeout.ms",
                self.cfg.transaction_timeout_ms.to_string(),
            );
        c.create()
            .map_err(|e| SinkError::Retry(format!("cannot create the Kafka producer: {e}")))
    }

    /// Checks that the topic exists with enough partitions, creating it if allowed.
    fn ensure_topic(&self, p: &Producer) -> Result<(), SinkError> {
        let topic = self.cfg.topic.as_str();
        if self.cfg.create_topic {
            // Before any metadata request: a broker that auto-creates topics would create it
            // with its default partition count.
            self.create_topic()?;
        }
        let md = p
            .client()
            .fetch_metadata(Some(topic), self.cfg.timeout)
            .map_err(|e| SinkError::Retry(format!("cannot read metadata of topic {topic}: {e}")))?;
        let found = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len());
        match found {
            Some(n) if n >= self.cfg.partitions as usize => Ok(()),
            Some(n) => Err(SinkError::Retry(format!(
                "topic {topic} has {n} partition(s), the sink writes {}: add partitions or lower partitions",
                self.cfg.partitions
            ))),
            None => Err(SinkError::Retry(format!(
                "topic {topic} does not exist{}: create it with {} partition(s)",
                if self.cfg.create_topic {
                    " (yet)"
                } else {
                    " (create_topic = false)"
                },
                self.cfg.partitions
            ))),
        }
    }

    /// Creates the topic with the configured partitions; one that exists is left alone.
    fn create_topic(&self) -> Result<(), SinkError> {
        let topic = self.cfg.topic.as_str();
        let admin: AdminClient<DefaultClientContext> = self
            .base_config()
            .create()
            .map_err(|e| SinkError::Retry(format!("cannot create a Kafka admin client: {e}")))?;
        let nt = NewTopic::new(
            topic,
            self.cfg.partitions as i32,
            TopicReplication::Fixed(self.cfg.replication_factor),
        );
        let opts = AdminOptions::new().operation_timeout(Some(self.cfg.timeout));
        let res = self
            .rt
            .block_on(admin.create_topics([&nt], &opts))
            .map_err(|e| SinkError::Retry(format!("cannot create topic {topic}: {e}")))?;
        for r in res {
            match r {
                Ok(_) => {
                    tracing::info!(sink = %self.name, topic, partitions = self.cfg.partitions, "topic created")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, c)) => {
                    return Err(SinkError::Retry(format!("cannot create topic {t}: {c:?}")))
                }
            }
        }
        Ok(())
    }

    /// The last committed record of partition `p`, read with `read_committed`.
    fn last_record(&self, consumer: &BaseConsumer, p: i32) -> Result<Option<Delivered>, SinkError> {
        let topic = self.cfg.topic.as_str();
        let (low, high) = consumer
            .fetch_watermarks(topic, p, self.cfg.timeout)
            .map_err(|e| SinkError::Retry(format!("cannot list offsets of {topic}/{p}: {e}")))?;
        if high <= low {
            return Ok(None);
        }
        // A batch's records plus a commit marker; aborted batches before it are skipped by
        // read_committed. Widen the window until a record is found or the start is reached.
        let mut window = (self.batch_records_max as i64) * 2 + 16;
        let deadline = Instant::now() + self.cfg.timeout * 3;
        loop {
            let start = (high - window).max(low);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(|e| SinkError::Retry(format!("cannot assign {topic}/{p}: {e}")))?;
            consumer
                .assign(&tpl)
                .map_err(|e| SinkError::Retry(format!("cannot assign {topic}/{p}: {e}")))?;
            let mut last: Option<(i64, Delivered)> = None;
            loop {
                if Instant::now() > deadline {
                    return Err(SinkError::Retry(format!(
                        "reading back {topic}/{p} from Kafka offset {start} took longer than {:?}",
                        self.cfg.timeout * 3
                    )));
                }
                match consumer.poll(Duration::from_millis(200)) {
                    None => continue,
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    Some(Err(e)) => {
                        return Err(SinkError::Retry(format!("cannot fetch {topic}/{p}: {e}")))
                    }
                    Some(Ok(m)) => {
                        let d = record_head(&m).ok_or_else(|| {
                            SinkError::Retry(format!(
                                "{topic}/{p} at Kafka offset {} holds a record without {HEADER_OFFSET}: the topic must be written by this sink only",
                                m.offset()
                            ))
                        })?;
                        last = Some((m.offset(), d));
                    }
                }
            }
            if let Some((_, d)) = last {
                return Ok(Some(d));
            }
            if start == low {
                return Ok(None);
            }
            window = window.saturating_mul(4);
        }
    }

    /// Reads back the highest (offset, epoch) over every partition the sink writes.
    fn read_back(&self) -> Result<Option<Delivered>, SinkError> {
        let mut c = self.base_config();
        c.set("group.id", format!("twinrx-sink-readback-{}", self.name))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = c
            .create()
            .map_err(|e| SinkError::Retry(format!("cannot create the read-back consumer: {e}")))?;
        let mut best: Option<Delivered> = None;
        for p in 0..self.cfg.partitions as i32 {
            if let Some(d) = self.last_record(&consumer, p)? {
                tracing::debug!(sink = %self.name, partition = p, offset = d.offset, epoch = d.epoch, "last record read back");
                best = Some(match best {
                    Some(b) => Delivered {
                        offset: b.offset.max(d.offset),
                        epoch: b.epoch.max(d.epoch),
                    },
                    None => d,
                });
            }
        }
        Ok(best)
    }

    fn abort_and_drop(&mut self) {
        if let Some(p) = self.producer.take() {
            if let Err(e) = p.abort_transaction(Duration::from_millis(1000)) {
                tracing::debug!(sink = %self.name, error = %e, "abort after a failed batch");
            }
        }
    }
}

/// Offset and epoch of a record: from its headers, else from the JSON body.
fn record_head(m: &impl rdkafka::message::Message) -> Option<Delivered> {
    let mut offset = None;
    let mut epoch = None;
    if let Some(h) = m.headers() {
        for hd in h.iter() {
            let v = hd
                .value
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok());
            match hd.key {
                HEADER_OFFSET => offset = v,
                HEADER_EPOCH => epoch = v,
                _ => {}
            }
        }
    }
    match (offset, epoch) {
        (Some(offset), Some(epoch)) => Some(Delivered { offset, epoch }),
        _ => m.payload().and_then(parse_head),
    }
}

impl Sink for KafkaSink {
    fn open(&mut self) -> Result<Resume, SinkError> {
        self.abort_and_drop();
        let p = self.new_producer()?;
        self.ensure_topic(&p)?;
        // Fences any older producer with this transactional.id and aborts what it left open,
        // so the read-back below sees only complete batches.
        if let Err(e) = p.init_transactions(self.cfg.timeout) {
            self.producer = Some(p);
            let err = self.classify("init_transactions", &e);
            self.producer = None;
            return Err(err);
        }
        self.producer = Some(p);
        let last = match self.read_back() {
            Ok(l) => l,
            Err(e) => {
                self.producer = None;
                return Err(e);
            }
        };
        Ok(match last {
            Some(d) => Resume::After(d),
            None => Resume::Empty,
        })
    }

    fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let Some(p) = self.producer.as_ref() else {
            return Err(SinkError::Retry("no producer (not opened)".into()));
        };
        if let Err(e) = p.begin_transaction() {
            let err = self.classify("begin_transaction", &e);
            self.abort_and_drop();
            return Err(err);
        }
        let started = Instant::now();
        let topic = self.cfg.topic.as_str();
        let parts = u64::from(self.cfg.partitions);
        for e in batch {
            let off = e.offset.to_string();
            let ep = e.epoch.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: HEADER_OFFSET,
                    value: Some(off.as_str()),
                })
                .insert(Header {
                    key: HEADER_EPOCH,
                    value: Some(ep.as_str()),
                });
            let mut rec = BaseRecord::to(topic)
                .partition((e.offset % parts) as i32)
                .key(off.as_str())
                .payload(e.line.as_slice())
                .headers(headers);
            let deadline = Instant::now() + self.cfg.timeout;
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if Instant::now() < deadline =>
                    {
                        rec = r;
                        p.poll(Duration::from_millis(10));
                    }
                    Err((err, _)) => {
                        let err = self.classify(&format!("produce offset {}", e.offset), &err);
                        self.abort_and_drop();
                        return Err(err);
                    }
                }
            }
        }
        let p = self.producer.as_ref().expect("checked above");
        let produced = Instant::now();
        // rdkafka's flush (called by commit_transaction) waits for in-flight records by
        // polling in steps of 100 ms, and our ThreadedProducer's own thread takes the events
        // first: every commit would cost 100 ms. Wait for the queue to drain here instead,
        // short sleeps, bounded by the timeout; the commit then finds nothing to flush.
        let deadline = produced + self.cfg.timeout;
        while p.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Err(e) = p.commit_transaction(self.cfg.timeout) {
            let err = self.classify("commit_transaction", &e);
            self.abort_and_drop();
            return Err(err);
        }
        tracing::debug!(
            sink = %self.name,
            entries = batch.len(),
            produce_us = (produced - started).as_micros() as u64,
            commit_us = produced.elapsed().as_micros() as u64,
            "transaction committed"
        );
        Ok(())
    }
}
