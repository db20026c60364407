//! SNMP trap and inform receiving, sans-IO: datagrams in, [`Outcome`]s out.
//!
//! [`SnmpReceiver`] takes every UDP datagram that arrived on the trap port, with the time as an
//! argument ([`Millis`] for engine time and inform windows, [`UnixNanos`] for the record), and
//! says what to do with it. It owns no socket, clock, journal or RNG. The driver (the node)
//! must
//! - journal [`Outcome::Accept`] and [`Outcome::KeepRaw`] (raw = the datagram, `decoded` = the
//!   JSON given here, key = the key given here),
//! - send an inform's `reply` **only after** that record is durable (fsynced per the policy),
//!   so an acknowledged inform is never lost; send a [`Outcome::DuplicateInform`] reply once
//!   everything already appended is durable; send an [`Outcome::Reply`] (a USM Report) at once,
//! - call [`SnmpReceiver::handle_append_failed`] if journaling an inform failed, so that its
//!   retransmission is journaled again instead of being answered as a duplicate,
//! - export [`SnmpReceiver::stats`].
//!
//! # What is kept, what is dropped
//! - **Kept raw** ([`Outcome::KeepRaw`], SPEC "Unparsable datagrams are kept raw with the
//!   error"): BER that does not decode, truncated datagrams, unknown message versions. They may
//!   be a real device's broken trap; they are keyed on the source IP and the raw bytes.
//!   Exception: a v1/v2c datagram whose community is readable but not on the allow-list is
//!   dropped even if the rest is garbage (it is not from one of our devices).
//! - **Dropped and counted** ([`Outcome::Discard`]): authentication failures, which are not the
//!   device's message or are an attack: unknown community (with an allow-list), unknown engine
//!   ID, unknown user, unsupported security level, wrong digest, decryption failure, not in time
//!   window; also PDUs a trap receiver does not serve (Get, Set, Response, Report, ...),
//!   invalid v3 headers, other security models, and oversize datagrams (SPEC: "larger ones are
//!   refused and counted, never truncated silently"; the driver must read with a buffer larger
//!   than [`SnmpConfig::max_message_bytes`] to see them).
//!
//! # Content keys (SPEC "De-duplication"; never request-id, msgID, boots/time or salt)
//! Varbinds are hashed in a canonical form (dotted OID, type name, value), not as received
//! BER, so two encodings of one value give one key (see `value.rs`).
//! - v1 (`snmp-v1`): source IP, community, enterprise, agent address, generic and specific
//!   trap, time stamp, varbinds.
//! - v2c (`snmp-v2c`): source IP, community, PDU type, varbinds (sysUpTime.0 and
//!   snmpTrapOID.0 are varbinds, so they are included).
//! - v3 (`snmp-v3`): source IP, PDU type, contextEngineID, contextName, the decrypted
//!   varbinds. The user is not part of it (SPEC). A contextEngineID equal to *this node's*
//!   engine ID hashes as empty: a sender that puts each receiver's engine ID there (the
//!   authoritative engine of an inform) must still give the same key on both nodes. Net-SNMP
//!   puts its own engine ID there, the same for both nodes.
//! - kept raw (`snmp-raw`): source IP and the datagram bytes.
//!
//! # SNMPv3 USM (RFC 3414)
//! - Informs are sent to this node's own engine ID ([`Engine`], persisted by the node, boots
//!   incremented per start; engine time = seconds since [`SnmpReceiver::new`]). A probe with an
//!   empty engine ID gets a Report `usmStatsUnknownEngineIDs` with our ID, boots and time
//!   (discovery); an authenticated message outside the time window (§3.2 step 7a: boots differ
//!   or time more than 150 s off) gets an authenticated Report `usmStatsNotInTimeWindows`.
//! - Traps come from authoritative senders with their own engine ID: keys are localised per
//!   sender engine ID. Passphrases are turned into `Ku` once at start (the 1 MiB hash);
//!   localisation is one more hash per message, so authentication keys are not cached; privacy
//!   keys are cached per (user, engine), bounded, because the AES-C extension costs another
//!   1 MiB digest (derived only once a message authenticated). For such
//!   non-authoritative receipt we apply §3.2 step 7b as the RFC asks: per sender engine, the
//!   latest boots/time seen are remembered (bounded, oldest evicted) and a message whose boots
//!   went back, or whose time is more than 150 s behind the remembered clock, is
//!   `NotInTimeWindow`. That refuses replays of old traps, and costs nothing else.
//! - Reports are sent only for messages with the reportable flag (traps never have it), as
//!   RFC 3412 §7.2 step 3 and RFC 3414 §3.2 say; every failure is counted either way.
//! - The salt for encrypted Responses is `boots || counter` (RFC 3414 §8.1.1.1, RFC 3826
//!   §3.1.2.1: it need only be unique per key, and boots grow with every start).
//! - Protocols ([`AuthProtocol`], [`PrivProtocol`]): MD5, SHA, SHA-224/256/384/512 (RFC 7860);
//!   DES, AES (-128), AES-192, AES-256 (Blumenthal key extension, Net-SNMP's names) and
//!   AES-192-C, AES-256-C (Reeder key extension, as Cisco devices use). Every one of them is
//!   tested against Net-SNMP 5.9.3's `snmptrap` and `snmpinform` (`tests/snmp_netsnmp.rs`).
//!
//! # Libraries
//! All BER is decoded and encoded by `rasn` + `rasn-snmp` (+ its `rasn-smi` value types: one
//! BER library, not two). It
//! decodes what real agents send (including negative request-ids, which `snmp-parser` 0.11
//! rejects) and encodes Responses and Reports; `snmp-parser` lacks an encoder and USM crypto.
//! The small header walker in `tlv.rs` only locates byte ranges (the HMAC covers the datagram
//! as received). Decoding runs under `catch_unwind`: a panic inside the decoder would be its
//! bug, and is kept raw as bad BER rather than stopping the node. Crypto: `hmac` with `md-5`/`sha1`/`sha2`, `des` + `cbc`, `aes` + `cfb-mode`.
//!
//! The stream fields of `decoded` are documented in `SCHEMA.md` beside this file.

mod encode;
mod tlv;
pub mod usm;
mod v3;
mod value;

pub use encode::{encode_v2c_inform, encode_v2c_trap, parse_response, EncodeError, GenValue};
pub use usm::{AuthProtocol, PrivProtocol};

use crate::key::{canonical_ip, KeyBuilder};
use rasn_snmp::{v1, v2, v2c};
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use twinrx_types::{Key, Millis, UnixNanos};
use value::{key_varbinds, octets_json, varbinds_json, VarBind};

/// sysUpTime.0 (RFC 3418).
const SYS_UPTIME_0: &str = "1.3.6.1.2.1.1.3.0";
/// snmpTrapOID.0 (RFC 3418).
const SNMP_TRAP_OID_0: &str = "1.3.6.1.6.3.1.1.4.1.0";

/// Largest number of sources with their own counters; the rest are summed under "other".
pub const MAX_SOURCES: usize = 1024;
/// Largest number of remembered informs (for answering retransmissions).
pub const MAX_REMEMBERED_INFORMS: usize = 65_536;
/// Largest number of remote engines whose boots/time are remembered (RFC 3414 §3.2 step 7b).
pub const MAX_REMOTE_ENGINES: usize = 4096;
/// Largest number of cached privacy keys, per (user, engine) (see `usm.rs`: AES-C keys cost a
/// 1 MiB digest each).
pub const MAX_CACHED_PRIV_KEYS: usize = 4096;

/// What the node configures. Secrets are resolved (file, environment, TOML) by the node.
#[derive(Clone, Debug)]
pub struct SnmpConfig {
    /// v1/v2c community allow-list; `None` accepts any community, `Some(vec![])` none.
    pub communities: Option<Vec<String>>,
    /// SNMPv3 users (the same on both nodes).
    pub users: Vec<UsmUser>,
    /// Datagrams longer than this are refused and counted (SPEC: 64 KiB).
    pub max_message_bytes: usize,
    /// A retransmitted inform (same source, request-id and content) within this window after
    /// the last copy is answered again but not journaled again.
    pub inform_dedup_window_ms: u64,
}

impl Default for SnmpConfig {
    fn default() -> Self {
        SnmpConfig {
            communities: None,
            users: Vec::new(),
            max_message_bytes: 65_536,
            inform_dedup_window_ms: 5_000,
        }
    }
}

/// One USM user.
#[derive(Clone, Debug)]
pub struct UsmUser {
    pub name: String,
    pub auth: Option<(AuthProtocol, Secret)>,
    pub privacy: Option<(PrivProtocol, Secret)>,
}

/// A USM secret, as the node read it.
#[derive(Clone)]
pub enum Secret {
    /// A passphrase (at least 8 characters, as Net-SNMP requires).
    Passphrase(String),
    /// A key already localised to one engine ID (e.g. from `snmpusm` or a device's config);
    /// it works only for messages whose authoritative engine is that one.
    LocalizedKey { engine_id: Vec<u8>, key: Vec<u8> },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Passphrase(_) => f.write_str("Passphrase(..)"),
            Secret::LocalizedKey { engine_id, .. } => {
                write!(
                    f,
                    "LocalizedKey {{ engine_id: {}, .. }}",
                    value::hex(engine_id)
                )
            }
        }
    }
}

/// This node's own SNMP engine (RFC 3411 snmpEngineID, snmpEngineBoots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engine {
    /// 5 to 32 octets, persistent, different on the two nodes.
    pub engine_id: Vec<u8>,
    /// Incremented (and persisted) by the node at every start; at most 2^31 - 2.
    pub boots: u32,
}

/// A configuration the receiver refuses, with every problem named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("snmp config: {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Why a datagram was not accepted as a message (metrics label: [`DiscardReason::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiscardReason {
    /// The BER does not decode (or is truncated). Kept raw.
    BadBer,
    /// The message version is not 0, 1 or 3. Kept raw.
    BadVersion,
    /// v1/v2c community not on the allow-list.
    UnknownCommunity,
    /// A PDU a trap receiver does not serve (Get, Set, Response, Report, ...).
    UnsupportedPdu,
    /// A v3 security model other than USM.
    UnsupportedSecurityModel,
    /// A v3 header that breaks RFC 3412 (flags, msgID or boots/time out of range).
    InvalidMessage,
    /// A v3 probe or inform for an engine ID that is not ours (usmStatsUnknownEngineIDs).
    UnknownEngineId,
    /// usmStatsUnknownUserNames.
    UnknownUser,
    /// usmStatsUnsupportedSecLevels: the message's level is not the user's.
    UnsupportedSecurityLevel,
    /// usmStatsWrongDigests.
    WrongDigest,
    /// usmStatsDecryptionErrors.
    DecryptionError,
    /// usmStatsNotInTimeWindows.
    NotInTimeWindow,
    /// Longer than [`SnmpConfig::max_message_bytes`].
    Oversize,
}

impl DiscardReason {
    pub const ALL: [DiscardReason; 13] = [
        DiscardReason::BadBer,
        DiscardReason::BadVersion,
        DiscardReason::UnknownCommunity,
        DiscardReason::UnsupportedPdu,
        DiscardReason::UnsupportedSecurityModel,
        DiscardReason::InvalidMessage,
        DiscardReason::UnknownEngineId,
        DiscardReason::UnknownUser,
        DiscardReason::UnsupportedSecurityLevel,
        DiscardReason::WrongDigest,
        DiscardReason::DecryptionError,
        DiscardReason::NotInTimeWindow,
        DiscardReason::Oversize,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::BadBer => "bad_ber",
            DiscardReason::BadVersion => "bad_version",
            DiscardReason::UnknownCommunity => "unknown_community",
            DiscardReason::UnsupportedPdu => "unsupported_pdu",
            DiscardReason::UnsupportedSecurityModel => "unsupported_security_model",
            DiscardReason::InvalidMessage => "invalid_message",
            DiscardReason::UnknownEngineId => "unknown_engine_id",
            DiscardReason::UnknownUser => "unknown_user",
            DiscardReason::UnsupportedSecurityLevel => "unsupported_security_level",
            DiscardReason::WrongDigest => "wrong_digest",
            DiscardReason::DecryptionError => "decryption_error",
            DiscardReason::NotInTimeWindow => "not_in_time_window",
            DiscardReason::Oversize => "oversize",
        }
    }

    fn index(self) -> usize {
        DiscardReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }
}

/// What the driver does with one datagram. See the module doc for the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Journal this (raw = the datagram). If `reply` is `Some` (an inform), send it to the
    /// source **only after** the record is durable.
    Accept {
        key: Key,
        decoded: Vec<u8>,
        reply: Option<Vec<u8>>,
    },
    /// A retransmitted inform whose first copy was accepted: journal nothing; send `reply`
    /// once everything already appended is durable.
    DuplicateInform { reply: Vec<u8> },
    /// Send this now (a USM Report); journal nothing.
    Reply(Vec<u8>),
    /// Unparsable: journal the raw datagram with this key and `decoded` = `{"error": ..}`.
    KeepRaw {
        key: Key,
        decoded: Vec<u8>,
        reason: DiscardReason,
    },
    /// Counted and dropped (if a Report was due, it is not carried here: see
    /// [`Outcome::Reply`]).
    Discard(DiscardReason),
}

/// Which kind of message was accepted (metrics label: [`Accepted::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Accepted {
    V1Trap,
    V2cTrap,
    V2cInform,
    V3Trap,
    V3Inform,
}

impl Accepted {
    pub const ALL: [Accepted; 5] = [
        Accepted::V1Trap,
        Accepted::V2cTrap,
        Accepted::V2cInform,
        Accepted::V3Trap,
        Accepted::V3Inform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Accepted::V1Trap => "v1_trap",
            Accepted::V2cTrap => "v2c_trap",
            Accepted::V2cInform => "v2c_inform",
            Accepted::V3Trap => "v3_trap",
            Accepted::V3Inform => "v3_inform",
        }
    }

    fn index(self) -> usize {
        Accepted::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every kind")
    }
}

/// Counters of one source (or of all sources beyond [`MAX_SOURCES`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    accepted: [u64; 5],
    discarded: [u64; 13],
}

impl SourceStats {
    pub fn accepted(&self, kind: Accepted) -> u64 {
        self.accepted[kind.index()]
    }
    /// Datagrams dropped or kept raw for `reason`.
    pub fn discarded(&self, reason: DiscardReason) -> u64 {
        self.discarded[reason.index()]
    }
}

/// What the receiver counted since start (quinn style: the driver exports it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnmpStats {
    /// Totals over all sources.
    pub total: SourceStats,
    /// Retransmitted informs answered without journaling.
    pub duplicate_informs: u64,
    /// Reports sent for engine ID discovery.
    pub discovery_reports: u64,
    /// Reports sent for errors (unknown user, wrong digest, not in time window, ...).
    pub error_reports: u64,
    /// Per source IP, for the first [`MAX_SOURCES`] sources seen.
    pub per_source: BTreeMap<IpAddr, SourceStats>,
    /// All sources beyond [`MAX_SOURCES`].
    pub other_sources: SourceStats,
}

impl SnmpStats {
    pub fn accepted(&self, kind: Accepted) -> u64 {
        self.total.accepted(kind)
    }
    pub fn discarded(&self, reason: DiscardReason) -> u64 {
        self.total.discarded(reason)
    }

    fn source(&mut self, ip: IpAddr) -> &mut SourceStats {
        let ip = canonical_ip(ip);
        if self.per_source.len() >= MAX_SOURCES && !self.per_source.contains_key(&ip) {
            return &mut self.other_sources;
        }
        self.per_source.entry(ip).or_default()
    }

    fn count_accepted(&mut self, ip: IpAddr, kind: Accepted) {
        self.total.accepted[kind.index()] += 1;
        self.source(ip).accepted[kind.index()] += 1;
    }

    fn count_discard(&mut self, ip: IpAddr, reason: DiscardReason) {
        self.total.discarded[reason.index()] += 1;
        self.source(ip).discarded[reason.index()] += 1;
    }
}

/// A remembered inform: same source, request-id and content key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InformId {
    source: SocketAddr,
    request_id: i32,
    key: Key,
}

/// Bounded memory of recently accepted informs.
#[derive(Clone, Debug, Default)]
struct InformMemory {
    /// id -> time of the last copy.
    last_seen: HashMap<InformId, Millis>,
    /// (id, time) in arrival order; entries whose time no longer matches `last_seen` are stale.
    order: VecDeque<(InformId, Millis)>,
}

impl InformMemory {
    fn expire(&mut self, now: Millis, window_ms: u64) {
        while let Some((id, at)) = self.order.front() {
            let too_old = now.saturating_sub(*at) > window_ms;
            let too_many = self.order.len() > MAX_REMEMBERED_INFORMS;
            if !too_old && !too_many {
                break;
            }
            if self.last_seen.get(id) == Some(at) {
                self.last_seen.remove(id);
            }
            self.order.pop_front();
        }
    }

    /// Records a copy; true if the inform was already remembered (a retransmission).
    fn seen(&mut self, id: InformId, now: Millis, window_ms: u64) -> bool {
        self.expire(now, window_ms);
        let known = self.last_seen.insert(id.clone(), now).is_some();
        self.order.push_back((id, now));
        self.expire(now, window_ms);
        known
    }

    fn forget(&mut self, source: SocketAddr, key: Key) {
        self.last_seen
            .retain(|id, _| !(id.source == source && id.key == key));
    }
}

/// The SNMP receiver core. Feed it every datagram of the trap port with
/// [`SnmpReceiver::handle_datagram`]; act on the returned [`Outcome`] as the module doc says.
///
/// Invariants: memory is bounded (sources, remembered informs, remote engines); no input
/// panics; an inform's reply is never handed out before the driver was told to journal it.
///
/// `Clone` copies all state (keys, counters, remembered informs); tests use it to start many
/// cases from one configured receiver without deriving keys again.
#[derive(Clone)]
pub struct SnmpReceiver {
    communities: Option<Vec<Vec<u8>>>,
    max_message_bytes: usize,
    inform_window_ms: u64,
    engine: Engine,
    start: Millis,
    users: Vec<v3::UserKeys>,
    remote_engines: HashMap<Vec<u8>, v3::RemoteTime>,
    priv_keys: HashMap<(usize, Vec<u8>), (PrivProtocol, Vec<u8>)>,
    priv_key_order: VecDeque<(usize, Vec<u8>)>,
    informs: InformMemory,
    salt_counter: u32,
    stats: SnmpStats,
}

impl SnmpReceiver {
    /// Validates the config (every problem reported at once) and derives the USM keys (one
    /// 1 MiB hash per passphrase, so a few milliseconds per user).
    pub fn new(config: SnmpConfig, engine: Engine, now: Millis) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        if !(5..=32).contains(&engine.engine_id.len()) {
            problems.push(format!(
                "engine_id has {} octets: an SNMP engine ID has 5 to 32 (RFC 3411)",
                engine.engine_id.len()
            ));
        }
        if engine.boots >= v3::MAX_BOOTS {
            problems.push(format!(
                "engine boots = {}: must be below 2147483647 (RFC 3414 §2.2.2); \
                 choose a new engine_id",
                engine.boots
            ));
        }
        if !(484..=16 * 1024 * 1024).contains(&config.max_message_bytes) {
            problems.push(format!(
                "max_message_bytes = {}: must be between 484 (RFC 3417) and 16777216",
                config.max_message_bytes
            ));
        }
        let users = v3::UserKeys::from_config(&config.users, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(SnmpReceiver {
            communities: config
                .communities
                .map(|c| c.into_iter().map(String::into_bytes).collect()),
            max_message_bytes: config.max_message_bytes,
            inform_window_ms: config.inform_dedup_window_ms,
            engine,
            start: now,
            users,
            remote_engines: HashMap::new(),
            priv_keys: HashMap::new(),
            priv_key_order: VecDeque::new(),
            informs: InformMemory::default(),
            salt_counter: 0,
            stats: SnmpStats::default(),
        })
    }

    /// What was counted so far.
    pub fn stats(&self) -> &SnmpStats {
        &self.stats
    }

    /// This node's engine ID (for status pages and the `lab` config).
    pub fn engine_id(&self) -> &[u8] {
        &self.engine.engine_id
    }

    /// Journaling of an accepted inform from `source` with `key` failed: forget it, so that
    /// its retransmission is journaled (and only then answered) instead of being answered as a
    /// duplicate of a record that does not exist.
    pub fn handle_append_failed(&mut self, source: SocketAddr, key: Key) {
        self.informs.forget(source, key);
    }

    /// Handles one datagram received at `received_at` (wall clock, for nothing but the
    /// record) and `now` (monotonic, for engine time and windows) from `source`.
    pub fn handle_datagram(
        &mut self,
        now: Millis,
        _received_at: UnixNanos,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Outcome {
        // `_received_at` goes into the record the driver writes; no decision depends on it.
        let outcome = self.classify(now, source, datagram);
        let ip = source.ip();
        match &outcome {
            Outcome::Discard(reason) | Outcome::KeepRaw { reason, .. } => {
                self.stats.count_discard(ip, *reason);
            }
            Outcome::DuplicateInform { .. } => self.stats.duplicate_informs += 1,
            Outcome::Accept { .. } | Outcome::Reply(_) => {}
        }
        outcome
    }

    fn classify(&mut self, now: Millis, source: SocketAddr, datagram: &[u8]) -> Outcome {
        if datagram.len() > self.max_message_bytes {
            return Outcome::Discard(DiscardReason::Oversize);
        }
        match tlv::message_version(datagram) {
            Some(0) | Some(1) => self.handle_community(now, source, datagram),
            Some(3) => self.handle_v3(now, source, datagram),
            Some(v) => keep_raw(
                source,
                datagram,
                DiscardReason::BadVersion,
                &format!("unknown SNMP message version {v}"),
            ),
            None => keep_raw(
                source,
                datagram,
                DiscardReason::BadBer,
                "not a BER SEQUENCE starting with an INTEGER version",
            ),
        }
    }

    fn community_allowed(&self, community: &[u8]) -> bool {
        match &self.communities {
            None => true,
            Some(list) => list.iter().any(|c| c == community),
        }
    }

    /// v1 and v2c.
    fn handle_community(&mut self, now: Millis, source: SocketAddr, datagram: &[u8]) -> Outcome {
        if let Some(community) = tlv::community(datagram) {
            if !self.community_allowed(community) {
                return Outcome::Discard(DiscardReason::UnknownCommunity);
            }
        }
        if tlv::message_version(datagram) == Some(0) {
            match ber_decode::<v1::Message<v1::Pdus>>(datagram) {
                Ok(msg) => self.handle_v1(source, msg),
                Err(e) => keep_raw(source, datagram, DiscardReason::BadBer, &e),
            }
        } else {
            match ber_decode::<v2c::Message<v2::Pdus>>(datagram) {
                Ok(msg) => self.handle_v2c(now, source, msg),
                Err(e) => keep_raw(source, datagram, DiscardReason::BadBer, &e),
            }
        }
    }

    fn handle_v1(&mut self, source: SocketAddr, msg: v1::Message<v1::Pdus>) -> Outcome {
        let v1::Pdus::Trap(trap) = msg.data else {
            return Outcome::Discard(DiscardReason::UnsupportedPdu);
        };
        let varbinds = value::from_v1(&trap.variable_bindings);
        let enterprise = value::dotted(&trap.enterprise);
        let rasn_smi::v1::NetworkAddress::Internet(agent) = &trap.agent_addr;
        let agent = value::ip_octets(agent);
        let mut key = KeyBuilder::new("snmp-v1");
        key.source(source.ip())
            .part(&msg.community)
            .part(enterprise.as_bytes())
            .part(&agent)
            .part(trap.generic_trap.to_string().as_bytes())
            .part(trap.specific_trap.to_string().as_bytes())
            .part(&trap.time_stamp.0.to_be_bytes());
        key_varbinds(&mut key, &varbinds);
        let decoded = json!({
            "version": "1",
            "community": octets_json(&msg.community),
            "pdu_type": "trap",
            "enterprise": enterprise,
            "agent_address": format!("{}.{}.{}.{}", agent[0], agent[1], agent[2], agent[3]),
            "generic_trap": integer(&trap.generic_trap),
            "specific_trap": integer(&trap.specific_trap),
            "uptime": trap.time_stamp.0,
            "varbinds": varbinds_json(&varbinds),
        });
        self.stats.count_accepted(source.ip(), Accepted::V1Trap);
        Outcome::Accept {
            key: key.finish(),
            decoded: to_bytes(&decoded),
            reply: None,
        }
    }

    fn handle_v2c(
        &mut self,
        now: Millis,
        source: SocketAddr,
        msg: v2c::Message<v2::Pdus>,
    ) -> Outcome {
        let (pdu, inform) = match msg.data {
            v2::Pdus::Trap(v2::Trap(pdu)) => (pdu, false),
            v2::Pdus::InformRequest(v2::InformRequest(pdu)) => (pdu, true),
            _ => return Outcome::Discard(DiscardReason::UnsupportedPdu),
        };
        let varbinds = value::from_v2(&pdu.variable_bindings);
        let pdu_type = if inform { "inform" } else { "trapv2" };
        let mut key = KeyBuilder::new("snmp-v2c");
        key.source(source.ip())
            .part(&msg.community)
            .part(pdu_type.as_bytes());
        key_varbinds(&mut key, &varbinds);
        let key = key.finish();
        let mut fields = Map::new();
        fields.insert("version".into(), json!("2c"));
        fields.insert("community".into(), octets_json(&msg.community));
        notification_fields(&mut fields, pdu_type, pdu.request_id, &varbinds);
        let decoded = to_bytes(&Json::Object(fields));
        if !inform {
            self.stats.count_accepted(source.ip(), Accepted::V2cTrap);
            return Outcome::Accept {
                key,
                decoded,
                reply: None,
            };
        }
        let reply = encode::v2c_response(msg.version, msg.community, pdu);
        self.accept_inform(now, source, key, decoded, reply, Accepted::V2cInform)
    }

    /// Shared by v2c and v3 informs: journal once, answer every copy.
    fn accept_inform(
        &mut self,
        now: Millis,
        source: SocketAddr,
        key: Key,
        decoded: Vec<u8>,
        reply: (i32, Vec<u8>),
        kind: Accepted,
    ) -> Outcome {
        let (request_id, reply) = reply;
        let id = InformId {
            source,
            request_id,
            key,
        };
        if self.informs.seen(id, now, self.inform_window_ms) {
            return Outcome::DuplicateInform { reply };
        }
        self.stats.count_accepted(source.ip(), kind);
        Outcome::Accept {
            key,
            decoded,
            reply: Some(reply),
        }
    }

    /// Engine time in seconds since start (RFC 3414 §2.2.2), capped at 2^31 - 1.
    fn engine_time(&self, now: Millis) -> u32 {
        let secs = now.saturating_sub(self.start) / 1000;
        u32::try_from(secs.min(u64::from(v3::MAX_BOOTS))).expect("capped below 2^31")
    }
}

/// The fields common to v2c and v3 notifications (SCHEMA.md).
fn notification_fields(
    fields: &mut Map<String, Json>,
    pdu_type: &str,
    request_id: i32,
    varbinds: &[VarBind],
) {
    fields.insert("pdu_type".into(), json!(pdu_type));
    fields.insert("request_id".into(), json!(request_id));
    let find = |oid: &str| varbinds.iter().find(|vb| vb.oid == oid);
    if let Some(vb) = find(SYS_UPTIME_0) {
        if let value::Value::TimeTicks(t) = vb.value {
            fields.insert("uptime".into(), json!(t));
        }
    }
    if let Some(vb) = find(SNMP_TRAP_OID_0) {
        if let value::Value::Oid(o) = &vb.value {
            fields.insert("trap_oid".into(), json!(o));
        }
    }
    fields.insert("varbinds".into(), varbinds_json(varbinds));
}

/// Decodes untrusted bytes with `rasn`. Should the decoder ever panic on some input (a bug in
/// it, not in the input), the datagram is kept raw as bad BER instead of taking the node down.
fn ber_decode<T: rasn::Decode>(bytes: &[u8]) -> Result<T, String> {
    match std::panic::catch_unwind(|| rasn::ber::decode::<T>(bytes)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the BER decoder panicked on this input".to_owned()),
    }
}

fn integer(i: &rasn::types::Integer) -> Json {
    match i64::try_from(i) {
        Ok(n) => json!(n),
        Err(_) => json!(i.to_string()),
    }
}

fn to_bytes(json: &Json) -> Vec<u8> {
    serde_json::to_vec(json).expect("a serde_json::Value always serializes")
}

/// Longest error text kept in a raw record (decoder messages can be long).
const MAX_ERROR_CHARS: usize = 256;

fn keep_raw(source: SocketAddr, datagram: &[u8], reason: DiscardReason, error: &str) -> Outcome {
    let key = KeyBuilder::new("snmp-raw")
        .source(source.ip())
        .part(datagram)
        .finish();
    let mut error: String = error.chars().take(MAX_ERROR_CHARS).collect();
    if error.is_empty() {
        error = reason.as_str().to_owned();
    }
    Outcome::KeepRaw {
        key,
        decoded: to_bytes(&json!({ "error": format!("{}: {error}", reason.as_str()) })),
        reason,
    }
}

#[cfg(test)]
mod tests;
