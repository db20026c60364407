//! The wire encoding round-trips every message and rejects bad bytes without panicking.

use ha::wire::{decode, encode, DecodeError};
use ha::{HaMsg, Health, LogPos, Role, Run};
use proptest::prelude::*;
use twinrx_types::{Epoch, Millis, NodeId, Offset};

fn arb_log() -> impl Strategy<Value = LogPos> {
    (any::<u64>(), any::<u64>()).prop_map(|(e, o)| LogPos {
        log_epoch: Epoch(e),
        end: Offset(o),
    })
}

fn arb_msg() -> impl Strategy<Value = HaMsg> {
    let e = any::<u64>().prop_map(Epoch);
    let o = any::<u64>().prop_map(Offset);
    let t = any::<u64>().prop_map(Millis);
    let n = (0u8..2).prop_map(NodeId);
    let role = prop_oneof![
        Just(Role::Active),
        Just(Role::Solo),
        Just(Role::Standby),
        Just(Role::Syncing),
        Just(Role::Stopped)
    ];
    let health = (
        any::<bool>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(r, f, d, m, s, l)| Health {
            receivers_ok: r,
            fsync_latency_ms: f,
            disk_free_bytes: d,
            merger_stall_ms: m,
            sink_stall_ms: s,
            sched_lag_ms: l,
        });
    prop_oneof![
        (
            e.clone(),
            role,
            arb_log(),
            o.clone(),
            health,
            any::<bool>(),
            t.clone()
        )
            .prop_map(|(epoch, role, log, commit_end, health, healthy, sent_at)| {
                HaMsg::Heartbeat {
                    epoch,
                    role,
                    log,
                    commit_end,
                    health,
                    healthy,
                    sent_at,
                }
            }),
        (e.clone(), t.clone()).prop_map(|(epoch, echo)| HaMsg::HeartbeatAck { epoch, echo }),
        (
            e.clone(),
            o.clone(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5),
            o.clone()
        )
            .prop_map(|(epoch, end, runs, start)| HaMsg::SyncRequest {
                epoch,
                end,
                start,
                runs: runs
                    .into_iter()
                    .map(|(e, s)| Run {
                        epoch: Epoch(e),
                        start: Offset(s)
                    })
                    .collect()
            }),
        (e.clone(), o.clone(), o.clone(), o.clone(), o.clone()).prop_map(
            |(epoch, truncate_to, target, commit_end, start)| {
                HaMsg::SyncReply {
                    epoch,
                    truncate_to,
                    target,
                    commit_end,
                    start,
                }
            }
        ),
        (e.clone(), o.clone(), o.clone(), e.clone(), o.clone()).prop_map(
            |(epoch, from, upto, entry_epoch, commit_end)| HaMsg::Append {
                epoch,
                from,
                upto,
                entry_epoch,
                commit_end
            }
        ),
        (e.clone(), o.clone()).prop_map(|(epoch, end)| HaMsg::AppendAck { epoch, end }),
        (e.clone(), o.clone()).prop_map(|(epoch, end)| HaMsg::Handover { epoch, end }),
        e.clone().prop_map(|epoch| HaMsg::Leaving { epoch }),
        (e.clone(), n.clone(), arb_log(), t.clone()).prop_map(
            |(epoch, candidate, log, sent_at)| HaMsg::VoteRequest {
                epoch,
                candidate,
                log,
                sent_at
            }
        ),
        (e.clone(), any::<bool>(), e.clone(), any::<u64>(), t.clone()).prop_map(
            |(epoch, granted, voter_epoch, wait_ms, echo)| HaMsg::VoteReply {
                epoch,
                granted,
                voter_epoch,
                wait_ms,
                echo
            }
        ),
        (e.clone(), n.clone(), t.clone(), arb_log()).prop_map(|(epoch, node, sent_at, record)| {
            HaMsg::LeaseRequest {
                epoch,
                node,
                sent_at,
                record,
            }
        }),
        (e.clone(), any::<bool>(), e.clone(), arb_log(), t).prop_map(
            |(epoch, granted, voted, recorded, echo)| {
                HaMsg::LeaseReply {
                    epoch,
                    granted,
                    voted,
                    recorded,
                    echo,
                }
            }
        ),
        (e, n).prop_map(|(epoch, node)| HaMsg::LeaseRelease { epoch, node }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(m in arb_msg()) {
        let mut b = Vec::new();
        encode(&m, &mut b);
        prop_assert_eq!(decode(&b), Ok(m));
    }

    #[test]
    fn every_strict_prefix_is_rejected(m in arb_msg()) {
        let mut b = Vec::new();
        encode(&m, &mut b);
        for cut in 0..b.len() {
            prop_assert!(decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&bytes);
    }
}

#[test]
fn heartbeat_bytes_are_stable() {
    let m = HaMsg::HeartbeatAck {
        epoch: Epoch(2),
        echo: Millis(0x0102),
    };
    let mut b = Vec::new();
    encode(&m, &mut b);
    assert_eq!(b, [1, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(decode(&[2, 1]), Err(DecodeError::Version(2)));
    assert_eq!(decode(&[1, 99]), Err(DecodeError::Tag(99)));
}
