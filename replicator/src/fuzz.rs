//! Entry points for the fuzz targets (`fuzz/`, through `twinrx::fuzz::link`); not an API.
//! Each takes any bytes and must neither panic nor hang.

use tokio::io::AsyncWriteExt;
use twinrx_types::NodeId;

use crate::auth::{self, test_pair};
use crate::config::LinkConfig;
use crate::frame::{decode_ack, decode_batch, ty, ErrorMsg, Hello, HelloReply, ShipRequest};
use crate::tls::Party;

/// `data` as the payload of every frame type the link decodes, then as `type ‖ payload` of a
/// frame sealed under a session's keys, opened by the peer and decoded by its type (what a
/// session does with each frame after the handshake).
pub fn frames(data: &[u8]) {
    let _ = Hello::decode(data);
    let _ = HelloReply::decode(data);
    let _ = ShipRequest::decode(data);
    let _ = decode_batch(data);
    let _ = ErrorMsg::decode(data);
    let _ = decode_ack(data);
    let _ = crate::clock::Clock::decode(data);
    let Some((&frame_type, payload)) = data.split_first() else {
        return;
    };
    let (mut client, mut server) = test_pair(NodeId::A);
    for (sealer, opener) in [
        (&mut client.control_sealer, &mut server.control_opener),
        (&mut client.bulk_sealer, &mut server.bulk_opener),
    ] {
        let mut sealed = sealer.seal(frame_type, payload);
        // The frame as read: without its length field.
        let body = sealed.split_off(4.min(sealed.len()));
        let Ok((t, p)) = opener.open(body) else {
            panic!("a sealed frame did not open");
        };
        assert_eq!((t, p.as_slice()), (frame_type, payload));
        let _ = match t {
            ty::SHIP_REQUEST => ShipRequest::decode(&p).map(drop),
            ty::SHIP_BATCH => decode_batch(&p).map(drop),
            ty::SHIP_ACK => decode_ack(&p).map(drop),
            ty::SHIP_ERROR | ty::COPY_ERROR => ErrorMsg::decode(&p).map(drop),
            ty::CLOCK => crate::clock::Clock::decode(&p).map(drop),
            _ => Ok(()),
        };
    }
}

/// `data` as everything a client sends inside TLS to the listening side of the link once
/// its certificate named node a (what TLS lets through: the bytes before it are rustls's):
/// the server's hello exchange reads it (its replies go nowhere) and must end, refusing or
/// not.
pub fn server_handshake(data: &[u8]) {
    static CREDS: std::sync::OnceLock<Option<std::sync::Arc<crate::Credentials>>> =
        std::sync::OnceLock::new();
    let Some(creds) = CREDS.get_or_init(fuzz_credentials).clone() else {
        return;
    };
    let (a, b) = (Party::Node(NodeId::A), Party::Node(NodeId::B));
    let cfg = LinkConfig::new(b, &[a], creds);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        // Room for all of `data` and the server's replies: neither side waits on the other.
        let room = data.len() + (64 << 10);
        let (mut server_end, mut client_end) = tokio::io::duplex(room);
        if client_end.write_all(data).await.is_err() || client_end.shutdown().await.is_err() {
            return;
        }
        let _ = auth::server_hello(&mut server_end, &cfg, a).await;
    });
}

/// Seed inputs for the `link` target (`tests/fuzz_corpus.rs` writes them to
/// `fuzz/corpus/link`): a client's HELLO frame as the server reads it, and `type ‖ payload`
/// of each post-handshake frame the link decodes, built by the link's own encoders.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::frame::{encode_batch, handshake_frame};
    use twinrx_types::Seq;
    let hello = Hello {
        version_min: crate::frame::PROTOCOL_VERSION,
        version_max: crate::frame::PROTOCOL_VERSION,
        node: 0,
        nonce: [9; 32],
    };
    let typed = |t: u8, p: Vec<u8>| [vec![t], p].concat();
    let request = ShipRequest {
        from: Seq(42),
        window_bytes: 1 << 20,
        copy_empty: false,
        check: Some((Seq(41), [5; 16])),
    };
    let error = ErrorMsg {
        code: 2,
        seq: Seq(7),
        seq2: Seq(9),
        detail: "diverged at seq 7".into(),
    };
    let batch = encode_batch(&[(Seq(1), b"record one".to_vec()), (Seq(2), vec![0; 40])]);
    vec![
        ("hello", handshake_frame(ty::HELLO, &hello.encode())),
        ("ship-request", typed(ty::SHIP_REQUEST, request.encode())),
        ("ship-batch", typed(ty::SHIP_BATCH, batch)),
        (
            "ship-ack",
            typed(ty::SHIP_ACK, 42u64.to_be_bytes().to_vec()),
        ),
        ("ship-error", typed(ty::SHIP_ERROR, error.encode())),
        (
            "clock",
            typed(
                ty::CLOCK,
                crate::clock::Clock {
                    sent_us: 1_765_000_000_000_000,
                    echo_us: 1_764_999_999_990_000,
                    held_us: 2_000,
                }
                .encode(),
            ),
        ),
    ]
}

/// Credentials for the handshake target: a key directory made once per process.
fn fuzz_credentials() -> Option<std::sync::Arc<crate::Credentials>> {
    let dir = std::env::temp_dir().join(format!("twinrx-fuzz-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::tls::init_dir(&dir, 30).ok()?;
    crate::tls::credentials_in(&dir, Party::Node(NodeId::B)).ok()
}
