//! SNMPv3 message processing with USM (RFC 3412 §7.2, RFC 3414 §3.2), for a notification
//! receiver: traps from authoritative senders, informs to this node's engine, discovery and
//! the Reports a sender needs.

use super::usm::{mac_eq, AuthProtocol, PrivProtocol};
use super::value::{self, hex, key_varbinds, octets_json};
use super::{
    notification_fields, tlv, to_bytes, Accepted, DiscardReason, Outcome, Secret, SnmpReceiver,
    UsmUser, MAX_CACHED_PRIV_KEYS, MAX_REMOTE_ENGINES,
};
use crate::key::KeyBuilder;
use rasn::types::{Integer, OctetString};
use rasn_snmp::v2;
use rasn_snmp::v3::{self as snmp3, HeaderData, ScopedPdu, ScopedPduData, USMSecurityParameters};
use serde_json::{json, Map, Value as Json};
use std::net::SocketAddr;
use twinrx_types::Millis;

/// 2^31 - 1: the largest boots and time (RFC 3414 §2.2.2); boots at this value is latched.
pub(crate) const MAX_BOOTS: u32 = 2_147_483_647;
/// RFC 3414 §2.2.3: the time window is 150 seconds.
const TIME_WINDOW_S: u64 = 150;
/// msgMaxSize of what we send (the largest UDP payload over IPv4).
const MAX_SIZE: i32 = 65_507;
/// Our own Reports carry no request-id of an undecodable PDU (RFC 3412 §7.1 step 3c).
const UNKNOWN_REQUEST_ID: i32 = MAX_BOOTS as i32;

/// usmStats counters (RFC 3414 §5), the varbind of a Report.
const USM_STATS_UNSUPPORTED_SEC_LEVELS: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 1, 0];
const USM_STATS_NOT_IN_TIME_WINDOWS: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0];
const USM_STATS_UNKNOWN_USER_NAMES: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 3, 0];
const USM_STATS_UNKNOWN_ENGINE_IDS: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0];
const USM_STATS_WRONG_DIGESTS: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 5, 0];
const USM_STATS_DECRYPTION_ERRORS: [u32; 11] = [1, 3, 6, 1, 6, 3, 15, 1, 1, 6, 0];

/// Where a user's key comes from.
#[derive(Clone)]
enum KeySource {
    /// `Ku`, from a passphrase: localised per engine on use.
    Master(Vec<u8>),
    /// Already localised for one engine.
    Localized { engine_id: Vec<u8>, key: Vec<u8> },
}

impl KeySource {
    fn localize(&self, auth: AuthProtocol, engine_id: &[u8]) -> Option<Vec<u8>> {
        match self {
            KeySource::Master(ku) => Some(auth.localize(ku, engine_id)),
            KeySource::Localized { engine_id: e, key } if e == engine_id => Some(key.clone()),
            KeySource::Localized { .. } => None,
        }
    }
}

/// A configured user with its derived keys.
#[derive(Clone)]
pub(crate) struct UserKeys {
    name: Vec<u8>,
    auth: Option<(AuthProtocol, KeySource)>,
    privacy: Option<(PrivProtocol, KeySource)>,
}

/// Localised keys of one user for one engine.
pub(super) struct Keys {
    pub(super) auth: Option<(AuthProtocol, Vec<u8>)>,
    pub(super) privacy: Option<(PrivProtocol, Vec<u8>)>,
}

impl UserKeys {
    /// Validates the users (adding to `problems`) and derives `Ku` from passphrases.
    pub(crate) fn from_config(users: &[UsmUser], problems: &mut Vec<String>) -> Vec<UserKeys> {
        let mut out: Vec<UserKeys> = Vec::new();
        // Users often share passphrases; each (hash, passphrase) costs one 1 MiB digest.
        let mut kus = KuCache::default();
        for (i, u) in users.iter().enumerate() {
            let at = format!("users[{i}] ({:?})", u.name);
            if u.name.is_empty() || u.name.len() > 32 {
                problems.push(format!("{at}: a user name has 1 to 32 octets (RFC 3414)"));
            }
            if out.iter().any(|o| o.name == u.name.as_bytes()) {
                problems.push(format!("{at}: user name defined twice"));
            }
            if u.privacy.is_some() && u.auth.is_none() {
                problems.push(format!(
                    "{at}: privacy needs authentication (RFC 3414: no noAuthPriv); add auth"
                ));
            }
            let auth = u.auth.as_ref().map(|(proto, secret)| {
                let src = source(
                    &at,
                    "auth",
                    *proto,
                    secret,
                    proto.localized_len(),
                    problems,
                    &mut kus,
                );
                (*proto, src)
            });
            let privacy = match (&u.privacy, &u.auth) {
                (Some((proto, secret)), Some((auth_proto, _))) => {
                    // RFC 3414 §11.2: the privacy key uses the authentication hash.
                    let src = source(&at, "privacy", *auth_proto, secret, 16, problems, &mut kus);
                    Some((*proto, src))
                }
                _ => None,
            };
            out.push(UserKeys {
                name: u.name.as_bytes().to_vec(),
                auth,
                privacy,
            });
        }
        out
    }

    /// Both keys for `engine_id`; `None` if a localized key belongs to another engine.
    #[cfg(test)]
    pub(super) fn keys(&self, engine_id: &[u8]) -> Option<Keys> {
        let auth = self.auth_key(engine_id)?;
        let privacy = match &self.privacy {
            Some(_) => Some(self.priv_key(engine_id)?),
            None => None,
        };
        Some(Keys { auth, privacy })
    }

    /// The authentication key for `engine_id`: `Some(None)` for a user without
    /// authentication, `None` if a localized key belongs to another engine.
    fn auth_key(&self, engine_id: &[u8]) -> Option<Option<(AuthProtocol, Vec<u8>)>> {
        match &self.auth {
            Some((proto, src)) => Some(Some((*proto, src.localize(*proto, engine_id)?))),
            None => Some(None),
        }
    }

    /// The privacy key for `engine_id` (may cost a 1 MiB digest: see `usm.rs`).
    fn priv_key(&self, engine_id: &[u8]) -> Option<(PrivProtocol, Vec<u8>)> {
        match (&self.privacy, &self.auth) {
            (Some((proto, src)), Some((auth_proto, _))) => {
                let kul = src.localize(*auth_proto, engine_id)?;
                Some((*proto, proto.fit_key(*auth_proto, kul, engine_id)))
            }
            _ => None,
        }
    }
}

impl AuthProtocol {
    /// Octets of a localised key (the hash output).
    fn localized_len(self) -> usize {
        match self {
            AuthProtocol::Md5 => 16,
            AuthProtocol::Sha1 => 20,
            AuthProtocol::Sha224 => 28,
            AuthProtocol::Sha256 => 32,
            AuthProtocol::Sha384 => 48,
            AuthProtocol::Sha512 => 64,
        }
    }
}

/// `Ku` per (hash, passphrase) already computed while reading the config.
#[derive(Default)]
struct KuCache(Vec<(AuthProtocol, String, Vec<u8>)>);

impl KuCache {
    fn get(&mut self, hash: AuthProtocol, passphrase: &str) -> Vec<u8> {
        if let Some((_, _, ku)) = self
            .0
            .iter()
            .find(|(h, p, _)| *h == hash && p == passphrase)
        {
            return ku.clone();
        }
        let ku = hash.password_to_key(passphrase.as_bytes());
        self.0.push((hash, passphrase.to_owned(), ku.clone()));
        ku
    }
}

fn source(
    at: &str,
    what: &str,
    hash: AuthProtocol,
    secret: &Secret,
    min_key: usize,
    problems: &mut Vec<String>,
    kus: &mut KuCache,
) -> KeySource {
    match secret {
        Secret::Passphrase(p) => {
            if p.len() < 8 {
                problems.push(format!(
                    "{at}: {what} passphrase has {} characters; USM needs at least 8",
                    p.len()
                ));
            }
            KeySource::Master(kus.get(hash, p))
        }
        Secret::LocalizedKey { engine_id, key } => {
            if key.len() < min_key {
                problems.push(format!(
                    "{at}: {what} localized key has {} octets, needs at least {min_key}",
                    key.len()
                ));
            }
            KeySource::Localized {
                engine_id: engine_id.clone(),
                key: key.clone(),
            }
        }
    }
}

/// RFC 3414 §3.2 step 7b: our notion of a remote authoritative engine's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RemoteTime {
    boots: u32,
    /// latestReceivedEngineTime.
    latest_time: u32,
    /// Our `now` when `latest_time` was received.
    at: Millis,
}

/// The security level of a message (msgFlags bits 0 and 1), named as in RFC 3411.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
enum Level {
    NoAuthNoPriv,
    AuthNoPriv,
    AuthPriv,
}

impl Level {
    fn flags(self) -> u8 {
        match self {
            Level::NoAuthNoPriv => 0,
            Level::AuthNoPriv => 1,
            Level::AuthPriv => 3,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Level::NoAuthNoPriv => "noAuthNoPriv",
            Level::AuthNoPriv => "authNoPriv",
            Level::AuthPriv => "authPriv",
        }
    }
}

/// What a Report needs from the message it answers.
struct ReportTo {
    msg_id: i32,
    user: Vec<u8>,
    request_id: i32,
    reportable: bool,
}

fn u31(i: &Integer) -> Option<u32> {
    u32::try_from(i).ok().filter(|v| *v <= MAX_BOOTS)
}

fn request_id(pdus: &v2::Pdus) -> i32 {
    match pdus {
        v2::Pdus::GetRequest(v2::GetRequest(p))
        | v2::Pdus::GetNextRequest(v2::GetNextRequest(p))
        | v2::Pdus::Response(v2::Response(p))
        | v2::Pdus::SetRequest(v2::SetRequest(p))
        | v2::Pdus::InformRequest(v2::InformRequest(p))
        | v2::Pdus::Trap(v2::Trap(p))
        | v2::Pdus::Report(v2::Report(p)) => p.request_id,
        v2::Pdus::GetBulkRequest(v2::GetBulkRequest(p)) => p.request_id,
    }
}

impl SnmpReceiver {
    pub(super) fn handle_v3(
        &mut self,
        now: Millis,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Outcome {
        let msg: snmp3::Message = match super::ber_decode(datagram) {
            Ok(m) => m,
            Err(e) => return super::keep_raw(source, datagram, DiscardReason::BadBer, &e),
        };
        if msg.global_data.security_model != Integer::from(3) {
            return Outcome::Discard(DiscardReason::UnsupportedSecurityModel);
        }
        let usm: USMSecurityParameters = match super::ber_decode(&msg.security_parameters) {
            Ok(u) => u,
            Err(e) => {
                return super::keep_raw(
                    source,
                    datagram,
                    DiscardReason::BadBer,
                    &format!("msgSecurityParameters: {e}"),
                )
            }
        };
        // RFC 3412 §7.2 step 5 and §6: one flags octet; priv without auth is invalid;
        // msgID, boots and time are 0..2^31-1.
        let (Some(&flags), 1) = (msg.global_data.flags.first(), msg.global_data.flags.len()) else {
            return Outcome::Discard(DiscardReason::InvalidMessage);
        };
        let level = match flags & 3 {
            0 => Level::NoAuthNoPriv,
            1 => Level::AuthNoPriv,
            3 => Level::AuthPriv,
            _ => return Outcome::Discard(DiscardReason::InvalidMessage),
        };
        let (Some(msg_id), Some(boots), Some(time)) = (
            u31(&msg.global_data.message_id),
            u31(&usm.authoritative_engine_boots),
            u31(&usm.authoritative_engine_time),
        ) else {
            return Outcome::Discard(DiscardReason::InvalidMessage);
        };
        let report_to = ReportTo {
            msg_id: msg_id as i32,
            user: usm.user_name.to_vec(),
            request_id: match &msg.scoped_data {
                ScopedPduData::CleartextPdu(s) => request_id(&s.data),
                ScopedPduData::EncryptedPdu(_) => UNKNOWN_REQUEST_ID,
            },
            reportable: flags & 4 != 0,
        };
        let ip = source.ip();
        let engine_id = usm.authoritative_engine_id.to_vec();
        let ours = engine_id == self.engine.engine_id;

        // RFC 3414 §3.2 step 3: discovery. An empty engine ID is never one we can localise to.
        if engine_id.is_empty() {
            if !report_to.reportable {
                return Outcome::Discard(DiscardReason::UnknownEngineId);
            }
            self.stats.discovery_reports += 1;
            let count = self.stats.discovery_reports;
            return Outcome::Reply(self.report(
                now,
                &report_to,
                &USM_STATS_UNKNOWN_ENGINE_IDS,
                count,
                None,
            ));
        }

        // Step 4: the user.
        let Some(user_index) = self.users.iter().position(|u| u.name == report_to.user[..]) else {
            return self.refuse(now, source, &report_to, DiscardReason::UnknownUser);
        };
        let user = &self.users[user_index];
        let has_privacy = user.privacy.is_some();
        let Some(auth_key) = user.auth_key(&engine_id) else {
            // A localized key for another engine: this (user, engine) pair is not configured.
            return self.refuse(now, source, &report_to, DiscardReason::UnknownUser);
        };
        // Step 5: the level must be the user's (a user with keys never accepts less).
        let user_level = match (&auth_key, has_privacy) {
            (None, _) => Level::NoAuthNoPriv,
            (Some(_), false) => Level::AuthNoPriv,
            (Some(_), true) => Level::AuthPriv,
        };
        if level != user_level {
            return self.refuse(
                now,
                source,
                &report_to,
                DiscardReason::UnsupportedSecurityLevel,
            );
        }

        // Step 6: authentication over the datagram as received, MAC field zeroed.
        if let Some((proto, key)) = &auth_key {
            let given = &usm.authentication_parameters;
            let Some(range) = tlv::v3_auth_params(datagram) else {
                return self.refuse(now, source, &report_to, DiscardReason::WrongDigest);
            };
            if given.len() != proto.mac_len() || datagram[range.clone()] != given[..] {
                return self.refuse(now, source, &report_to, DiscardReason::WrongDigest);
            }
            if !mac_eq(&proto.mac_with_params_zeroed(key, datagram, range), given) {
                return self.refuse(now, source, &report_to, DiscardReason::WrongDigest);
            }
            // Step 7: timeliness, for authenticated messages only.
            let timely = if ours {
                self.timely_ours(now, boots, time)
            } else {
                self.timely_remote(now, &engine_id, boots, time)
            };
            if !timely {
                if ours && report_to.reportable {
                    // RFC 3414 §3.2 step 7a: this Report is authenticated, so the sender can
                    // trust the boots and time in it and retry.
                    self.stats.count_discard(ip, DiscardReason::NotInTimeWindow);
                    self.stats.error_reports += 1;
                    let count = self.stats.discarded(DiscardReason::NotInTimeWindow);
                    return Outcome::Reply(self.report(
                        now,
                        &report_to,
                        &USM_STATS_NOT_IN_TIME_WINDOWS,
                        count,
                        Some((*proto, key.as_slice())),
                    ));
                }
                return Outcome::Discard(DiscardReason::NotInTimeWindow);
            }
        }

        // Step 8: privacy. The privacy key is derived only now, for an authentic message (an
        // AES-C key costs a 1 MiB digest: a forged packet must not make us pay it).
        let privacy = if has_privacy {
            match self.cached_priv_key(user_index, &engine_id) {
                Some(k) => Some(k),
                None => return self.refuse(now, source, &report_to, DiscardReason::UnknownUser),
            }
        } else {
            None
        };
        let keys = Keys {
            auth: auth_key,
            privacy,
        };
        let scoped = match (&keys.privacy, msg.scoped_data) {
            (None, ScopedPduData::CleartextPdu(s)) => s,
            (Some((proto, key)), ScopedPduData::EncryptedPdu(ct)) => {
                let plain = proto.decrypt(key, boots, time, &usm.privacy_parameters, &ct);
                let scoped = plain.and_then(|p| {
                    // DES leaves padding after the scoped PDU.
                    let len = tlv::outer_len(&p)?;
                    super::ber_decode::<ScopedPdu>(&p[..len]).ok()
                });
                match scoped {
                    Some(s) => s,
                    None => {
                        return self.refuse(now, source, &report_to, DiscardReason::DecryptionError)
                    }
                }
            }
            (None, ScopedPduData::EncryptedPdu(_)) | (Some(_), ScopedPduData::CleartextPdu(_)) => {
                return Outcome::Discard(DiscardReason::InvalidMessage)
            }
        };

        let (pdu, inform) = match scoped.data {
            v2::Pdus::Trap(v2::Trap(pdu)) => (pdu, false),
            v2::Pdus::InformRequest(v2::InformRequest(pdu)) => (pdu, true),
            _ => return Outcome::Discard(DiscardReason::UnsupportedPdu),
        };
        if inform && !ours {
            // An inform must be sent to the receiver's engine ID (RFC 3412 §7.1 step 9a).
            return self.refuse(now, source, &report_to, DiscardReason::UnknownEngineId);
        }

        let varbinds = value::from_v2(&pdu.variable_bindings);
        let pdu_type = if inform { "inform" } else { "trapv2" };
        let context_engine_id: &[u8] = &scoped.engine_id;
        let keyed_context: &[u8] = if context_engine_id == self.engine.engine_id.as_slice() {
            b""
        } else {
            context_engine_id
        };
        let mut key = KeyBuilder::new("snmp-v3");
        key.source(ip)
            .part(pdu_type.as_bytes())
            .part(keyed_context)
            .part(&scoped.name);
        key_varbinds(&mut key, &varbinds);
        let key = key.finish();

        let mut fields = Map::new();
        fields.insert("version".into(), json!("3"));
        fields.insert("user".into(), octets_json(&report_to.user));
        fields.insert("security_level".into(), json!(level.as_str()));
        fields.insert("context_engine_id".into(), json!(hex(context_engine_id)));
        fields.insert("context_name".into(), octets_json(&scoped.name));
        notification_fields(&mut fields, pdu_type, pdu.request_id, &varbinds);
        let decoded = to_bytes(&Json::Object(fields));

        if !inform {
            self.stats.count_accepted(ip, Accepted::V3Trap);
            return Outcome::Accept {
                key,
                decoded,
                reply: None,
            };
        }
        let request_id = pdu.request_id;
        let response = ScopedPdu {
            engine_id: scoped.engine_id,
            name: scoped.name,
            data: v2::Pdus::Response(v2::Response(v2::Pdu {
                request_id,
                error_status: 0,
                error_index: 0,
                variable_bindings: pdu.variable_bindings,
            })),
        };
        let reply = self.encode_v3(now, report_to.msg_id, &report_to.user, &keys, response);
        self.accept_inform(
            now,
            source,
            key,
            decoded,
            (request_id, reply),
            Accepted::V3Inform,
        )
    }

    /// The privacy key of a user for an engine, from a bounded cache (oldest evicted).
    fn cached_priv_key(
        &mut self,
        user: usize,
        engine_id: &[u8],
    ) -> Option<(PrivProtocol, Vec<u8>)> {
        let id = (user, engine_id.to_vec());
        if let Some(k) = self.priv_keys.get(&id) {
            return Some(k.clone());
        }
        let key = self.users[user].priv_key(engine_id)?;
        if self.priv_key_order.len() >= MAX_CACHED_PRIV_KEYS {
            if let Some(old) = self.priv_key_order.pop_front() {
                self.priv_keys.remove(&old);
            }
        }
        self.priv_key_order.push_back(id.clone());
        self.priv_keys.insert(id, key.clone());
        Some(key)
    }

    /// Counts `reason`; answers with the matching Report (noAuthNoPriv) if the message was
    /// reportable (RFC 3412 §7.2 step 3), else just discards.
    fn refuse(
        &mut self,
        now: Millis,
        source: SocketAddr,
        to: &ReportTo,
        reason: DiscardReason,
    ) -> Outcome {
        let oid: &[u32] = match reason {
            DiscardReason::UnknownUser => &USM_STATS_UNKNOWN_USER_NAMES,
            DiscardReason::UnsupportedSecurityLevel => &USM_STATS_UNSUPPORTED_SEC_LEVELS,
            DiscardReason::WrongDigest => &USM_STATS_WRONG_DIGESTS,
            DiscardReason::DecryptionError => &USM_STATS_DECRYPTION_ERRORS,
            DiscardReason::UnknownEngineId => &USM_STATS_UNKNOWN_ENGINE_IDS,
            _ => return Outcome::Discard(reason),
        };
        if !to.reportable {
            return Outcome::Discard(reason);
        }
        self.stats.count_discard(source.ip(), reason);
        self.stats.error_reports += 1;
        let count = self.stats.discarded(reason);
        Outcome::Reply(self.report(now, to, oid, count, None))
    }

    /// RFC 3414 §3.2 step 7a: we are the authoritative engine.
    fn timely_ours(&self, now: Millis, boots: u32, time: u32) -> bool {
        let ours = u64::from(self.engine_time(now));
        boots != MAX_BOOTS
            && boots == self.engine.boots
            && u64::from(time).abs_diff(ours) <= TIME_WINDOW_S
    }

    /// RFC 3414 §3.2 step 7b: the sender is authoritative (a trap); keep its clock.
    fn timely_remote(&mut self, now: Millis, engine_id: &[u8], boots: u32, time: u32) -> bool {
        match self.remote_engines.get_mut(engine_id) {
            Some(known) => {
                if boots > known.boots || (boots == known.boots && time > known.latest_time) {
                    *known = RemoteTime {
                        boots,
                        latest_time: time,
                        at: now,
                    };
                }
                let their_now = u64::from(known.latest_time) + now.saturating_sub(known.at) / 1000;
                !(known.boots == MAX_BOOTS
                    || boots < known.boots
                    || (boots == known.boots && u64::from(time) + TIME_WINDOW_S < their_now))
            }
            None => {
                if self.remote_engines.len() >= MAX_REMOTE_ENGINES {
                    let oldest = self
                        .remote_engines
                        .iter()
                        .min_by_key(|(_, t)| t.at)
                        .map(|(e, _)| e.clone());
                    if let Some(e) = oldest {
                        self.remote_engines.remove(&e);
                    }
                }
                self.remote_engines.insert(
                    engine_id.to_vec(),
                    RemoteTime {
                        boots,
                        latest_time: time,
                        at: now,
                    },
                );
                boots != MAX_BOOTS
            }
        }
    }

    /// A Report from our engine with one usmStats varbind, noAuthNoPriv or (for
    /// notInTimeWindow) authNoPriv with the user's key.
    fn report(
        &mut self,
        now: Millis,
        to: &ReportTo,
        oid: &[u32],
        count: u64,
        auth: Option<(AuthProtocol, &[u8])>,
    ) -> Vec<u8> {
        let scoped = ScopedPdu {
            engine_id: OctetString::from(self.engine.engine_id.clone()),
            name: OctetString::from(Vec::new()),
            data: v2::Pdus::Report(v2::Report(v2::Pdu {
                request_id: to.request_id,
                error_status: 0,
                error_index: 0,
                variable_bindings: vec![v2::VarBind {
                    name: rasn::types::ObjectIdentifier::new_unchecked(oid.to_vec().into()),
                    value: v2::VarBindValue::Value(
                        rasn_smi::v2::ApplicationSyntax::Counter(rasn_smi::v1::Counter(
                            (count & 0xffff_ffff) as u32,
                        ))
                        .into(),
                    ),
                }],
            })),
        };
        let keys = Keys {
            auth: auth.map(|(p, k)| (p, k.to_vec())),
            privacy: None,
        };
        self.encode_v3(now, to.msg_id, &to.user, &keys, scoped)
    }

    /// Encodes (encrypts, authenticates) a message from our engine at the level `keys` allow.
    pub(super) fn encode_v3(
        &mut self,
        now: Millis,
        msg_id: i32,
        user: &[u8],
        keys: &Keys,
        scoped: ScopedPdu,
    ) -> Vec<u8> {
        let boots = self.engine.boots;
        let time = self.engine_time(now);
        let level = match (&keys.auth, &keys.privacy) {
            (None, _) => Level::NoAuthNoPriv,
            (Some(_), None) => Level::AuthNoPriv,
            (Some(_), Some(_)) => Level::AuthPriv,
        };
        let (scoped_data, salt) = match &keys.privacy {
            Some((proto, key)) => {
                // RFC 3414 §8.1.1.1 / RFC 3826 §3.1.2.1: the salt is unique per message under
                // one key: our boots (new at every start) and a counter.
                self.salt_counter = self.salt_counter.wrapping_add(1);
                let mut salt = [0u8; 8];
                salt[..4].copy_from_slice(&boots.to_be_bytes());
                salt[4..].copy_from_slice(&self.salt_counter.to_be_bytes());
                let plain = rasn::ber::encode(&scoped).expect("a scoped PDU we built encodes");
                let ct = proto.encrypt(key, boots, time, &salt, &plain);
                (ScopedPduData::EncryptedPdu(ct.into()), salt.to_vec())
            }
            None => (ScopedPduData::CleartextPdu(scoped), Vec::new()),
        };
        let mac_len = keys.auth.as_ref().map_or(0, |(p, _)| p.mac_len());
        let usm = USMSecurityParameters {
            authoritative_engine_id: OctetString::from(self.engine.engine_id.clone()),
            authoritative_engine_boots: Integer::from(boots),
            authoritative_engine_time: Integer::from(time),
            user_name: OctetString::from(user.to_vec()),
            authentication_parameters: OctetString::from(vec![0u8; mac_len]),
            privacy_parameters: OctetString::from(salt),
        };
        let msg = snmp3::Message {
            version: Integer::from(3),
            global_data: HeaderData {
                message_id: Integer::from(msg_id),
                max_size: Integer::from(MAX_SIZE),
                flags: OctetString::from(vec![level.flags()]),
                security_model: Integer::from(3),
            },
            security_parameters: rasn::ber::encode(&usm)
                .expect("USM parameters we built encode")
                .into(),
            scoped_data,
        };
        let mut bytes = rasn::ber::encode(&msg).expect("a message we built encodes");
        if let Some((proto, key)) = &keys.auth {
            let range = tlv::v3_auth_params(&bytes).expect("our own encoding has the field");
            let mac = proto.mac(key, &bytes);
            bytes[range].copy_from_slice(&mac);
        }
        bytes
    }
}
