//! Unit-level tests of the node core and the witness: exact action lists for the key
//! transitions (openraft style) and the vote rules as tables.

use ha::node::{common_prefix, common_prefix_from};
use ha::*;
use twinrx_types::{Epoch, Millis, NodeId, Offset};

fn core(node: NodeId, now: u64, restored: Restored) -> HaCore {
    let cfg = Config::new(node).validate().expect("defaults are valid");
    HaCore::new(cfg, Millis(now), restored)
}

/// A core that has sent its first heartbeats (due at start).
fn started(node: NodeId, now: u64, restored: Restored) -> HaCore {
    let mut c = core(node, now, restored);
    c.handle_timeout(Millis(now));
    drain(&mut c);
    c
}

fn drain(c: &mut HaCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn hb(epoch: u64, role: Role, log: LogPos, sent_at: u64) -> HaMsg {
    HaMsg::Heartbeat {
        epoch: Epoch(epoch),
        role,
        log,
        commit_end: Offset(0),
        health: Health::default(),
        healthy: true,
        sent_at: Millis(sent_at),
    }
}

fn to_a(msg: HaMsg) -> Action {
    Action::Send {
        to: Party::Node(NodeId::A),
        link: None,
        msg,
    }
}

fn to_b(link: Option<u8>, msg: HaMsg) -> Action {
    Action::Send {
        to: Party::Node(NodeId::B),
        link,
        msg,
    }
}

/// Cold start of A with a witness: heartbeats, then (after the start-up promise and the
/// suspicion time) a campaign, the witness's grant, persist, publish.
#[test]
fn cold_start_elects_with_the_witness_vote() {
    let mut a = core(NodeId::A, 1000, Restored::default());
    a.handle_timeout(Millis(1000));
    let log0 = LogPos::default();
    assert_eq!(
        drain(&mut a),
        vec![
            to_b(Some(0), hb(0, Role::Syncing, log0, 1000)),
            to_b(Some(1), hb(0, Role::Syncing, log0, 1000)),
        ]
    );
    // Promise after start: lease 800 + margin 100 → 1900 (suspicion at 1800 already).
    assert_eq!(a.poll_deadline(), Some(Millis(1200)));
    a.handle_timeout(Millis(1900));
    let vote = HaMsg::VoteRequest {
        epoch: Epoch(1),
        candidate: NodeId::A,
        log: log0,
        sent_at: Millis(1900),
    };
    assert_eq!(
        drain(&mut a),
        vec![
            to_b(Some(0), hb(0, Role::Syncing, log0, 1900)),
            to_b(Some(1), hb(0, Role::Syncing, log0, 1900)),
            Action::Send {
                to: Party::Witness,
                link: None,
                msg: vote.clone()
            },
            to_b(None, vote),
        ]
    );
    let grant = HaMsg::VoteReply {
        epoch: Epoch(1),
        granted: true,
        voter_epoch: Epoch(1),
        wait_ms: 0,
        echo: Millis(1900),
    };
    a.handle_input(Millis(1903), Input::Witness(grant));
    let st = EpochState {
        epoch: Epoch(1),
        log_epoch: Epoch(1),
    };
    assert_eq!(drain(&mut a), vec![Action::PersistEpoch(st)]);
    a.handle_input(Millis(1905), Input::EpochPersisted(st));
    assert_eq!(
        drain(&mut a),
        vec![Action::StartPublishing {
            epoch: Epoch(1),
            from_offset: Offset(0),
            lease_until: Millis(2700)
        }]
    );
    assert_eq!(a.role(), Role::Solo, "no standby yet");
    // Without renewal the lease lapses: self-fencing, exactly at lease_until.
    assert_eq!(a.poll_deadline(), Some(Millis(2100)));
    for t in [2100, 2300, 2500] {
        a.handle_timeout(Millis(t));
        drain(&mut a);
    }
    a.handle_timeout(Millis(2700));
    let acts = drain(&mut a);
    assert!(
        acts.contains(&Action::StopPublishing(StopReason::LeaseExpired)),
        "{acts:?}"
    );
}

/// A standby that hears an active of a higher epoch adopts it (persist first), then asks to
/// sync, and acks heartbeats (renewing the active's lease) only once the epoch is durable.
#[test]
fn follower_adopts_higher_epoch_then_syncs_and_acks() {
    let restored = Restored {
        state: EpochState {
            epoch: Epoch(3),
            log_epoch: Epoch(3),
        },
        end: Offset(10),
        start: Offset(0),
        runs: vec![Run {
            epoch: Epoch(3),
            start: Offset(0),
        }],
    };
    let mut b = started(NodeId::B, 0, restored);
    let log = LogPos {
        log_epoch: Epoch(4),
        end: Offset(12),
    };
    b.handle_input(
        Millis(10),
        Input::Peer {
            link: 1,
            msg: hb(4, Role::Active, log, 500),
        },
    );
    let st = EpochState {
        epoch: Epoch(4),
        log_epoch: Epoch(3),
    };
    assert_eq!(drain(&mut b), vec![Action::PersistEpoch(st)]);
    b.handle_input(Millis(12), Input::EpochPersisted(st));
    let a = Party::Node(NodeId::A);
    assert_eq!(
        drain(&mut b),
        vec![
            Action::StartResync,
            Action::Send {
                to: a,
                link: None,
                msg: HaMsg::SyncRequest {
                    epoch: Epoch(4),
                    end: Offset(10),
                    runs: vec![Run {
                        epoch: Epoch(3),
                        start: Offset(0)
                    }],
                    start: Offset(0),
                }
            },
        ]
    );
    b.handle_input(
        Millis(20),
        Input::Peer {
            link: 0,
            msg: hb(4, Role::Active, log, 700),
        },
    );
    assert_eq!(
        drain(&mut b),
        vec![Action::Send {
            to: a,
            link: Some(0),
            msg: HaMsg::HeartbeatAck {
                epoch: Epoch(4),
                echo: Millis(700)
            }
        }]
    );
    // The active says: keep 8, catch up to 12.
    let reply = HaMsg::SyncReply {
        epoch: Epoch(4),
        truncate_to: Offset(8),
        target: Offset(12),
        commit_end: Offset(8),
        start: Offset(0),
    };
    b.handle_input(
        Millis(21),
        Input::Peer {
            link: 0,
            msg: reply,
        },
    );
    assert_eq!(
        drain(&mut b),
        vec![
            Action::TruncateStream { from: Offset(8) },
            Action::Committed { upto: Offset(8) },
            Action::Send {
                to: a,
                link: None,
                msg: HaMsg::AppendAck {
                    epoch: Epoch(4),
                    end: Offset(8)
                }
            },
        ]
    );
    let append = HaMsg::Append {
        epoch: Epoch(4),
        from: Offset(8),
        upto: Offset(12),
        entry_epoch: Epoch(4),
        commit_end: Offset(8),
    };
    b.handle_input(
        Millis(22),
        Input::Peer {
            link: 0,
            msg: append,
        },
    );
    assert_eq!(
        drain(&mut b),
        vec![Action::AcceptEntries {
            from: Offset(8),
            upto: Offset(12),
            entry_epoch: Epoch(4)
        }]
    );
    b.handle_input(Millis(25), Input::StreamAppended { upto: Offset(12) });
    let caught_up = EpochState {
        epoch: Epoch(4),
        log_epoch: Epoch(4),
    };
    assert_eq!(
        drain(&mut b),
        vec![
            Action::PersistEpoch(caught_up),
            Action::Send {
                to: a,
                link: None,
                msg: HaMsg::AppendAck {
                    epoch: Epoch(4),
                    end: Offset(12)
                }
            },
        ]
    );
    b.handle_input(Millis(26), Input::EpochPersisted(caught_up));
    b.handle_input(Millis(27), Input::ResyncDone);
    assert_eq!(b.role(), Role::Standby);
    assert_eq!(
        b.log_pos(),
        LogPos {
            log_epoch: Epoch(4),
            end: Offset(12)
        }
    );
}

/// A stale message (lower epoch) is dropped and counted, never acted on.
#[test]
fn lower_epoch_messages_are_rejected() {
    let restored = Restored {
        state: EpochState {
            epoch: Epoch(5),
            log_epoch: Epoch(5),
        },
        ..Restored::default()
    };
    let mut b = started(NodeId::B, 0, restored);
    b.handle_input(
        Millis(1),
        Input::Peer {
            link: 0,
            msg: hb(4, Role::Active, LogPos::default(), 1),
        },
    );
    let append = HaMsg::Append {
        epoch: Epoch(4),
        from: Offset(0),
        upto: Offset(3),
        entry_epoch: Epoch(4),
        commit_end: Offset(0),
    };
    b.handle_input(
        Millis(2),
        Input::Peer {
            link: 0,
            msg: append,
        },
    );
    assert_eq!(drain(&mut b), vec![]);
    assert_eq!(b.stats().stale_messages_total, 2);
    assert_eq!(b.epoch(), Epoch(5));
}

/// Vote rules of a node, as a table: (voter epoch, voter log end, request epoch, candidate
/// log end, after the promise?) → granted.
#[test]
fn node_vote_rules_table() {
    let rows: &[(u64, u64, u64, u64, bool, bool)] = &[
        // voter e, voter end, req e, cand end, promise over, granted
        (1, 10, 2, 10, true, true),   // equal stream, higher epoch
        (1, 10, 2, 11, true, true),   // candidate ahead
        (1, 10, 2, 9, true, false),   // candidate lacks entries
        (2, 10, 2, 10, true, false),  // one vote per epoch
        (3, 10, 2, 10, true, false),  // lower epoch
        (1, 10, 2, 10, false, false), // promise to the active's lease still runs
    ];
    for &(ve, vend, re, cend, over, granted) in rows {
        let restored = Restored {
            state: EpochState {
                epoch: Epoch(ve),
                log_epoch: Epoch(1),
            },
            end: Offset(vend),
            start: Offset(0),
            runs: vec![Run {
                epoch: Epoch(1),
                start: Offset(0),
            }],
        };
        let mut b = started(NodeId::B, 0, restored);
        // The start-up promise runs until 900.
        let now = if over { 900 } else { 899 };
        let log = LogPos {
            log_epoch: Epoch(1),
            end: Offset(cend),
        };
        let req = HaMsg::VoteRequest {
            epoch: Epoch(re),
            candidate: NodeId::A,
            log,
            sent_at: Millis(7),
        };
        b.handle_input(Millis(now), Input::Peer { link: 0, msg: req });
        let acts = drain(&mut b);
        let persisted = acts.iter().any(|a| matches!(a, Action::PersistEpoch(_)));
        let refused = acts.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    msg: HaMsg::VoteReply { granted: false, .. },
                    ..
                }
            )
        });
        assert_eq!(
            persisted, granted,
            "row {ve} {vend} {re} {cend} {over}: {acts:?}"
        );
        assert_eq!(
            refused, !granted,
            "row {ve} {vend} {re} {cend} {over}: {acts:?}"
        );
        if granted {
            // The reply leaves only once the vote is durable.
            b.handle_input(
                Millis(now),
                Input::EpochPersisted(EpochState {
                    epoch: Epoch(re),
                    log_epoch: Epoch(1),
                }),
            );
            let acts = drain(&mut b);
            assert!(
                acts.iter().any(|a| matches!(
                    a,
                    Action::Send {
                        msg: HaMsg::VoteReply { granted: true, .. },
                        ..
                    }
                )),
                "{acts:?}"
            );
        }
    }
}

fn witness_drain(w: &mut Witness) -> Vec<WitnessAction> {
    std::iter::from_fn(|| w.poll_action()).collect()
}

/// Witness rules as a table: (voted, record end, request, candidate end, now) → granted.
#[test]
fn witness_vote_rules_table() {
    let rows: &[(u64, u64, u64, u64, u64, bool)] = &[
        (1, 10, 2, 10, 900, true),  // up to date, promise over
        (1, 10, 2, 9, 900, false),  // stale node: lacks committed entries
        (1, 10, 1, 10, 900, false), // already voted in this epoch
        (1, 10, 2, 10, 899, false), // promise after restart still runs
        (0, 0, 1, 0, 900, true),    // fresh pair
    ];
    for &(voted, rec, e, cend, now, granted) in rows {
        let st = WitnessState {
            voted: Epoch(voted),
            record: LogPos {
                log_epoch: Epoch(1),
                end: Offset(rec),
            },
        };
        let mut w = Witness::new(WitnessConfig::default(), Millis(0), st);
        let log = LogPos {
            log_epoch: Epoch(1),
            end: Offset(cend),
        };
        w.handle_input(
            Millis(now),
            NodeId::B,
            HaMsg::VoteRequest {
                epoch: Epoch(e),
                candidate: NodeId::B,
                log,
                sent_at: Millis(3),
            },
        );
        let acts = witness_drain(&mut w);
        if granted {
            let want = WitnessState {
                voted: Epoch(e),
                ..st
            };
            assert_eq!(
                acts,
                vec![WitnessAction::Persist(want)],
                "row {voted} {rec} {e} {cend} {now}"
            );
            w.handle_persisted(Millis(now + 1), want);
            assert_eq!(
                witness_drain(&mut w),
                vec![WitnessAction::Send {
                    to: NodeId::B,
                    msg: HaMsg::VoteReply {
                        epoch: Epoch(e),
                        granted: true,
                        voter_epoch: Epoch(e),
                        wait_ms: 0,
                        echo: Millis(3)
                    }
                }]
            );
        } else {
            assert!(
                matches!(
                    &acts[..],
                    [WitnessAction::Send {
                        msg: HaMsg::VoteReply { granted: false, .. },
                        ..
                    }]
                ),
                "row {voted} {rec} {e} {cend} {now}: {acts:?}"
            );
        }
    }
}

/// A lease grant records the solo active's stream (that record commits it), is persisted
/// before the reply, and then blocks votes for lease + margin.
#[test]
fn witness_records_before_granting_and_then_blocks_votes() {
    let mut w = Witness::new(WitnessConfig::default(), Millis(0), WitnessState::default());
    let record = LogPos {
        log_epoch: Epoch(1),
        end: Offset(40),
    };
    w.handle_input(
        Millis(1000),
        NodeId::A,
        HaMsg::LeaseRequest {
            epoch: Epoch(1),
            node: NodeId::A,
            sent_at: Millis(9),
            record,
        },
    );
    let st = WitnessState {
        voted: Epoch(1),
        record,
    };
    assert_eq!(witness_drain(&mut w), vec![WitnessAction::Persist(st)]);
    w.handle_persisted(Millis(1002), st);
    assert_eq!(
        witness_drain(&mut w),
        vec![WitnessAction::Send {
            to: NodeId::A,
            msg: HaMsg::LeaseReply {
                epoch: Epoch(1),
                granted: true,
                voted: Epoch(1),
                recorded: record,
                echo: Millis(9)
            }
        }]
    );
    let req = |end| HaMsg::VoteRequest {
        epoch: Epoch(2),
        candidate: NodeId::B,
        log: LogPos {
            log_epoch: Epoch(1),
            end: Offset(end),
        },
        sent_at: Millis(5),
    };
    w.handle_input(Millis(1500), NodeId::B, req(40));
    assert_eq!(
        witness_drain(&mut w),
        vec![WitnessAction::Send {
            to: NodeId::B,
            msg: HaMsg::VoteReply {
                epoch: Epoch(2),
                granted: false,
                voter_epoch: Epoch(1),
                wait_ms: 402,
                echo: Millis(5)
            }
        }]
    );
    // After the promise: a stale candidate is still refused, an up-to-date one granted.
    w.handle_input(Millis(1902), NodeId::B, req(39));
    assert!(matches!(
        &witness_drain(&mut w)[..],
        [WitnessAction::Send {
            msg: HaMsg::VoteReply { granted: false, .. },
            ..
        }]
    ));
    w.handle_input(Millis(1902), NodeId::B, req(40));
    assert!(matches!(
        &witness_drain(&mut w)[..],
        [WitnessAction::Persist(_)]
    ));
    // The deposed active's lease requests are now refused.
    w.handle_input(
        Millis(1903),
        NodeId::A,
        HaMsg::LeaseRequest {
            epoch: Epoch(1),
            node: NodeId::A,
            sent_at: Millis(10),
            record,
        },
    );
    assert!(matches!(
        &witness_drain(&mut w)[..],
        [WitnessAction::Send {
            msg: HaMsg::LeaseReply { granted: false, .. },
            ..
        }]
    ));
}

#[test]
fn common_prefix_table() {
    let r = |v: &[(u64, u64)]| {
        v.iter()
            .map(|&(e, s)| Run {
                epoch: Epoch(e),
                start: Offset(s),
            })
            .collect::<Vec<_>>()
    };
    type Runs = &'static [(u64, u64)];
    let rows: &[(Runs, u64, Runs, u64, u64)] = &[
        (&[(1, 0)], 10, &[(1, 0)], 7, 7),                 // prefix
        (&[(1, 0), (2, 5)], 9, &[(1, 0)], 8, 5),          // diverged at the new epoch's start
        (&[(1, 0), (3, 6)], 9, &[(1, 0), (2, 4)], 8, 4),  // both moved on differently
        (&[], 0, &[(1, 0)], 4, 0),                        // empty
        (&[(1, 0), (2, 5)], 9, &[(1, 0), (2, 5)], 12, 9), // same history, other is longer
    ];
    for (a, ae, b, be, want) in rows {
        assert_eq!(
            common_prefix(&r(a), Offset(*ae), &r(b), Offset(*be)),
            Offset(*want),
            "{a:?} {b:?}"
        );
    }
}

/// Streams whose first entries retention deleted are compared from the later start on.
#[test]
fn common_prefix_from_table() {
    let r = |v: &[(u64, u64)]| {
        v.iter()
            .map(|&(e, s)| Run {
                epoch: Epoch(e),
                start: Offset(s),
            })
            .collect::<Vec<_>>()
    };
    type Runs = &'static [(u64, u64)];
    let rows: &[(Runs, u64, Runs, u64, u64, u64)] = &[
        (&[(1, 0)], 40, &[(1, 0)], 10, 30, 10), // a follower that ends before the start
        (&[(1, 0)], 40, &[(1, 30)], 35, 30, 35), // restarted at 30 (no run below): same
        (&[(1, 0), (2, 32)], 40, &[(1, 30)], 35, 30, 32), // diverged after the start
        (&[(1, 0), (2, 20)], 40, &[(2, 25)], 35, 25, 35), // restarted inside a run
        (&[(1, 0)], 40, &[], 0, 30, 0),         // empty
    ];
    for (a, ae, b, be, from, want) in rows {
        assert_eq!(
            common_prefix_from(&r(a), Offset(*ae), &r(b), Offset(*be), Offset(*from)),
            Offset(*want),
            "{a:?} {b:?} from {from}"
        );
    }
}

/// The active's retention deleted entries below 30 (all committed); a standby that was away
/// holds 0..10: it is told to restart its copy at 30, and the active sends from there.
#[test]
fn a_follower_behind_the_first_retained_entry_restarts_at_it() {
    let mut a = active_with_standby(40);
    a.handle_input(Millis(1970), Input::StreamStart { start: Offset(30) });
    assert_eq!(a.status().start, Offset(30));
    let sync = HaMsg::SyncRequest {
        epoch: Epoch(1),
        end: Offset(10),
        runs: vec![Run {
            epoch: Epoch(1),
            start: Offset(0),
        }],
        start: Offset(0),
    };
    a.handle_input(Millis(1971), Input::Peer { link: 0, msg: sync });
    assert_eq!(
        drain(&mut a),
        vec![to_b(
            None,
            HaMsg::SyncReply {
                epoch: Epoch(1),
                truncate_to: Offset(10),
                target: Offset(40),
                commit_end: Offset(40),
                start: Offset(30),
            }
        )]
    );
    a.handle_input(
        Millis(1972),
        Input::Peer {
            link: 0,
            msg: HaMsg::AppendAck {
                epoch: Epoch(1),
                end: Offset(30),
            },
        },
    );
    let acts = drain(&mut a);
    assert!(
        acts.iter().any(|m| matches!(
            m,
            Action::Send {
                msg: HaMsg::Append {
                    from: Offset(30),
                    ..
                },
                ..
            }
        )),
        "appends start at the first retained entry: {acts:?}"
    );

    // A stream that holds what the active retains is not restarted.
    let mut a = active_with_standby(40);
    a.handle_input(Millis(1970), Input::StreamStart { start: Offset(30) });
    let sync = HaMsg::SyncRequest {
        epoch: Epoch(1),
        end: Offset(35),
        runs: vec![Run {
            epoch: Epoch(1),
            start: Offset(20),
        }],
        start: Offset(20),
    };
    a.handle_input(Millis(1971), Input::Peer { link: 0, msg: sync });
    let acts = drain(&mut a);
    assert!(
        acts.contains(&to_b(
            None,
            HaMsg::SyncReply {
                epoch: Epoch(1),
                truncate_to: Offset(35),
                target: Offset(40),
                commit_end: Offset(40),
                start: Offset(30),
            }
        )),
        "{acts:?}"
    );
}

/// The follower's side: a `SyncReply` whose `start` is beyond what it would keep empties its
/// stream and continues at `start`; its position and commit point are `start`.
#[test]
fn a_follower_told_to_restart_empties_its_stream_and_continues_at_start() {
    let restored = Restored {
        state: EpochState {
            epoch: Epoch(4),
            log_epoch: Epoch(4),
        },
        end: Offset(10),
        start: Offset(0),
        runs: vec![Run {
            epoch: Epoch(4),
            start: Offset(0),
        }],
    };
    let mut b = started(NodeId::B, 0, restored);
    let log = LogPos {
        log_epoch: Epoch(4),
        end: Offset(40),
    };
    b.handle_input(
        Millis(10),
        Input::Peer {
            link: 0,
            msg: hb(4, Role::Active, log, 10),
        },
    );
    drain(&mut b);
    let reply = HaMsg::SyncReply {
        epoch: Epoch(4),
        truncate_to: Offset(10),
        target: Offset(40),
        commit_end: Offset(40),
        start: Offset(30),
    };
    b.handle_input(
        Millis(11),
        Input::Peer {
            link: 0,
            msg: reply,
        },
    );
    let a = Party::Node(NodeId::A);
    assert_eq!(
        drain(&mut b),
        vec![
            Action::ResetStream { start: Offset(30) },
            Action::Committed { upto: Offset(30) },
            Action::Send {
                to: a,
                link: None,
                msg: HaMsg::AppendAck {
                    epoch: Epoch(4),
                    end: Offset(30)
                }
            },
        ]
    );
    assert_eq!(b.status().start, Offset(30));
    b.handle_input(
        Millis(12),
        Input::Peer {
            link: 0,
            msg: HaMsg::Append {
                epoch: Epoch(4),
                from: Offset(30),
                upto: Offset(40),
                entry_epoch: Epoch(4),
                commit_end: Offset(40),
            },
        },
    );
    assert_eq!(
        drain(&mut b),
        vec![Action::AcceptEntries {
            from: Offset(30),
            upto: Offset(40),
            entry_epoch: Epoch(4)
        }]
    );
    b.handle_input(Millis(13), Input::StreamAppended { upto: Offset(40) });
    drain(&mut b);
    assert_eq!(
        b.log_pos(),
        LogPos {
            log_epoch: Epoch(4),
            end: Offset(40)
        }
    );
}

#[test]
fn config_validation_reports_every_problem() {
    let mut c = Config::new(NodeId::A);
    c.links = 0;
    c.lease_ms = 100;
    c.failover_after_ms = 300;
    let err = c.validate().expect_err("three problems");
    assert_eq!(err.problems.len(), 3, "{err}");
    assert!(err.to_string().contains("ha.links = 0"), "{err}");
}

/// Builds A as the active of epoch 1 (won with the witness's vote at t=1900, publishing), with
/// B heard as an in-sync standby that holds the stream up to `end`.
fn active_with_standby(end: u64) -> HaCore {
    let mut a = core(NodeId::A, 1000, Restored::default());
    a.handle_timeout(Millis(1000));
    a.handle_timeout(Millis(1900));
    let grant = HaMsg::VoteReply {
        epoch: Epoch(1),
        granted: true,
        voter_epoch: Epoch(1),
        wait_ms: 0,
        echo: Millis(1900),
    };
    a.handle_input(Millis(1901), Input::Witness(grant));
    a.handle_input(
        Millis(1902),
        Input::EpochPersisted(EpochState {
            epoch: Epoch(1),
            log_epoch: Epoch(1),
        }),
    );
    a.handle_input(Millis(1950), Input::StreamAppended { upto: Offset(end) });
    let sync = HaMsg::SyncRequest {
        epoch: Epoch(1),
        end: Offset(0),
        runs: vec![],
        start: Offset(0),
    };
    a.handle_input(Millis(1960), Input::Peer { link: 0, msg: sync });
    a.handle_input(
        Millis(1961),
        Input::Peer {
            link: 0,
            msg: HaMsg::AppendAck {
                epoch: Epoch(1),
                end: Offset(end),
            },
        },
    );
    let log = LogPos {
        log_epoch: Epoch(1),
        end: Offset(end),
    };
    a.handle_input(
        Millis(1962),
        Input::Peer {
            link: 0,
            msg: hb(1, Role::Standby, log, 50),
        },
    );
    drain(&mut a);
    assert_eq!(a.role(), Role::Active);
    assert_eq!(a.commit_end(), Offset(end));
    a
}

/// Planned switchover: stop publishing at once, hand over at the end both hold, release the
/// lease at the witness; no timeout is waited for.
#[test]
fn switchover_hands_over_at_once() {
    let mut a = active_with_standby(5);
    a.handle_input(Millis(2000), Input::Switchover);
    assert_eq!(
        drain(&mut a),
        vec![
            Action::StopPublishing(StopReason::Handover),
            to_b(
                None,
                HaMsg::Handover {
                    epoch: Epoch(1),
                    end: Offset(5)
                }
            ),
            Action::Send {
                to: Party::Witness,
                link: None,
                msg: HaMsg::LeaseRelease {
                    epoch: Epoch(1),
                    node: NodeId::A
                }
            },
        ]
    );
    let s = a.stats();
    assert_eq!(s.last_handover, Some(HandoverReason::Switchover));
    assert_eq!(
        (
            s.handovers_total,
            s.switchover_handovers_total,
            s.health_handovers_total
        ),
        (1, 1, 0)
    );
    // The standby's vote request is granted at once (no promise to wait for).
    let log = LogPos {
        log_epoch: Epoch(1),
        end: Offset(5),
    };
    let req = HaMsg::VoteRequest {
        epoch: Epoch(2),
        candidate: NodeId::B,
        log,
        sent_at: Millis(77),
    };
    a.handle_input(Millis(2001), Input::Peer { link: 0, msg: req });
    let st = EpochState {
        epoch: Epoch(2),
        log_epoch: Epoch(1),
    };
    assert_eq!(drain(&mut a), vec![Action::PersistEpoch(st)]);
    a.handle_input(Millis(2002), Input::EpochPersisted(st));
    assert_eq!(
        drain(&mut a),
        vec![to_b(
            None,
            HaMsg::VoteReply {
                epoch: Epoch(2),
                granted: true,
                voter_epoch: Epoch(2),
                wait_ms: 0,
                echo: Millis(77)
            }
        )]
    );
}

/// An active that hears an active of a higher epoch stops publishing before anything else.
#[test]
fn deposed_active_stops_first() {
    let mut a = active_with_standby(3);
    let log = LogPos {
        log_epoch: Epoch(2),
        end: Offset(3),
    };
    a.handle_input(
        Millis(2050),
        Input::Peer {
            link: 1,
            msg: hb(2, Role::Active, log, 9),
        },
    );
    assert_eq!(
        drain(&mut a),
        vec![
            Action::StopPublishing(StopReason::Deposed),
            Action::PersistEpoch(EpochState {
                epoch: Epoch(2),
                log_epoch: Epoch(1)
            }),
        ]
    );
    assert_eq!(a.role(), Role::Syncing);
}

/// An unhealthy active hands over to a healthy in-sync standby.
#[test]
fn unhealthy_active_hands_over() {
    let mut a = active_with_standby(4);
    let stalled = Health {
        merger_stall_ms: 1200,
        ..Health::default()
    };
    a.handle_input(Millis(2050), Input::Health(stalled));
    // Not before the standby's health is known to be as recent as the trouble here.
    assert!(!drain(&mut a).contains(&Action::StopPublishing(StopReason::Handover)));
    a.handle_input(Millis(2250), standby_heartbeat(Health::default(), 70));
    let acts = drain(&mut a);
    let at = acts
        .iter()
        .position(|x| *x == Action::StopPublishing(StopReason::Handover))
        .unwrap_or_else(|| panic!("no handover: {acts:?}"));
    assert_eq!(
        acts[at + 1],
        to_b(
            None,
            HaMsg::Handover {
                epoch: Epoch(1),
                end: Offset(4)
            }
        )
    );
    let s = a.stats();
    assert_eq!(s.last_handover, Some(HandoverReason::Unhealthy));
    assert_eq!(
        (s.health_handovers_total, s.switchover_handovers_total),
        (1, 0)
    );
}

/// B's heartbeat as A's in-sync standby of epoch 1 holding 4 entries, with `health`.
fn standby_heartbeat(health: Health, sent_at: u64) -> Input {
    let log = LogPos {
        log_epoch: Epoch(1),
        end: Offset(4),
    };
    Input::Peer {
        link: 0,
        msg: HaMsg::Heartbeat {
            epoch: Epoch(1),
            role: Role::Standby,
            log,
            commit_end: Offset(4),
            health,
            healthy: true,
            sent_at: Millis(sent_at),
        },
    }
}

/// A heartbeat from the active A whose pipeline is outside its limits (`health`).
fn hb_unhealthy(epoch: u64, log: LogPos, sent_at: u64, health: Health) -> HaMsg {
    HaMsg::Heartbeat {
        epoch: Epoch(epoch),
        role: Role::Active,
        log,
        commit_end: Offset(0),
        health,
        healthy: false,
        sent_at: Millis(sent_at),
    }
}

/// B as the caught-up standby of A's epoch 4 holding 12 entries (the inputs of
/// `follower_adopts_higher_epoch_then_syncs_and_acks`, without its checks).
fn caught_up_standby_b() -> HaCore {
    let restored = Restored {
        state: EpochState {
            epoch: Epoch(4),
            log_epoch: Epoch(4),
        },
        end: Offset(12),
        start: Offset(0),
        runs: vec![Run {
            epoch: Epoch(4),
            start: Offset(0),
        }],
    };
    let mut b = started(NodeId::B, 0, restored);
    let log = LogPos {
        log_epoch: Epoch(4),
        end: Offset(12),
    };
    let peer = |msg| Input::Peer { link: 0, msg };
    b.handle_input(Millis(10), peer(hb(4, Role::Active, log, 500)));
    b.handle_input(
        Millis(21),
        peer(HaMsg::SyncReply {
            epoch: Epoch(4),
            truncate_to: Offset(12),
            target: Offset(12),
            commit_end: Offset(12),
            start: Offset(0),
        }),
    );
    b.handle_input(Millis(27), Input::ResyncDone);
    drain(&mut b);
    assert_eq!(b.role(), Role::Standby);
    b
}

/// A connected standby that fell behind the active's first retained entry (the active's
/// peer hold is capped): the active tells it once a tick to restart its copy there; the
/// standby, whose entries are then all committed, empties its stream and catches up from it.
/// A restart that would not be beyond what it holds is stale.
#[test]
fn a_connected_standby_behind_the_first_retained_entry_is_told_to_restart() {
    let mut a = active_with_standby(40);
    a.handle_input(Millis(1980), Input::StreamAppended { upto: Offset(100) });
    a.handle_input(Millis(1981), Input::StreamStart { start: Offset(60) });
    drain(&mut a);
    a.handle_timeout(Millis(2100));
    let acts = drain(&mut a);
    let restart = HaMsg::SyncReply {
        epoch: Epoch(1),
        truncate_to: Offset(40),
        target: Offset(100),
        commit_end: Offset(40),
        start: Offset(60),
    };
    assert!(acts.contains(&to_b(None, restart)), "{acts:?}");
    assert!(
        !acts.iter().any(|m| matches!(
            m,
            Action::Send {
                msg: HaMsg::Append { from, .. },
                ..
            } if from.0 < 60
        )),
        "nothing below the first retained entry is sent: {acts:?}"
    );

    let mut b = caught_up_standby_b();
    let peer = |msg| Input::Peer { link: 0, msg };
    let stale = b.stats().stale_messages_total;
    b.handle_input(
        Millis(30),
        peer(HaMsg::SyncReply {
            epoch: Epoch(4),
            truncate_to: Offset(5),
            target: Offset(50),
            commit_end: Offset(12),
            start: Offset(12),
        }),
    );
    assert_eq!(drain(&mut b), vec![], "not beyond what it holds: stale");
    assert_eq!(b.stats().stale_messages_total, stale + 1);
    b.handle_input(
        Millis(31),
        peer(HaMsg::SyncReply {
            epoch: Epoch(4),
            truncate_to: Offset(12),
            target: Offset(50),
            commit_end: Offset(50),
            start: Offset(30),
        }),
    );
    assert_eq!(
        drain(&mut b),
        vec![
            Action::ResetStream { start: Offset(30) },
            Action::Committed { upto: Offset(30) },
            to_a(HaMsg::AppendAck {
                epoch: Epoch(4),
                end: Offset(30)
            }),
        ]
    );
    assert_eq!(b.role(), Role::Syncing, "catching up again");
    b.handle_input(
        Millis(32),
        peer(HaMsg::Append {
            epoch: Epoch(4),
            from: Offset(30),
            upto: Offset(50),
            entry_epoch: Epoch(4),
            commit_end: Offset(50),
        }),
    );
    b.handle_input(Millis(33), Input::StreamAppended { upto: Offset(50) });
    assert_eq!(b.role(), Role::Standby);
    assert_eq!(b.status().start, Offset(30));
}

/// Issue #25: a standby that takes over from an active that handed over for its health does
/// not hand back for health for a dwell (30 s, doubling on repeats); a planned handover from
/// a healthy active starts no dwell.
#[test]
fn taking_over_from_an_unhealthy_active_starts_a_dwell() {
    let log = LogPos {
        log_epoch: Epoch(4),
        end: Offset(12),
    };
    let handover = HaMsg::Handover {
        epoch: Epoch(4),
        end: Offset(12),
    };
    let stalled = Health {
        merger_stall_ms: 1_300,
        ..Health::default()
    };
    let mut b = caught_up_standby_b();
    let peer = |msg| Input::Peer { link: 0, msg };
    b.handle_input(Millis(100), peer(hb_unhealthy(4, log, 800, stalled)));
    b.handle_input(Millis(101), peer(handover.clone()));
    assert_eq!(b.status().health_dwell_left_ms, DWELL_MS);
    assert_eq!(b.stats().health_dwells_total, 1);
    b.handle_timeout(Millis(101 + 10_000));
    assert_eq!(b.status().health_dwell_left_ms, DWELL_MS - 10_000);

    let mut b = caught_up_standby_b();
    b.handle_input(Millis(100), peer(hb(4, Role::Active, log, 800)));
    b.handle_input(Millis(101), peer(handover));
    assert_eq!(
        b.status().health_dwell_left_ms,
        0,
        "a switchover is no health handover"
    );
    assert_eq!(b.stats().health_dwells_total, 0);
}

/// Issue #25: both nodes get the same load, so an active whose merger is slow hands over only
/// to a standby clearly better on that measure (within half the limit), never to one that is
/// merely inside the limit.
#[test]
fn unhealthy_active_hands_over_only_to_a_clearly_better_standby() {
    let stalled = Health {
        merger_stall_ms: 1_200,
        ..Health::default()
    };
    for (standby_stall_ms, hands_over) in [(900, false), (501, false), (500, true), (0, true)] {
        let mut a = active_with_standby(4);
        let standby = Health {
            merger_stall_ms: standby_stall_ms,
            ..Health::default()
        };
        a.handle_input(Millis(2050), Input::Health(stalled));
        a.handle_input(Millis(2250), standby_heartbeat(standby, 60));
        a.handle_input(Millis(2260), Input::Health(stalled));
        let acts = drain(&mut a);
        assert_eq!(
            acts.contains(&Action::StopPublishing(StopReason::Handover)),
            hands_over,
            "standby stall {standby_stall_ms} ms: {acts:?}"
        );
    }
    let limits = HealthLimits::default();
    let slow_disk = Health {
        fsync_latency_ms: 1_500,
        ..Health::default()
    };
    assert!(limits.clearly_better(&Health::default(), &slow_disk));
    assert!(!limits.clearly_better(&slow_disk, &slow_disk));
    let gone = Health {
        receivers_ok: false,
        ..Health::default()
    };
    assert!(
        limits.clearly_better(&Health::default(), &gone),
        "F7: any standby that receives"
    );
    assert!(!limits.clearly_better(&gone, &gone));
}

/// Issue #25/#26 (a solo active's lease lapsed beside `stress-ng --hdd`): once the vote for
/// the epoch is durable, a lease grant that only moves the record leaves at once with the
/// record that is durable; the reply naming the new record follows the fsync.
#[test]
fn witness_grants_a_renewal_before_the_new_record_is_durable() {
    let mut w = Witness::new(WitnessConfig::default(), Millis(0), WitnessState::default());
    let at = |end| LogPos {
        log_epoch: Epoch(1),
        end: Offset(end),
    };
    let request = |sent_at, end| HaMsg::LeaseRequest {
        epoch: Epoch(1),
        node: NodeId::A,
        sent_at: Millis(sent_at),
        record: at(end),
    };
    let grant = |echo, end| WitnessAction::Send {
        to: NodeId::A,
        msg: HaMsg::LeaseReply {
            epoch: Epoch(1),
            granted: true,
            voted: Epoch(1),
            recorded: at(end),
            echo: Millis(echo),
        },
    };
    w.handle_input(Millis(1000), NodeId::A, request(9, 40));
    let first = WitnessState {
        voted: Epoch(1),
        record: at(40),
    };
    // The first grant carries the vote: it waits for the fsync.
    assert_eq!(witness_drain(&mut w), vec![WitnessAction::Persist(first)]);
    w.handle_persisted(Millis(1002), first);
    assert_eq!(witness_drain(&mut w), vec![grant(9, 40)]);
    // A renewal that moves the record only: granted now with the durable record (40).
    w.handle_input(Millis(1200), NodeId::A, request(10, 55));
    let second = WitnessState {
        voted: Epoch(1),
        record: at(55),
    };
    assert_eq!(
        witness_drain(&mut w),
        vec![grant(10, 40), WitnessAction::Persist(second)]
    );
    w.handle_persisted(Millis(1900), second);
    assert_eq!(witness_drain(&mut w), vec![grant(10, 55)]);
    // A renewal that moves nothing is answered at once, once.
    w.handle_input(Millis(2000), NodeId::A, request(11, 55));
    assert_eq!(witness_drain(&mut w), vec![grant(11, 55)]);
}

/// Issue #25 (seed 1065 F7AddressLost): an active waits for an ack after answering a
/// `SyncRequest` (a lost ack, or a late duplicate request) before it sends any entry. A
/// caught-up standby therefore repeats its durable end every heartbeat tick; before, it
/// reported `standby`, received nothing, and the active went solo past it for good.
#[test]
fn caught_up_standby_repeats_its_ack_every_tick() {
    let mut b = caught_up_standby_b();
    let next = b.poll_deadline().expect("a running core has a deadline");
    b.handle_timeout(next);
    let ack = Action::Send {
        to: Party::Node(NodeId::A),
        link: None,
        msg: HaMsg::AppendAck {
            epoch: Epoch(4),
            end: Offset(12),
        },
    };
    assert!(drain(&mut b).contains(&ack), "no ack on the tick");
    // And the active resumes sending on it, even right after a late duplicate SyncRequest.
    let mut a = active_with_standby(4);
    let peer = |msg| Input::Peer { link: 0, msg };
    let dup = HaMsg::SyncRequest {
        epoch: Epoch(1),
        end: Offset(0),
        runs: vec![],
        start: Offset(0),
    };
    a.handle_input(Millis(1970), peer(dup));
    a.handle_input(Millis(1980), Input::StreamAppended { upto: Offset(6) });
    let sent = |acts: &[Action]| {
        acts.iter().any(|x| {
            matches!(
                x,
                Action::Send {
                    msg: HaMsg::Append {
                        upto: Offset(6),
                        ..
                    },
                    ..
                }
            )
        })
    };
    assert!(!sent(&drain(&mut a)), "no Append before an ack of the sync");
    let ack = HaMsg::AppendAck {
        epoch: Epoch(1),
        end: Offset(4),
    };
    a.handle_input(Millis(1990), peer(ack));
    assert!(
        sent(&drain(&mut a)),
        "the repeated ack restarts the appends"
    );
}

/// The record a lease request asks the witness to keep (`None`: no request among `acts`).
fn lease_record(acts: &[Action]) -> Option<Offset> {
    acts.iter().rev().find_map(|x| match x {
        Action::Send {
            msg: HaMsg::LeaseRequest { record, .. },
            ..
        } => Some(record.end),
        _ => None,
    })
}

/// Issue #25 (`stress-ng --hdd`): a standby whose disk is slow acknowledges late but keeps
/// receiving. The active then records at the witness (which commits) only what the standby
/// received, so the standby stays promotable, and the role stays `active`; only when what the
/// standby receives stops moving too (2 × failover_after_ms) does the active commit alone
/// (`solo`, the whole stream). Before, 800 ms of late acks made the active record its whole
/// stream: the standby lacked committed entries and, the active dead, nobody published.
#[test]
fn slow_standby_stays_promotable_and_the_active_goes_solo_only_when_it_stops_receiving() {
    let mut a = active_with_standby(4);
    let peer = |msg| Input::Peer { link: 0, msg };
    let standby_hb = |end: u64, at: u64| {
        let log = LogPos {
            log_epoch: Epoch(1),
            end: Offset(end),
        };
        peer(hb(1, Role::Standby, log, at))
    };
    // The active appends up to 10; the standby receives it all but acknowledges nothing.
    a.handle_input(Millis(2000), Input::StreamAppended { upto: Offset(10) });
    let mut records = Vec::new();
    let mut t = 2000;
    while t < 3400 {
        t += 100;
        a.handle_input(Millis(t), standby_hb(10, t));
        if t == 3000 {
            // More entries the standby does not receive.
            a.handle_input(Millis(t), Input::StreamAppended { upto: Offset(14) });
        }
        a.handle_timeout(Millis(t));
        if let Some(r) = lease_record(&drain(&mut a)) {
            records.push((t, r, a.role()));
        }
    }
    // Acks lag from 2800 on: the record is what the standby received, never the whole stream.
    assert!(
        records.iter().all(|(t, r, role)| *role == Role::Active
            && *r <= Offset(10)
            && (*t < 2900 || *r == Offset(10))),
        "{records:?}"
    );
    // The standby receives nothing more (entries 10..14 lost, no progress): solo after
    // 2 × failover_after_ms without progress, recording the whole stream.
    while t < 5000 {
        t += 100;
        a.handle_input(Millis(t), standby_hb(10, t));
        a.handle_timeout(Millis(t));
        if let Some(r) = lease_record(&drain(&mut a)) {
            records.push((t, r, a.role()));
        }
    }
    let last = records.last().copied().expect("lease requests");
    assert_eq!((last.1, last.2), (Offset(14), Role::Solo), "{records:?}");
}

/// Issue #25: a standby the witness refuses as stale (a solo active committed entries it
/// lacks, and the active is gone) must not take over; it says so (`lacks_committed`,
/// `stale_refusals_total`) and asks again once a heartbeat interval, not every millisecond
/// (a real pair logged 7,821 refused votes at the witness).
#[test]
fn stale_candidate_reports_it_and_backs_off() {
    let mut b = caught_up_standby_b();
    // A falls silent: B suspects it at 810 and its lease promise ends at 910.
    b.handle_timeout(Millis(910));
    let votes = |acts: &[Action]| {
        acts.iter()
            .filter(|x| {
                matches!(
                    x,
                    Action::Send {
                        to: Party::Witness,
                        msg: HaMsg::VoteRequest { .. },
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(votes(&drain(&mut b)), 1, "B campaigns");
    let stale = HaMsg::VoteReply {
        epoch: Epoch(5),
        granted: false,
        voter_epoch: Epoch(0),
        wait_ms: 0,
        echo: Millis(910),
    };
    b.handle_input(Millis(912), Input::Witness(stale.clone()));
    assert!(b.status().lacks_committed);
    assert_eq!(b.stats().stale_refusals_total, 1);
    let mut asked = 0;
    for t in 913..1100 {
        b.handle_timeout(Millis(t));
        asked += votes(&drain(&mut b));
    }
    assert_eq!(asked, 0, "no retry within a heartbeat interval");
    b.handle_timeout(Millis(1112));
    assert_eq!(votes(&drain(&mut b)), 1, "one retry after it");
    assert_eq!(b.role(), Role::Standby, "never promoted");
    // An active heard again clears it.
    let log = LogPos {
        log_epoch: Epoch(4),
        end: Offset(12),
    };
    b.handle_input(
        Millis(1120),
        Input::Peer {
            link: 0,
            msg: hb(4, Role::Active, log, 1120),
        },
    );
    assert!(!b.status().lacks_committed);
}

/// A standby that acks late but received everything (its heartbeats say so) is not sent its
/// whole unacknowledged window again every tick; a gap it reports is resent.
#[test]
fn slow_standby_is_not_resent_what_it_received() {
    let mut a = active_with_standby(4);
    a.handle_input(Millis(2000), Input::StreamAppended { upto: Offset(10) });
    drain(&mut a);
    let resent_from = |acts: &[Action]| {
        acts.iter()
            .filter_map(|x| match x {
                Action::Send {
                    msg: HaMsg::Append { from, .. },
                    ..
                } => Some(*from),
                _ => None,
            })
            .min()
    };
    let standby_hb = |end: u64, at: u64| Input::Peer {
        link: 0,
        msg: hb(
            1,
            Role::Standby,
            LogPos {
                log_epoch: Epoch(1),
                end: Offset(end),
            },
            at,
        ),
    };
    let mut sent = Vec::new();
    for t in (2100..=2700).step_by(100) {
        a.handle_input(Millis(t), standby_hb(10, t));
        a.handle_timeout(Millis(t));
        sent.extend(resent_from(&drain(&mut a)));
    }
    assert!(sent.is_empty(), "resent {sent:?}");
    // It received only up to 7 (an Append lost): resent from 7, not from its ack (4).
    let mut b = active_with_standby(4);
    b.handle_input(Millis(2000), Input::StreamAppended { upto: Offset(10) });
    drain(&mut b);
    let mut sent = Vec::new();
    for t in (2100..=2700).step_by(100) {
        b.handle_input(Millis(t), standby_hb(7, t));
        b.handle_timeout(Millis(t));
        sent.extend(resent_from(&drain(&mut b)));
    }
    assert!(
        !sent.is_empty() && sent.iter().all(|f| *f == Offset(7)),
        "{sent:?}"
    );
}

/// Issue #25 (kafka_pair_sigstopped_old_active_is_fenced_and_writes_nothing): the active A is
/// stopped (SIGSTOP) for 2 s; meanwhile B promoted itself in epoch 2. On waking, A handles what
/// was queued: B's heartbeats as its standby of epoch 1, B's vote request for epoch 2, then
/// B's heartbeats as the active of epoch 2, the two links' queues interleaved. A must never
/// report itself `active` (its lease lapsed), and must follow epoch 2.
#[test]
fn woken_active_never_reports_active_and_adopts_the_higher_epoch() {
    let mut a = active_with_standby(4);
    let standby_log = LogPos {
        log_epoch: Epoch(1),
        end: Offset(4),
    };
    let b_log = LogPos {
        log_epoch: Epoch(2),
        end: Offset(4),
    };
    // Stopped from 2000 to 4000 (no calls at all). Queued meanwhile, in B's clock:
    let mut queued = Vec::new();
    for (k, t) in (2000..2800).step_by(200).enumerate() {
        queued.push((k as u8 % 2, hb(1, Role::Standby, standby_log, t)));
    }
    queued.push((
        0,
        HaMsg::VoteRequest {
            epoch: Epoch(2),
            candidate: NodeId::B,
            log: standby_log,
            sent_at: Millis(2900),
        },
    ));
    for t in (3000..4000).step_by(200) {
        let mut m = hb(2, Role::Active, b_log, t);
        if let HaMsg::Heartbeat { commit_end, .. } = &mut m {
            *commit_end = Offset(4);
        }
        queued.push((0, m.clone()));
        queued.push((1, m));
    }
    // Link 1's queue is drained first: the newest heartbeats, then link 0's old ones.
    queued.sort_by_key(|(l, _)| u8::from(*l == 0));
    let mut roles = Vec::new();
    for (link, msg) in queued {
        a.handle_input(Millis(4000), Input::Peer { link, msg });
        drain(&mut a);
        roles.push(a.status().role);
    }
    a.handle_timeout(Millis(4001));
    drain(&mut a);
    roles.push(a.status().role);
    assert!(
        roles.iter().all(|r| !r.is_active()),
        "reported active without a lease: {roles:?}"
    );
    assert_eq!(a.status().epoch, Epoch(2), "{roles:?}");
    assert_eq!(a.status().peer_role, Some(Role::Active));
}

/// Issue #25: a woken active whose link to the peer is gone (the session timed out during the
/// stop) hears only the witness, which refuses its lease: it voted for epoch 2 meanwhile. The
/// active steps down and adopts epoch 2, reports `syncing` and the peer as unreachable (it
/// reported epoch 1 and `peer_role: standby` 30 s later).
#[test]
fn woken_active_hearing_only_the_witness_adopts_its_epoch() {
    let mut a = active_with_standby(4);
    a.handle_timeout(Millis(4000));
    let acts = drain(&mut a);
    assert!(
        acts.contains(&Action::StopPublishing(StopReason::LeaseExpired)),
        "{acts:?}"
    );
    assert_eq!(a.status().role, Role::Syncing, "no lease: not active");
    assert!(a.status().lease_lapsed);
    assert_eq!(a.status().peer_role, None, "the peer is unreachable");
    let refused = HaMsg::LeaseReply {
        epoch: Epoch(1),
        granted: false,
        voted: Epoch(2),
        recorded: LogPos {
            log_epoch: Epoch(2),
            end: Offset(9),
        },
        echo: Millis(4000),
    };
    a.handle_input(Millis(4002), Input::Witness(refused));
    let acts = drain(&mut a);
    // It promises epoch 2 first; with the peer unheard it may then campaign above it (the
    // witness judges its stream).
    assert_eq!(
        acts.first(),
        Some(&Action::PersistEpoch(EpochState {
            epoch: Epoch(2),
            log_epoch: Epoch(1),
        })),
        "{acts:?}"
    );
    assert!(
        acts.iter().all(|x| !matches!(
            x,
            Action::Send { msg: HaMsg::VoteRequest { epoch, .. }, .. } if *epoch <= Epoch(2)
        )),
        "{acts:?}"
    );
    assert_eq!((a.status().epoch, a.role()), (Epoch(2), Role::Syncing));
    assert!(!a.status().lease_lapsed, "a follower now");
}

/// Issue #25: an active whose lease lapsed resumes publishing only on a renewal that lasts at
/// least a heartbeat interval. A late ack (its echo almost `lease_ms` old, on a loaded pair)
/// would start publishing for milliseconds; CI saw five such starts in 2.3 s, each stopped
/// 4-180 ms later and each costing the binary a merger rebuild.
#[test]
fn a_lapsed_active_resumes_only_on_a_renewal_that_lasts() {
    let mut a = active_with_standby(4);
    let log = LogPos {
        log_epoch: Epoch(1),
        end: Offset(4),
    };
    a.handle_input(
        Millis(2600),
        Input::Peer {
            link: 0,
            msg: hb(1, Role::Standby, log, 2550),
        },
    );
    drain(&mut a);
    // No renewal since the grant (echo 1900): the lease lapses at 2700.
    a.handle_timeout(Millis(2700));
    let acts = drain(&mut a);
    assert!(
        acts.contains(&Action::StopPublishing(StopReason::LeaseExpired)),
        "{acts:?}"
    );
    // A late ack: echo 1950, so the lease runs to 2750, 49 ms after it arrives.
    let late = HaMsg::HeartbeatAck {
        epoch: Epoch(1),
        echo: Millis(1950),
    };
    a.handle_input(Millis(2701), Input::Peer { link: 0, msg: late });
    let acts = drain(&mut a);
    assert!(
        !acts
            .iter()
            .any(|x| matches!(x, Action::StartPublishing { .. })),
        "{acts:?}"
    );
    assert_eq!(a.status().role, Role::Syncing, "not publishing: not active");
    // A timely ack: publishing resumes where the stream ends, until echo + lease_ms.
    let fresh = HaMsg::HeartbeatAck {
        epoch: Epoch(1),
        echo: Millis(2700),
    };
    a.handle_input(
        Millis(2705),
        Input::Peer {
            link: 0,
            msg: fresh,
        },
    );
    let acts = drain(&mut a);
    assert!(
        acts.contains(&Action::StartPublishing {
            epoch: Epoch(1),
            from_offset: Offset(4),
            lease_until: Millis(3500),
        }),
        "{acts:?}"
    );
    assert!(a.status().role.is_active(), "{:?}", a.status().role);
}
