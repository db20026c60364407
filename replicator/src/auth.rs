//! Authentication: the link's handshake inside TLS 1.3, and the per-frame MAC.
//!
//! Handshake (PROTOCOL.md "Handshake"), client = the connecting side:
//! 1. TLS 1.3 with certificates on both sides ([`crate::tls`]): the client checks that the
//!    listener's certificate names the party it dials; the listener checks the client's chain
//!    and which of the parties it accepts the certificate names (else `REFUSE`
//!    wrong-identity, counted `wrong_identity`).
//! 2. client → `HELLO` (magic, version range, party byte, 32-byte random nonce `Nc`)
//! 3. server → `HELLO_REPLY` (magic, chosen version, party byte, nonce `Ns`)
//!
//! Each side checks that the other's party byte is the party its certificate names. Then
//! with the transcript T = version ‖ client party ‖ server party ‖ Nc ‖ Ns, both take 32
//! bytes from the TLS exporter (RFC 8446 §7.5, label "EXPORTER-twinrx-link v2", context T)
//! and derive, with HKDF-SHA256 (salt Nc ‖ Ns), one 32-byte key per direction and *lane*
//! (info = label ‖ T). A session has two lanes: **bulk** (`SHIP_BATCH` frames only) and
//! **control** (every other frame). Every frame after the handshake carries
//! HMAC-SHA256(key of its direction and lane, counter ‖ type ‖ payload) truncated to 16
//! bytes, where `counter` (u64 BE) counts the frames of that direction and lane from 0 and is
//! never sent. TLS already protects every byte; the MAC is what lets the shipper seal bulk
//! frames and the copier verify them off the socket tasks, and it binds each frame to its
//! lane and position (a control frame may overtake queued bulk frames: lanes have separate
//! counters). Tags are compared in constant time (`Mac::verify_truncated_left`).

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use twinrx_types::NodeId;

use crate::config::LinkConfig;
use crate::frame::{
    self, encode_refuse, read_frame, refuse, ty, Hello, HelloReply, ReadError,
    HANDSHAKE_FRAME_BYTES_MAX, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, TAG_LEN,
};
use crate::stats::AuthFailure;
use crate::tls::Party;
use crate::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

type HmacSha256 = Hmac<Sha256>;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-twinrx-link v2";
const LABEL_KEY_C2S_CONTROL: &[u8] = b"twinrx-link v2 key client->server control";
const LABEL_KEY_S2C_CONTROL: &[u8] = b"twinrx-link v2 key server->client control";
const LABEL_KEY_C2S_BULK: &[u8] = b"twinrx-link v2 key client->server bulk";
const LABEL_KEY_S2C_BULK: &[u8] = b"twinrx-link v2 key server->client bulk";

/// What both proofs and both keys are bound to.
#[derive(Clone, Debug)]
pub(crate) struct Transcript {
    version: u16,
    client: u8,
    server: u8,
    nonce_c: [u8; 32],
    nonce_s: [u8; 32],
}

impl Transcript {
    fn bytes(&self) -> [u8; 68] {
        let mut t = [0u8; 68];
        t[0..2].copy_from_slice(&self.version.to_be_bytes());
        t[2] = self.client;
        t[3] = self.server;
        t[4..36].copy_from_slice(&self.nonce_c);
        t[36..68].copy_from_slice(&self.nonce_s);
        t
    }

    /// The four session keys: one per direction and lane.
    fn session_keys(&self, secret: &[u8]) -> Keys {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&self.nonce_c);
        salt[32..].copy_from_slice(&self.nonce_s);
        let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
        let t = self.bytes();
        let key = |label: &[u8]| {
            let mut k = [0u8; 32];
            hk.expand_multi_info(&[label, &t], &mut k)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            k
        };
        Keys {
            c2s_control: key(LABEL_KEY_C2S_CONTROL),
            s2c_control: key(LABEL_KEY_S2C_CONTROL),
            c2s_bulk: key(LABEL_KEY_C2S_BULK),
            s2c_bulk: key(LABEL_KEY_S2C_BULK),
        }
    }
}

/// Session keys, one per direction and lane.
struct Keys {
    c2s_control: [u8; 32],
    s2c_control: [u8; 32],
    c2s_bulk: [u8; 32],
    s2c_bulk: [u8; 32],
}

/// MACs outgoing frames of one direction.
pub(crate) struct Sealer {
    mac: HmacSha256,
    counter: u64,
}

impl Sealer {
    fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            mac: <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length"),
            counter: 0,
        }
    }

    /// The whole frame, `length ‖ type ‖ payload ‖ tag`, ready to write.
    pub(crate) fn seal(&mut self, frame_type: u8, payload: &[u8]) -> Vec<u8> {
        let len = 1 + payload.len() + TAG_LEN;
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(frame_type);
        out.extend_from_slice(payload);
        let tag = self.tag(frame_type, payload);
        out.extend_from_slice(&tag);
        out
    }

    fn tag(&mut self, frame_type: u8, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(&self.counter.to_be_bytes());
        mac.update(&[frame_type]);
        mac.update(payload);
        self.counter += 1;
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

/// Verifies incoming frames of one direction.
pub(crate) struct Opener {
    mac: HmacSha256,
    counter: u64,
}

impl Opener {
    fn new(key: &[u8; 32]) -> Opener {
        Opener {
            mac: <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length"),
            counter: 0,
        }
    }

    /// Checks `body` (`type ‖ payload ‖ tag`, at least 17 bytes: the reader enforces it) and
    /// returns the type and the payload. On failure returns the counter it was checked at;
    /// the session must close (the counter no longer matches the peer's).
    pub(crate) fn open(&mut self, mut body: Vec<u8>) -> Result<(u8, Vec<u8>), u64> {
        let counter = self.counter;
        if body.len() < 1 + TAG_LEN {
            return Err(counter);
        }
        let tag_at = body.len() - TAG_LEN;
        let mut mac = self.mac.clone();
        mac.update(&counter.to_be_bytes());
        mac.update(&body[..tag_at]);
        if mac.verify_truncated_left(&body[tag_at..]).is_err() {
            return Err(counter);
        }
        self.counter += 1;
        body.truncate(tag_at);
        let frame_type = body.remove(0);
        Ok((frame_type, body))
    }
}

/// A completed handshake: the peer, and sealers/openers for both lanes.
pub(crate) struct Established {
    pub version: u16,
    pub peer: Party,
    /// SHA-256 of the certificate the peer showed (empty in unit tests without TLS).
    pub peer_cert: String,
    pub control_sealer: Sealer,
    pub control_opener: Opener,
    pub bulk_sealer: Sealer,
    pub bulk_opener: Opener,
}

/// Both ends of a session as a completed handshake would leave them (client, server), for
/// tests that need an authenticated peer that misbehaves, and for the fuzz entry points.
pub(crate) fn test_pair(client: NodeId) -> (Established, Established) {
    let t = Transcript {
        version: PROTOCOL_VERSION,
        client: client.0,
        server: client.peer().0,
        nonce_c: [3; 32],
        nonce_s: [4; 32],
    };
    let k = t.session_keys(&[5; 32]);
    let c = Established {
        version: t.version,
        peer: Party::Node(client.peer()),
        peer_cert: String::new(),
        control_sealer: Sealer::new(&k.c2s_control),
        control_opener: Opener::new(&k.s2c_control),
        bulk_sealer: Sealer::new(&k.c2s_bulk),
        bulk_opener: Opener::new(&k.s2c_bulk),
    };
    let s = Established {
        version: t.version,
        peer: Party::Node(client),
        peer_cert: String::new(),
        control_sealer: Sealer::new(&k.s2c_control),
        control_opener: Opener::new(&k.c2s_control),
        bulk_sealer: Sealer::new(&k.s2c_bulk),
        bulk_opener: Opener::new(&k.c2s_bulk),
    };
    (c, s)
}

fn nonce() -> Result<[u8; 32], Error> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| Error::Rng(e.to_string()))?;
    Ok(n)
}

fn fail(cfg: &LinkConfig, reason: AuthFailure, detail: impl Into<String>) -> Error {
    let detail = detail.into();
    cfg.stats.auth_failure(reason);
    tracing::warn!(reason = %reason, detail = %detail, me = %cfg.me, "cluster link handshake failed");
    Error::Auth { reason, detail }
}

async fn send<S: AsyncWrite + Unpin>(
    s: &mut S,
    frame_type: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    s.write_all(&frame::handshake_frame(frame_type, payload))
        .await?;
    s.flush().await
}

/// Sends `REFUSE` before closing. Best effort: the peer may already be gone, and the
/// failure is counted and reported whether or not it reads this.
async fn refuse_and_fail<S: AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &LinkConfig,
    code: u8,
    reason: AuthFailure,
    detail: impl Into<String>,
) -> Error {
    if let Err(e) = send(s, ty::REFUSE, &encode_refuse(code)).await {
        tracing::debug!(error = %e, "could not send REFUSE; closing anyway");
    }
    fail(cfg, reason, detail)
}

/// Reads one handshake frame, mapping transport problems to counted failures. `eof_reason`
/// is what a close by the peer means at this point.
async fn recv<S: AsyncRead + Unpin>(
    s: &mut S,
    cfg: &LinkConfig,
    eof_reason: AuthFailure,
    step: &str,
) -> Result<(u8, Vec<u8>), Error> {
    match read_frame(s, 1, HANDSHAKE_FRAME_BYTES_MAX).await {
        Ok(mut body) => {
            let frame_type = body.remove(0);
            Ok((frame_type, body))
        }
        Err(ReadError::Eof) => Err(fail(cfg, eof_reason, format!("peer closed before {step}"))),
        Err(ReadError::Io(e)) => Err(fail(cfg, eof_reason, format!("reading {step}: {e}"))),
        Err(ReadError::TooLarge { len, .. }) => Err(fail(
            cfg,
            AuthFailure::Malformed,
            format!("{step}: length field {len} (0x{len:08x}) is not a twinrx handshake frame"),
        )),
        Err(ReadError::TooShort { len }) => Err(fail(
            cfg,
            AuthFailure::Malformed,
            format!("{step}: length field {len}"),
        )),
    }
}

/// What a `REFUSE` from the peer means for us.
fn refused(cfg: &LinkConfig, payload: &[u8]) -> Error {
    let code = payload.first().copied().unwrap_or(0);
    match code {
        refuse::VERSION => {
            let range = frame::Cursor::new(&payload[1..], "refuse")
                .array::<4>()
                .map(|b| {
                    format!(
                        "{}..={}",
                        u16::from_be_bytes([b[0], b[1]]),
                        u16::from_be_bytes([b[2], b[3]])
                    )
                })
                .unwrap_or_else(|_| "?".into());
            fail(
                cfg,
                AuthFailure::Version,
                format!(
                    "peer speaks versions {range}, we {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}"
                ),
            )
        }
        refuse::WRONG_NODE | refuse::WRONG_IDENTITY => fail(
            cfg,
            AuthFailure::RejectedByPeer,
            format!("the peer does not accept {} here", cfg.me),
        ),
        other => fail(
            cfg,
            AuthFailure::RejectedByPeer,
            format!("peer refused the handshake (code {other})"),
        ),
    }
}

/// Counts and describes a failed TLS handshake.
fn tls_failed(cfg: &LinkConfig, e: &std::io::Error, peer: &str) -> Error {
    use tokio_rustls::rustls::Error as TlsError;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>());
    let reason = match inner {
        Some(TlsError::InvalidCertificate(_) | TlsError::NoCertificatesPresented) => {
            AuthFailure::BadCertificate
        }
        Some(TlsError::AlertReceived(_)) => AuthFailure::RejectedByPeer,
        Some(_) => AuthFailure::Malformed,
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => AuthFailure::RejectedByPeer,
        None => AuthFailure::Malformed,
    };
    let hint = match reason {
        AuthFailure::BadCertificate => {
            " (is its certificate issued by this pair's CA, for the right party, and valid now?)"
        }
        AuthFailure::RejectedByPeer => {
            " (the peer refused our certificate: is it issued by the pair's CA it trusts?)"
        }
        _ => "",
    };
    fail(cfg, reason, format!("TLS handshake with {peer}: {e}{hint}"))
}

fn peer_cert(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> String {
    certs
        .and_then(|c| c.first())
        .map(|c| crate::tls::fingerprint(c))
        .unwrap_or_default()
}

/// 32 bytes that only the two ends of this TLS session know, bound to `t`.
fn exported(
    conn: &tokio_rustls::rustls::ConnectionCommon<impl Sized>,
    cfg: &LinkConfig,
    t: &Transcript,
) -> Result<[u8; 32], Error> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(&t.bytes()))
        .map_err(|e| fail(cfg, AuthFailure::Malformed, format!("TLS exporter: {e}")))
}

fn established(version: u16, peer: Party, k: Keys, client: bool, peer_cert: String) -> Established {
    let (sc, oc, sb, ob) = if client {
        (k.c2s_control, k.s2c_control, k.c2s_bulk, k.s2c_bulk)
    } else {
        (k.s2c_control, k.c2s_control, k.s2c_bulk, k.c2s_bulk)
    };
    Established {
        version,
        peer,
        peer_cert,
        control_sealer: Sealer::new(&sc),
        control_opener: Opener::new(&oc),
        bulk_sealer: Sealer::new(&sb),
        bulk_opener: Opener::new(&ob),
    }
}

/// The connecting side's handshake with `expected` (`cfg.peers[0]`). The caller applies
/// the timeout.
pub(crate) async fn client(
    tcp: TcpStream,
    cfg: &LinkConfig,
) -> Result<(TlsStream<TcpStream>, Established), Error> {
    let expected = cfg.peers[0];
    let connector = tokio_rustls::TlsConnector::from(cfg.credentials.client_config());
    let mut s = connector
        .connect(crate::tls::server_name(expected), tcp)
        .await
        .map_err(|e| tls_failed(cfg, &e, &expected.to_string()))?;
    let nonce_c = nonce()?;
    let hello = Hello {
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION,
        node: cfg.me.wire(),
        nonce: nonce_c,
    };
    send(&mut s, ty::HELLO, &hello.encode())
        .await
        .map_err(|e| {
            fail(
                cfg,
                AuthFailure::RejectedByPeer,
                format!("sending hello: {e}"),
            )
        })?;
    let (frame_type, payload) =
        recv(&mut s, cfg, AuthFailure::RejectedByPeer, "hello reply").await?;
    let reply = match frame_type {
        ty::HELLO_REPLY => {
            HelloReply::decode(&payload).map_err(|e| fail(cfg, AuthFailure::Malformed, e))?
        }
        ty::REFUSE => return Err(refused(cfg, &payload)),
        other => {
            return Err(fail(
                cfg,
                AuthFailure::Malformed,
                format!("expected hello reply, got frame type {other:#04x}"),
            ))
        }
    };
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&reply.version) {
        return Err(fail(
            cfg,
            AuthFailure::Version,
            format!("peer chose version {} outside our range", reply.version),
        ));
    }
    if reply.node != expected.wire() {
        return Err(fail(
            cfg,
            AuthFailure::WrongNode,
            format!(
                "peer's hello names party {}, its certificate {expected}",
                reply.node
            ),
        ));
    }
    if reply.nonce == nonce_c {
        return Err(fail(cfg, AuthFailure::Malformed, "peer echoed our nonce"));
    }
    let t = Transcript {
        version: reply.version,
        client: cfg.me.wire(),
        server: reply.node,
        nonce_c,
        nonce_s: reply.nonce,
    };
    let secret = exported(s.get_ref().1, cfg, &t)?;
    let cert = peer_cert(s.get_ref().1.peer_certificates());
    let est = established(t.version, expected, t.session_keys(&secret), true, cert);
    Ok((TlsStream::Client(s), est))
}

/// The listening side's handshake. The caller applies the timeout.
pub(crate) async fn server(
    tcp: TcpStream,
    cfg: &LinkConfig,
    from: &str,
) -> Result<(TlsStream<TcpStream>, Established), Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.credentials.server_config());
    let mut s = acceptor
        .accept(tcp)
        .await
        .map_err(|e| tls_failed(cfg, &e, from))?;
    let cert = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let party = cert
        .as_ref()
        .and_then(|c| crate::tls::identity_of(c, &cfg.peers));
    let Some(party) = party else {
        let named = cert
            .as_ref()
            .and_then(|c| crate::tls::identity_of(c, &Party::ALL))
            .map_or_else(|| "no party of this pair".to_string(), |p| p.to_string());
        let detail = format!(
            "{from} holds a valid certificate of {named}, which may not speak here (this \
             listener accepts {:?})",
            cfg.peers.iter().map(|p| p.short()).collect::<Vec<_>>()
        );
        return Err(refuse_and_fail(
            &mut s,
            cfg,
            refuse::WRONG_IDENTITY,
            AuthFailure::WrongIdentity,
            detail,
        )
        .await);
    };
    let t = server_hello(&mut s, cfg, party).await?;
    let secret = exported(s.get_ref().1, cfg, &t)?;
    let cert = peer_cert(s.get_ref().1.peer_certificates());
    let est = established(t.version, party, t.session_keys(&secret), false, cert);
    Ok((TlsStream::Server(s), est))
}

/// The listening side's `HELLO` / `HELLO_REPLY` exchange inside TLS with `party` (named by
/// the client's certificate): the transcript the session keys are bound to.
pub(crate) async fn server_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &LinkConfig,
    party: Party,
) -> Result<Transcript, Error> {
    let (frame_type, payload) = recv(s, cfg, AuthFailure::Malformed, "hello").await?;
    if frame_type != ty::HELLO {
        return Err(refuse_and_fail(
            s,
            cfg,
            refuse::MALFORMED,
            AuthFailure::Malformed,
            format!("expected hello, got frame type {frame_type:#04x}"),
        )
        .await);
    }
    let hello = match Hello::decode(&payload) {
        Ok(h) => h,
        Err(e) => {
            return Err(refuse_and_fail(s, cfg, refuse::MALFORMED, AuthFailure::Malformed, e).await)
        }
    };
    let version = hello.version_max.min(PROTOCOL_VERSION);
    if version < hello.version_min.max(PROTOCOL_VERSION_MIN) {
        let detail = format!(
            "peer speaks versions {}..={}, we {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}",
            hello.version_min, hello.version_max
        );
        return Err(refuse_and_fail(s, cfg, refuse::VERSION, AuthFailure::Version, detail).await);
    }
    if hello.node != party.wire() {
        let detail = format!(
            "peer's hello names party {}, its certificate {party}",
            hello.node
        );
        return Err(
            refuse_and_fail(s, cfg, refuse::WRONG_NODE, AuthFailure::WrongNode, detail).await,
        );
    }
    let nonce_s = nonce()?;
    let reply = HelloReply {
        version,
        node: cfg.me.wire(),
        nonce: nonce_s,
    };
    send(s, ty::HELLO_REPLY, &reply.encode())
        .await
        .map_err(|e| {
            fail(
                cfg,
                AuthFailure::Malformed,
                format!("sending hello reply: {e}"),
            )
        })?;
    let t = Transcript {
        version,
        client: hello.node,
        server: cfg.me.wire(),
        nonce_c: hello.nonce,
        nonce_s,
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        let t = Transcript {
            version: 1,
            client: 0,
            server: 1,
            nonce_c: [1; 32],
            nonce_s: [2; 32],
        };
        let k = t.session_keys(&[7u8; 32]);
        (Sealer::new(&k.c2s_control), Opener::new(&k.c2s_control))
    }

    fn body(frame: &[u8]) -> Vec<u8> {
        frame[4..].to_vec()
    }

    #[test]
    fn sealed_frames_open_in_order() {
        let (mut s, mut o) = pair();
        for i in 0..3u8 {
            let f = s.seal(0x10, &[i; 5]);
            assert_eq!(o.open(body(&f)), Ok((0x10, vec![i; 5])));
        }
    }

    #[test]
    fn replayed_reordered_and_altered_frames_fail() {
        let (mut s, mut o) = pair();
        let f0 = s.seal(0x10, b"zero");
        let f1 = s.seal(0x10, b"one");
        // Reordered: frame 1 checked at counter 0.
        assert_eq!(o.open(body(&f1)), Err(0));
        let (_, mut o) = pair();
        assert!(o.open(body(&f0)).is_ok());
        // Replayed: frame 0 again at counter 1.
        assert_eq!(o.open(body(&f0)), Err(1));
        let (mut s, mut o) = pair();
        let mut f = s.seal(0x10, b"payload");
        f[6] ^= 1;
        assert_eq!(o.open(body(&f)), Err(0));
        // The type byte is covered too.
        let (mut s, mut o) = pair();
        let mut f = s.seal(0x10, b"payload");
        f[4] = 0x11;
        assert_eq!(o.open(body(&f)), Err(0));
    }

    #[test]
    fn directions_and_lanes_have_different_keys_so_frames_cannot_be_reflected_or_moved() {
        let t = Transcript {
            version: 1,
            client: 0,
            server: 1,
            nonce_c: [1; 32],
            nonce_s: [2; 32],
        };
        let k = t.session_keys(&[7u8; 32]);
        let all = [k.c2s_control, k.s2c_control, k.c2s_bulk, k.s2c_bulk];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let mut client_out = Sealer::new(&k.c2s_control);
        let f = client_out.seal(0x10, b"hb");
        // Reflected back to the client, or moved into the bulk lane: both fail.
        assert_eq!(Opener::new(&k.s2c_control).open(body(&f)), Err(0));
        assert_eq!(Opener::new(&k.c2s_bulk).open(body(&f)), Err(0));
        assert!(Opener::new(&k.c2s_control).open(body(&f)).is_ok());
    }

    #[test]
    fn keys_are_bound_to_the_transcript_and_the_exported_secret() {
        let t = Transcript {
            version: 2,
            client: 0,
            server: 1,
            nonce_c: [1; 32],
            nonce_s: [2; 32],
        };
        let k = t.session_keys(&[7u8; 32]).c2s_control;
        let mut other = t.clone();
        other.nonce_s[0] ^= 1;
        assert_ne!(other.session_keys(&[7u8; 32]).c2s_control, k);
        let mut other = t.clone();
        other.client = 2;
        assert_ne!(other.session_keys(&[7u8; 32]).c2s_control, k);
        assert_ne!(t.session_keys(&[8u8; 32]).c2s_control, k);
    }

    /// What the listening side answers, inside TLS, to `sent` from a client whose
    /// certificate named node a: the bytes it wrote, and the handshake's result.
    fn answer(sent: &[u8]) -> (Vec<u8>, Result<Transcript, Error>) {
        use tokio::io::AsyncReadExt as _;
        let (a, b) = (Party::Node(NodeId::A), Party::Node(NodeId::B));
        let cfg = LinkConfig::new(b, &[a], crate::tls::test_credentials(b));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut server_end, mut client_end) = tokio::io::duplex(1 << 16);
            client_end.write_all(sent).await.expect("write");
            client_end.shutdown().await.expect("shutdown");
            let r = server_hello(&mut server_end, &cfg, a).await;
            drop(server_end);
            let mut got = Vec::new();
            client_end.read_to_end(&mut got).await.expect("read");
            (got, r)
        })
    }

    fn hello(version_min: u16, version_max: u16, node: u8) -> Vec<u8> {
        let h = Hello {
            version_min,
            version_max,
            node,
            nonce: [9; 32],
        };
        frame::handshake_frame(ty::HELLO, &h.encode())
    }

    #[test]
    fn the_listener_refuses_bad_hellos_with_a_reason_and_counts_them() {
        let v = PROTOCOL_VERSION.to_be_bytes();
        // A frame of the wrong type: REFUSE reason 1 (malformed) with our version range.
        let (got, r) = answer(&[0, 0, 0, 3, 0x10, 0xde, 0xad]);
        assert_eq!(got, [0, 0, 0, 6, 0x0F, 1, v[0], v[1], v[0], v[1]]);
        assert!(matches!(
            r,
            Err(Error::Auth {
                reason: AuthFailure::Malformed,
                ..
            })
        ));
        // Versions 3..=5 only: REFUSE reason 2.
        let (got, r) = answer(&hello(3, 5, 0));
        assert_eq!(got, [0, 0, 0, 6, 0x0F, 2, v[0], v[1], v[0], v[1]]);
        assert!(matches!(
            r,
            Err(Error::Auth {
                reason: AuthFailure::Version,
                ..
            })
        ));
        // Version 1 (the old pre-shared-key link) is no longer spoken.
        let (_, r) = answer(&hello(1, 1, 0));
        assert!(matches!(
            r,
            Err(Error::Auth {
                reason: AuthFailure::Version,
                ..
            })
        ));
        // A hello naming node b (or the witness) from a client whose certificate names a.
        for other in [1u8, 2] {
            let (got, r) = answer(&hello(PROTOCOL_VERSION, PROTOCOL_VERSION, other));
            assert_eq!(got, [0, 0, 0, 6, 0x0F, 4, v[0], v[1], v[0], v[1]]);
            assert!(matches!(
                r,
                Err(Error::Auth {
                    reason: AuthFailure::WrongNode,
                    ..
                })
            ));
        }
        // The right hello: a reply naming node b, and a transcript binding both parties.
        let (got, r) = answer(&hello(PROTOCOL_VERSION, PROTOCOL_VERSION, 0));
        let t = r.expect("accepted");
        assert_eq!((t.client, t.server, t.version), (0, 1, PROTOCOL_VERSION));
        assert_eq!(got[4], ty::HELLO_REPLY);
    }
}
