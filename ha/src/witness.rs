//! The witness: a tiny voter that holds no data (SPEC "HA core").
//!
//! It stores only the epoch it voted for and the highest committed `LogPos` it has heard of
//! (`WitnessState`), and persists them before answering. In: `handle_input(now, from, msg)`,
//! `handle_persisted(now, state)`. Out: `poll_action()`.
//!
//! Rules:
//! - Vote for epoch `e` only if `e > voted`, the candidate's `LogPos` is at least the recorded
//!   committed position (a stale node is never promoted), and no promise is running.
//! - Grant a lease to the active of epoch `e >= voted` (adopting `e`), record its committed
//!   position (in `solo`, this record *is* what commits entries), and promise not to vote for
//!   `lease + margin` from the moment the grant leaves.
//! - After a restart it promises for `lease + margin` (it may have granted just before).

use std::collections::VecDeque;

use twinrx_types::{Epoch, Millis, NodeId};

use crate::config::WitnessConfig;
use crate::msg::{HaMsg, LogPos};

/// What the witness persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct WitnessState {
    pub voted: Epoch,
    pub record: LogPos,
}

impl WitnessState {
    fn covers(&self, other: &WitnessState) -> bool {
        self.voted >= other.voted && self.record >= other.record
    }
}

/// What the witness asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WitnessAction {
    /// Write and fsync the state file, then call `handle_persisted`.
    Persist(WitnessState),
    Send {
        to: NodeId,
        msg: HaMsg,
    },
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WitnessStats {
    pub votes_granted_total: u64,
    pub votes_refused_total: u64,
    pub leases_granted_total: u64,
    pub leases_refused_total: u64,
}

/// The witness state machine.
#[derive(Debug)]
pub struct Witness {
    cfg: WitnessConfig,
    state: WitnessState,
    wanted: WitnessState,
    durable: WitnessState,
    promise_until: Millis,
    /// Epoch whose lease its holder released (handover); its lease requests are refused.
    released: Option<Epoch>,
    /// Replies waiting for a state to be durable.
    waiting: Vec<(WitnessState, NodeId, HaMsg)>,
    actions: VecDeque<WitnessAction>,
    stats: WitnessStats,
    blind: bool,
    /// The candidate of the last vote (in memory only: after a restart it refuses a retry).
    voted_for: Option<(Epoch, NodeId)>,
}

impl Witness {
    pub fn new(cfg: WitnessConfig, now: Millis, restored: WitnessState) -> Witness {
        Witness {
            promise_until: now.saturating_add(cfg.lease_ms + cfg.lease_margin_ms),
            cfg,
            state: restored,
            wanted: restored,
            durable: restored,
            released: None,
            waiting: Vec::new(),
            actions: VecDeque::new(),
            stats: WitnessStats::default(),
            blind: false,
            voted_for: None,
        }
    }

    /// Breaks the witness on purpose: it votes ignoring its promise and the candidate's stream.
    /// Only for the simulator's self-test (`Broken::WitnessVotesBlindly`).
    #[doc(hidden)]
    pub fn break_for_checker_self_test(&mut self) {
        self.blind = true;
    }

    pub fn state(&self) -> WitnessState {
        self.state
    }

    pub fn stats(&self) -> WitnessStats {
        self.stats
    }

    pub fn poll_action(&mut self) -> Option<WitnessAction> {
        self.actions.pop_front()
    }

    fn promise(&self) -> u64 {
        self.cfg.lease_ms + self.cfg.lease_margin_ms
    }

    /// Sends `msg` once `self.state` is durable.
    fn reply(&mut self, now: Millis, to: NodeId, msg: HaMsg) {
        if self.state != self.wanted && !self.wanted.covers(&self.state) {
            self.wanted = self.state;
            self.actions.push_back(WitnessAction::Persist(self.state));
        }
        if self.durable.covers(&self.state) {
            self.send(now, to, msg);
        } else {
            self.waiting.push((self.state, to, msg));
        }
    }

    fn send(&mut self, now: Millis, to: NodeId, msg: HaMsg) {
        if matches!(
            msg,
            HaMsg::LeaseReply { granted: true, .. } | HaMsg::VoteReply { granted: true, .. }
        ) {
            // The promise runs from the moment the grant leaves.
            self.promise_until = self.promise_until.max(now.saturating_add(self.promise()));
        }
        self.actions.push_back(WitnessAction::Send { to, msg });
    }

    pub fn handle_persisted(&mut self, now: Millis, st: WitnessState) {
        self.durable = WitnessState {
            voted: self.durable.voted.max(st.voted),
            record: self.durable.record.max(st.record),
        };
        let durable = self.durable;
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(s, _, _)| durable.covers(s));
        self.waiting = rest;
        for (_, to, msg) in ready {
            self.send(now, to, msg);
        }
    }

    pub fn handle_input(&mut self, now: Millis, from: NodeId, msg: HaMsg) {
        match msg {
            HaMsg::VoteRequest {
                epoch,
                candidate,
                log,
                sent_at,
            } => {
                if self.voted_for == Some((epoch, candidate)) && self.state.voted == epoch {
                    // A retry of the request we granted (our reply may be lost).
                    let msg = HaMsg::VoteReply {
                        epoch,
                        granted: true,
                        voter_epoch: epoch,
                        wait_ms: 0,
                        echo: sent_at,
                    };
                    self.reply(now, candidate, msg);
                    return;
                }
                let ok = epoch > self.state.voted
                    && (self.blind || (log >= self.state.record && now >= self.promise_until));
                if !ok {
                    self.stats.votes_refused_total += 1;
                    let wait_ms = if now < self.promise_until {
                        self.promise_until.saturating_sub(now)
                    } else {
                        0
                    };
                    let voter_epoch = if epoch > self.state.voted && log < self.state.record {
                        // Stale candidate: tell it nothing that makes it retry higher.
                        Epoch(0)
                    } else {
                        self.state.voted
                    };
                    let msg = HaMsg::VoteReply {
                        epoch,
                        granted: false,
                        voter_epoch,
                        wait_ms,
                        echo: sent_at,
                    };
                    self.send(now, candidate, msg);
                    return;
                }
                self.stats.votes_granted_total += 1;
                self.state.voted = epoch;
                self.voted_for = Some((epoch, candidate));
                self.released = None;
                // Promise now already: no second vote while the grant is being persisted.
                self.promise_until = self.promise_until.max(now.saturating_add(self.promise()));
                let msg = HaMsg::VoteReply {
                    epoch,
                    granted: true,
                    voter_epoch: epoch,
                    wait_ms: 0,
                    echo: sent_at,
                };
                self.reply(now, candidate, msg);
            }
            HaMsg::LeaseRequest {
                epoch,
                node,
                sent_at,
                record,
            } => {
                let ok = epoch >= self.state.voted && self.released.is_none_or(|r| epoch > r);
                if !ok {
                    self.stats.leases_refused_total += 1;
                    let msg = HaMsg::LeaseReply {
                        epoch,
                        granted: false,
                        voted: self.state.voted,
                        recorded: self.state.record,
                        echo: sent_at,
                    };
                    self.send(now, node, msg);
                    return;
                }
                self.stats.leases_granted_total += 1;
                self.state.voted = epoch;
                if record.log_epoch == epoch && record > self.state.record {
                    self.state.record = record;
                }
                self.promise_until = self.promise_until.max(now.saturating_add(self.promise()));
                let msg = HaMsg::LeaseReply {
                    epoch,
                    granted: true,
                    voted: self.state.voted,
                    recorded: self.state.record,
                    echo: sent_at,
                };
                if !self.durable.covers(&self.state) && self.durable.voted >= epoch {
                    // Only the record moves: the grant itself promises nothing that is not
                    // durable yet (the vote is), so it leaves now with the record that is
                    // durable, and the reply naming the new record follows its fsync. A
                    // witness on a slow disk then never lets a solo active's lease lapse.
                    let now_msg = HaMsg::LeaseReply {
                        epoch,
                        granted: true,
                        voted: self.state.voted,
                        recorded: self.durable.record,
                        echo: sent_at,
                    };
                    self.send(now, node, now_msg);
                }
                self.reply(now, node, msg);
            }
            HaMsg::LeaseRelease { epoch, .. } => {
                if epoch == self.state.voted {
                    self.released = Some(epoch);
                    self.promise_until = now;
                }
            }
            _ => {
                let _ = from;
            }
        }
    }
}
