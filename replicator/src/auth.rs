//! Authentication: the pre-shared-key handshake and the per-frame MAC.
//!
//! Handshake (PROTOCOL.md "Handshake"), four frames, client = the connecting node:
//! 1. client → `HELLO` (magic, version range, node id, 32-byte random nonce `Nc`)
//! 2. server → `HELLO_REPLY` (magic, chosen version, node id, nonce `Ns`)
//! 3. client → `CLIENT_PROOF` = HMAC-SHA256(PSK, "twinrx-link v1 client proof" ‖ T)
//! 4. server → `SERVER_PROOF` = HMAC-SHA256(PSK, "twinrx-link v1 server proof" ‖ T)
//!
//! with the transcript T = version ‖ client node ‖ server node ‖ Nc ‖ Ns. Each proof binds
//! both fresh nonces (no replay of an old handshake), both node ids and the version (no
//! downgrade), and a direction label (a proof cannot be reflected back). The client proves
//! first, so the listening side — the one strangers reach — never computes a MAC for an
//! unauthenticated party. A failing check sends `REFUSE` and closes; every failure is counted
//! by reason in [`LinkStats`].
//!
//! Session keys: HKDF-SHA256 (RFC 5869) with salt Nc ‖ Ns and the PSK as input key
//! material, one 32-byte key per direction and *lane* (info = label ‖ T). A session has two
//! lanes: **bulk** (`SHIP_BATCH` frames only) and **control** (every other frame). Every frame
//! after the handshake carries HMAC-SHA256(key of its direction and lane, counter ‖ type ‖
//! payload) truncated to 16 bytes, where `counter` (u64 BE) counts the frames of that
//! direction and lane from 0 and is never sent: an injected, altered, replayed, reordered
//! (within a lane), dropped-then-continued, reflected or lane-swapped frame fails its check.
//! Lanes have separate counters so that a control frame may overtake queued bulk frames
//! (heartbeats never wait behind journal data) and so that bulk frames can be sealed by the
//! shipper and verified by the copier, off the socket tasks. Tags are compared in constant
//! time (`Mac::verify_truncated_left`).

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use twinrx_types::NodeId;

use crate::config::{LinkConfig, Psk};
use crate::frame::{
    self, encode_refuse, read_frame, refuse, ty, Hello, HelloReply, ReadError,
    HANDSHAKE_FRAME_BYTES_MAX, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, TAG_LEN,
};
use crate::stats::AuthFailure;
use crate::Error;

type HmacSha256 = Hmac<Sha256>;

const LABEL_CLIENT_PROOF: &[u8] = b"twinrx-link v1 client proof";
const LABEL_SERVER_PROOF: &[u8] = b"twinrx-link v1 server proof";
const LABEL_KEY_C2S_CONTROL: &[u8] = b"twinrx-link v1 key client->server control";
const LABEL_KEY_S2C_CONTROL: &[u8] = b"twinrx-link v1 key server->client control";
const LABEL_KEY_C2S_BULK: &[u8] = b"twinrx-link v1 key client->server bulk";
const LABEL_KEY_S2C_BULK: &[u8] = b"twinrx-link v1 key server->client bulk";
const PROOF_LEN: usize = 32;

/// What both proofs and both keys are bound to.
#[derive(Clone, Debug)]
struct Transcript {
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

    fn keyed(psk: &Psk, label: &[u8], t: &Transcript) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(psk.bytes())
            .expect("HMAC takes any key length");
        mac.update(label);
        mac.update(&t.bytes());
        mac
    }

    fn proof(&self, psk: &Psk, label: &[u8]) -> [u8; PROOF_LEN] {
        Transcript::keyed(psk, label, self)
            .finalize()
            .into_bytes()
            .into()
    }

    fn verify(&self, psk: &Psk, label: &[u8], got: &[u8]) -> bool {
        Transcript::keyed(psk, label, self)
            .verify_slice(got)
            .is_ok()
    }

    /// The four session keys: one per direction and lane.
    fn session_keys(&self, psk: &Psk) -> Keys {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&self.nonce_c);
        salt[32..].copy_from_slice(&self.nonce_s);
        let hk = Hkdf::<Sha256>::new(Some(&salt), psk.bytes());
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
    pub peer: NodeId,
    pub control_sealer: Sealer,
    pub control_opener: Opener,
    pub bulk_sealer: Sealer,
    pub bulk_opener: Opener,
}

/// Both ends of a session as a completed handshake would leave them (client, server), for
/// tests that need an authenticated peer that misbehaves, and for the fuzz entry points.
pub(crate) fn test_pair(client: NodeId, psk: &Psk) -> (Established, Established) {
    let t = Transcript {
        version: PROTOCOL_VERSION,
        client: client.0,
        server: client.peer().0,
        nonce_c: [3; 32],
        nonce_s: [4; 32],
    };
    let k = t.session_keys(psk);
    let c = Established {
        version: t.version,
        peer: client.peer(),
        control_sealer: Sealer::new(&k.c2s_control),
        control_opener: Opener::new(&k.s2c_control),
        bulk_sealer: Sealer::new(&k.c2s_bulk),
        bulk_opener: Opener::new(&k.s2c_bulk),
    };
    let s = Established {
        version: t.version,
        peer: client,
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
    tracing::warn!(reason = %reason, detail = %detail, node = %cfg.node, "cluster link handshake failed");
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
        refuse::WRONG_NODE => fail(
            cfg,
            AuthFailure::WrongNode,
            format!("peer does not accept node {} as its peer", cfg.node),
        ),
        refuse::BAD_PROOF => fail(
            cfg,
            AuthFailure::RejectedByPeer,
            "peer refused our proof: the two nodes have different pre-shared keys",
        ),
        other => fail(
            cfg,
            AuthFailure::RejectedByPeer,
            format!("peer refused the handshake (code {other})"),
        ),
    }
}

/// The connecting side's handshake. The caller applies the timeout.
pub(crate) async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &LinkConfig,
) -> Result<Established, Error> {
    let nonce_c = nonce()?;
    let hello = Hello {
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION,
        node: cfg.node.0,
        nonce: nonce_c,
    };
    send(s, ty::HELLO, &hello.encode()).await.map_err(|e| {
        fail(
            cfg,
            AuthFailure::RejectedByPeer,
            format!("sending hello: {e}"),
        )
    })?;
    let (frame_type, payload) = recv(s, cfg, AuthFailure::RejectedByPeer, "hello reply").await?;
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
    if reply.node != cfg.node.peer().0 {
        return Err(fail(
            cfg,
            AuthFailure::WrongNode,
            format!(
                "peer says it is node {}, expected {}",
                NodeId(reply.node),
                cfg.node.peer()
            ),
        ));
    }
    if reply.nonce == nonce_c {
        return Err(fail(cfg, AuthFailure::Malformed, "peer echoed our nonce"));
    }
    let t = Transcript {
        version: reply.version,
        client: cfg.node.0,
        server: reply.node,
        nonce_c,
        nonce_s: reply.nonce,
    };
    send(s, ty::CLIENT_PROOF, &t.proof(&cfg.psk, LABEL_CLIENT_PROOF))
        .await
        .map_err(|e| {
            fail(
                cfg,
                AuthFailure::RejectedByPeer,
                format!("sending proof: {e}"),
            )
        })?;
    let (frame_type, payload) = recv(s, cfg, AuthFailure::RejectedByPeer, "server proof").await?;
    match frame_type {
        ty::SERVER_PROOF => {}
        ty::REFUSE => return Err(refused(cfg, &payload)),
        other => {
            return Err(fail(
                cfg,
                AuthFailure::Malformed,
                format!("expected server proof, got frame type {other:#04x}"),
            ))
        }
    }
    if !t.verify(&cfg.psk, LABEL_SERVER_PROOF, &payload) {
        return Err(fail(
            cfg,
            AuthFailure::BadProof,
            "the listener's proof does not verify: it does not hold our pre-shared key",
        ));
    }
    let k = t.session_keys(&cfg.psk);
    Ok(Established {
        version: t.version,
        peer: NodeId(reply.node),
        control_sealer: Sealer::new(&k.c2s_control),
        control_opener: Opener::new(&k.s2c_control),
        bulk_sealer: Sealer::new(&k.c2s_bulk),
        bulk_opener: Opener::new(&k.s2c_bulk),
    })
}

/// The listening side's handshake. The caller applies the timeout.
pub(crate) async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &LinkConfig,
) -> Result<Established, Error> {
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
    if hello.node != cfg.node.peer().0 {
        let detail = format!(
            "peer says it is node {}, expected {}",
            NodeId(hello.node),
            cfg.node.peer()
        );
        return Err(
            refuse_and_fail(s, cfg, refuse::WRONG_NODE, AuthFailure::WrongNode, detail).await,
        );
    }
    let nonce_s = nonce()?;
    let reply = HelloReply {
        version,
        node: cfg.node.0,
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
    let (frame_type, payload) = recv(s, cfg, AuthFailure::Malformed, "client proof").await?;
    if frame_type != ty::CLIENT_PROOF {
        return Err(refuse_and_fail(
            s,
            cfg,
            refuse::MALFORMED,
            AuthFailure::Malformed,
            format!("expected client proof, got frame type {frame_type:#04x}"),
        )
        .await);
    }
    let t = Transcript {
        version,
        client: hello.node,
        server: cfg.node.0,
        nonce_c: hello.nonce,
        nonce_s,
    };
    if !t.verify(&cfg.psk, LABEL_CLIENT_PROOF, &payload) {
        return Err(refuse_and_fail(
            s,
            cfg,
            refuse::BAD_PROOF,
            AuthFailure::BadProof,
            "the connecting node's proof does not verify: it does not hold our pre-shared key",
        )
        .await);
    }
    send(s, ty::SERVER_PROOF, &t.proof(&cfg.psk, LABEL_SERVER_PROOF))
        .await
        .map_err(|e| {
            fail(
                cfg,
                AuthFailure::RejectedByPeer,
                format!("sending proof: {e}"),
            )
        })?;
    let k = t.session_keys(&cfg.psk);
    Ok(Established {
        version,
        peer: NodeId(hello.node),
        control_sealer: Sealer::new(&k.s2c_control),
        control_opener: Opener::new(&k.c2s_control),
        bulk_sealer: Sealer::new(&k.s2c_bulk),
        bulk_opener: Opener::new(&k.c2s_bulk),
    })
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
        let psk = Psk::new(vec![7u8; 32]).expect("long enough");
        let k = t.session_keys(&psk);
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
        let psk = Psk::new(vec![7u8; 32]).expect("long enough");
        let k = t.session_keys(&psk);
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
    fn proofs_are_bound_to_direction_and_transcript() {
        let psk = Psk::new(vec![7u8; 32]).expect("long enough");
        let t = Transcript {
            version: 1,
            client: 0,
            server: 1,
            nonce_c: [1; 32],
            nonce_s: [2; 32],
        };
        let p = t.proof(&psk, LABEL_CLIENT_PROOF);
        assert!(t.verify(&psk, LABEL_CLIENT_PROOF, &p));
        assert!(!t.verify(&psk, LABEL_SERVER_PROOF, &p));
        let mut other = t.clone();
        other.nonce_s[0] ^= 1;
        assert!(!other.verify(&psk, LABEL_CLIENT_PROOF, &p));
        let wrong = Psk::new(vec![8u8; 32]).expect("long enough");
        assert!(!t.verify(&wrong, LABEL_CLIENT_PROOF, &p));
        assert!(!t.verify(&psk, LABEL_CLIENT_PROOF, &p[..16]));
    }
}
