//! Deterministic simulator (STYLE §5.3, after TigerBeetle's VOPR): two `HaCore`s and a
//! `Witness` on one thread, a virtual clock, and one `u64` seed that draws every fault.
//!
//! One schedule: both nodes and the witness start; after a warm-up (an active and an in-sync
//! standby) a failure pattern from SPEC "Failure patterns" hits at a random phase; while it
//! lasts the network loses, duplicates, delays and reorders messages and every clock drifts
//! (bounded); then everything heals and the pair must become redundant again. The driver plays
//! the binary: it carries out actions exactly as the contract in [`crate::node`] says (disk
//! FIFO with latency, truncation before later actions, appends only under a valid lease).
//!
//! Invariants checked after every event (a violation is a string naming the time):
//! - never two publishers: no two nodes publish with a lease valid on their own clock; at most
//!   one node starts publishing in a given epoch; the sink accepts no entry of an epoch lower
//!   than one it has seen;
//! - committed entries are never lost or changed: every node's stream agrees with the one
//!   committed history below its commit point, no truncation below it, a promoted node holds
//!   every committed entry;
//! - epochs never go backwards (nodes' and witness's persisted state);
//! - liveness: when the active fails and the standby and the witness can talk, the standby
//!   publishes within `failover_limit_ms`; patterns that must not fail over do not, and the
//!   active keeps committing.
//!
//! Replay: `cargo run --release -p ha --example sim -- --schedules 1 --seed S`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use twinrx_types::{Epoch, Millis, NodeId, Offset};

use crate::config::{Config, Policy, WitnessConfig};
use crate::msg::{EpochState, HaMsg, Health, Run};
use crate::node::{Action, HaCore, Input, Party, Restored};
use crate::witness::{Witness, WitnessAction, WitnessState};

/// SplitMix64: a tiny seeded PRNG, so that the library needs no RNG crate.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True with probability `ppm / 1_000_000`.
    pub fn chance(&mut self, ppm: u64) -> bool {
        self.next_u64() % 1_000_000 < ppm
    }
}

/// The failure injected after warm-up (SPEC "Failure patterns").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// F1/F9: the active is powered off (SIGKILL).
    F1PowerOff,
    /// F2: SIGTERM on the active: graceful handover.
    F2Shutdown,
    /// F3: the active reboots (crash, restart with its data a moment later).
    F3Reboot,
    /// F4: the active hangs (SIGSTOP) for seconds, then resumes with its clock jumped.
    F4Hang,
    /// F5/F6b: every link of the active is cut (both node links and the witness link).
    F5NetworkCut,
    /// F6a: one of the two node links fails: no failover.
    F6OneLink,
    /// F7: the active's receive address is lost (receivers not ok): handover.
    F7AddressLost,
    /// F8: the active's pipeline stalls while its heartbeats live: handover.
    F8PipelineStall,
    /// F10: the standby crashes: no failover, the active goes solo.
    F10StandbyDown,
    /// F11: the active's journal disk fails (writes hang): handover.
    F11DiskFails,
    /// F12: the nodes cannot talk, both reach the witness: no failover, active solo.
    F12Partition,
    /// F13: the witness is down: the pair carries on.
    F13WitnessDown,
    /// Planned `twinrx switchover`.
    Switchover,
    /// Both nodes slow but progressing under the same load, in bursts (fsync latency and
    /// scheduling lag near and beyond their limits on both at once): no handover.
    SharedLoad,
    /// Random crashes, pauses, partitions (symmetric and one-way), disk and health faults on
    /// every party; safety only, then liveness after healing.
    Chaos,
    /// F1 after a slow standby (issue #25, `stress-ng --hdd` on a 2-core machine): the
    /// standby's journal writes take 50-1000 ms in bursts while its links live, so its acks
    /// lag the active by up to a second; 1-2.5 s into it the active is powered off. The
    /// standby was only slow: it must take over within the bound (measured from the kill).
    F1AfterSlowStandby,
    /// F4 where the links between the nodes die with the stop (issue #25: the link session
    /// timed out during SIGSTOP): the active hangs 1.5-2.5 s, then hears only the witness
    /// until healing. Checked at healing: the woken node reports the epoch the witness voted
    /// for meanwhile, and no role that publishes.
    F4HangLinksDown,
}

impl Pattern {
    pub const ALL: [Pattern; 17] = [
        Pattern::F1PowerOff,
        Pattern::F2Shutdown,
        Pattern::F3Reboot,
        Pattern::F4Hang,
        Pattern::F5NetworkCut,
        Pattern::F6OneLink,
        Pattern::F7AddressLost,
        Pattern::F8PipelineStall,
        Pattern::F10StandbyDown,
        Pattern::F11DiskFails,
        Pattern::F12Partition,
        Pattern::F13WitnessDown,
        Pattern::Switchover,
        Pattern::SharedLoad,
        Pattern::Chaos,
        Pattern::F1AfterSlowStandby,
        Pattern::F4HangLinksDown,
    ];

    /// Whether the standby must take over (and the witness stays reachable to it).
    pub fn expects_failover(self) -> bool {
        matches!(
            self,
            Pattern::F1PowerOff
                | Pattern::F2Shutdown
                | Pattern::F3Reboot
                | Pattern::F4Hang
                | Pattern::F5NetworkCut
                | Pattern::F7AddressLost
                | Pattern::F8PipelineStall
                | Pattern::F11DiskFails
                | Pattern::Switchover
                | Pattern::F1AfterSlowStandby
                | Pattern::F4HangLinksDown
        )
    }

    /// Whether a takeover would be a false failover.
    pub fn forbids_failover(self) -> bool {
        matches!(
            self,
            Pattern::F6OneLink
                | Pattern::F10StandbyDown
                | Pattern::F12Partition
                | Pattern::F13WitnessDown
                | Pattern::SharedLoad
        )
    }
}

/// A deliberately broken variant, to prove the checker can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The witness votes without waiting for its lease promise to expire and without checking
    /// the candidate's stream: promotion without a real quorum.
    WitnessVotesBlindly,
}

/// What a simulation run varies.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub policy: Policy,
    /// The pattern of a schedule is drawn from this list.
    pub patterns: Vec<Pattern>,
    pub broken: Option<Broken>,
    pub failover_limit_ms: u64,
    /// Node settings (node id is set per node).
    pub config: Config,
    /// Print every input and action to stderr (for replaying one seed).
    pub trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            policy: Policy::Witness,
            patterns: Pattern::ALL.to_vec(),
            broken: None,
            failover_limit_ms: 3000,
            config: Config::new(NodeId::A),
            trace: false,
        }
    }
}

/// Result of one schedule.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub pattern: Pattern,
    pub violations: Vec<String>,
    /// The warm-up ended with an active and an in-sync standby, so the pattern was measured.
    pub measured: bool,
    /// Fault → first publish by the other node, in simulated ms.
    pub failover_ms: Option<u64>,
    pub events: u64,
    /// Followers told to restart their copy at the active's first retained offset.
    pub stream_restarts: u64,
}

const US: u64 = 1000;
const WARMUP_US: u64 = 2_500 * US;
const FAULT_US: u64 = 4_000 * US;
const HEAL_US: u64 = 3_000 * US;
const APP_TICK_MS: u64 = 50;
/// Chance per app tick that stream retention deletes a node's oldest entries (1 %: every 5 s
/// of simulated time on average).
const RETENTION_PPM: u64 = 10_000;
/// Bound on one schedule's events (a core that asks to be woken in a loop is a bug).
const EVENTS_MAX: u64 = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Node(usize),
    Witness,
}

#[derive(Clone, Debug)]
enum DiskOp {
    Epoch(EpochState),
    Write {
        from: u64,
        entries: Vec<(Epoch, u64)>,
        replicated: bool,
    },
    Witness(WitnessState),
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        to: Who,
        from: Who,
        link: u8,
        msg: HaMsg,
        payload: Vec<(Epoch, u64)>,
    },
    Timer {
        node: usize,
        inc: u32,
    },
    Disk {
        who: Who,
        inc: u32,
        seq: u64,
    },
    AppTick {
        node: usize,
        inc: u32,
    },
    Later {
        node: usize,
        inc: u32,
        input: Input,
    },
    Fault(Fault),
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Crash(usize),
    Restart(usize),
    Pause(usize, u64),
    Shutdown(usize),
    Switchover(usize),
    CutAll(usize, bool),
    NodeLink(u8, bool),
    OneWay(usize, bool),
    WitnessLink(usize, bool),
    Stall(usize, bool),
    AddrLost(usize, bool),
    DiskFail(Who, bool),
    DiskSlow(Who, bool),
    /// A node's journal writes take `lo..=hi` µs each (None: normal again).
    DiskLatency(usize, Option<(u64, u64)>),
    /// The active dies after a lead-in (`Pattern::F1AfterSlowStandby`): failover is measured
    /// from here.
    KillActive(usize),
    WitnessCrash,
    WitnessRestart,
    /// Load shared by both nodes (the same traffic): health measures around this many ms.
    Load(u32),
    Heal,
}

#[derive(Clone, Copy, Debug)]
struct Clock {
    offset_us: u64,
    ppm: i64,
}

impl Clock {
    fn local_ms(&self, g: u64) -> Millis {
        let scaled = (g as i128 * (1_000_000 + self.ppm as i128)) / 1_000_000;
        Millis(((self.offset_us as i128 + scaled) / 1000) as u64)
    }
    fn global_of(&self, local: Millis) -> u64 {
        let l = local.0 as i128 * 1000 - self.offset_us as i128;
        let g =
            (l * 1_000_000 + (1_000_000 + self.ppm as i128) - 1) / (1_000_000 + self.ppm as i128);
        g.max(0) as u64
    }
}

#[derive(Debug, Default)]
struct Disk {
    busy_until: u64,
    failed: bool,
    slow: bool,
    /// Latency of each write in µs (`Fault::DiskLatency`), overriding the normal one.
    latency: Option<(u64, u64)>,
    queue: VecDeque<(u64, DiskOp)>,
    next_seq: u64,
}

#[derive(Debug)]
struct SimNode {
    core: Option<HaCore>,
    inc: u32,
    clock: Clock,
    paused_until: u64,
    disk: Disk,
    epoch_state: EpochState,
    stream: Vec<(Epoch, u64)>,
    /// First retained offset: retention deleted the (committed) entries below. They stay in
    /// `stream` for the checks, but cannot be sent to the peer.
    start: u64,
    /// Durable + pending length (where the next write lands).
    pending_len: u64,
    publishing: Option<Epoch>,
    lease_until: Millis,
    commit: u64,
    verified: u64,
    timer_at: Option<u64>,
    stalled_since: Option<u64>,
    addr_lost: bool,
    pending_since: Option<u64>,
}

struct Sim {
    rng: Rng,
    opts: SimOptions,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    nodes: Vec<SimNode>,
    witness: Option<Witness>,
    witness_inc: u32,
    witness_clock: Clock,
    witness_disk: Disk,
    witness_state: WitnessState,
    /// Directed link state: node links [dir][link] (dir 0: A→B), witness links [node][dir]
    /// (dir 0: node→witness).
    node_link_down: [[bool; 8]; 2],
    witness_link_down: [[bool; 2]; 2],
    loss_ppm: u64,
    dup_ppm: u64,
    spike_ppm: u64,
    committed: Vec<(Epoch, u64)>,
    sink: Vec<(Epoch, u64)>,
    sink_epoch: Epoch,
    epoch_owner: BTreeMap<Epoch, usize>,
    next_id: u64,
    violations: Vec<String>,
    cur_payload: Option<Vec<(Epoch, u64)>>,
    cur_payload_from: u64,
    fault_at: Option<u64>,
    faulted: Option<usize>,
    failover_at: Option<u64>,
    event_count: u64,
    /// Followers told to restart their copy at the active's first retained offset.
    stream_restarts: u64,
    measure: bool,
    fault_plan: Option<(u64, Pattern)>,
    fault_epoch: Epoch,
    deadline: u64,
    heal_at: u64,
    committed_at_fault: usize,
    commit_progress: bool,
    /// Shared load level (ms) both nodes' health reports carry (`Pattern::SharedLoad`).
    load_ms: u32,
    /// A node killed for good (`Fault::KillActive`): healing does not restart it, so the
    /// other node must publish on its own.
    killed: Option<usize>,
    pattern: Option<Pattern>,
    /// The node whose core handled the current event (it has seen the current time).
    touched: Option<usize>,
}

fn other(i: usize) -> usize {
    1 - i
}

impl Sim {
    fn new(seed: u64, opts: SimOptions) -> Sim {
        let mut rng = Rng::new(seed);
        let drift = 20_000; // ±2 %: far beyond real clocks, within lease_margin_ms's bound
        let clock = |rng: &mut Rng| Clock {
            offset_us: rng.range(1_000_000, 1_000_000_000),
            ppm: rng.range(0, 2 * drift) as i64 - drift as i64,
        };
        let c0 = clock(&mut rng);
        let c1 = clock(&mut rng);
        let cw = clock(&mut rng);
        let loss_ppm = [0, 10_000, 50_000][rng.range(0, 2) as usize];
        let dup_ppm = [0, 10_000][rng.range(0, 1) as usize];
        let spike_ppm = [0, 5_000][rng.range(0, 1) as usize];
        let mk = |clock: Clock| SimNode {
            core: None,
            inc: 0,
            clock,
            paused_until: 0,
            disk: Disk::default(),
            epoch_state: EpochState::default(),
            stream: Vec::new(),
            pending_len: 0,
            publishing: None,
            lease_until: Millis(0),
            commit: 0,
            verified: 0,
            start: 0,
            timer_at: None,
            stalled_since: None,
            addr_lost: false,
            pending_since: None,
        };
        let mut sim = Sim {
            rng,
            opts,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes: vec![mk(c0), mk(c1)],
            witness: None,
            witness_inc: 0,
            witness_clock: cw,
            witness_disk: Disk::default(),
            witness_state: WitnessState::default(),
            node_link_down: [[false; 8]; 2],
            witness_link_down: [[false; 2]; 2],
            loss_ppm,
            dup_ppm,
            spike_ppm,
            committed: Vec::new(),
            sink: Vec::new(),
            sink_epoch: Epoch(0),
            epoch_owner: BTreeMap::new(),
            next_id: 1,
            violations: Vec::new(),
            cur_payload: None,
            cur_payload_from: 0,
            fault_at: None,
            faulted: None,
            failover_at: None,
            event_count: 0,
            stream_restarts: 0,
            measure: false,
            fault_plan: None,
            fault_epoch: Epoch(0),
            deadline: 0,
            heal_at: 0,
            committed_at_fault: 0,
            commit_progress: false,
            load_ms: 0,
            killed: None,
            pattern: None,
            touched: None,
        };
        if sim.opts.policy == Policy::Witness {
            sim.start_witness();
        }
        sim.start_node(0);
        sim.start_node(1);
        sim
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 8 {
            self.violations
                .push(format!("t={}ms: {what}", self.now / US));
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn config_for(&self, i: usize) -> Config {
        let mut c = self.opts.config.clone();
        c.node = NodeId(i as u8);
        c.policy = self.opts.policy;
        c
    }

    fn local(&self, i: usize) -> Millis {
        self.nodes[i].clock.local_ms(self.now)
    }

    fn start_witness(&mut self) {
        self.witness_inc += 1;
        let now = self.witness_clock.local_ms(self.now);
        let cfg = WitnessConfig {
            lease_ms: self.opts.config.lease_ms,
            lease_margin_ms: self.opts.config.lease_margin_ms,
        };
        let mut w = Witness::new(cfg, now, self.witness_state);
        if self.opts.broken == Some(Broken::WitnessVotesBlindly) {
            w.break_for_checker_self_test();
        }
        self.witness = Some(w);
        self.witness_disk.queue.clear();
        self.witness_disk.busy_until = self.now;
    }

    fn start_node(&mut self, i: usize) {
        let cfg = match self.config_for(i).validate() {
            Ok(c) => c,
            Err(e) => {
                self.violation(format!("bad config: {e}"));
                return;
            }
        };
        let n = &mut self.nodes[i];
        n.inc += 1;
        n.disk.queue.clear();
        n.disk.busy_until = self.now;
        n.pending_len = n.stream.len() as u64;
        n.publishing = None;
        n.commit = 0;
        n.verified = 0;
        n.timer_at = None;
        n.pending_since = None;
        let mut runs: Vec<Run> = Vec::new();
        for (o, (e, _)) in n.stream.iter().enumerate() {
            if runs.last().is_none_or(|r| r.epoch != *e) {
                runs.push(Run {
                    epoch: *e,
                    start: Offset(o as u64),
                });
            }
        }
        let restored = Restored {
            state: n.epoch_state,
            end: Offset(n.stream.len() as u64),
            start: Offset(n.start),
            runs,
        };
        let now = n.clock.local_ms(self.now);
        n.core = Some(HaCore::new(cfg, now, restored));
        let inc = n.inc;
        self.push(self.now, Ev::AppTick { node: i, inc });
        self.after_node(i);
    }

    fn crash_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.core = None;
        n.inc += 1;
        n.publishing = None;
        n.disk.queue.clear();
        n.pending_len = n.stream.len() as u64;
        n.timer_at = None;
    }

    // ----- network ------------------------------------------------------------------------

    fn link_up(&self, from: Who, to: Who, link: u8) -> bool {
        match (from, to) {
            (Who::Node(a), Who::Node(_)) => !self.node_link_down[a][usize::from(link)],
            (Who::Node(a), Who::Witness) => !self.witness_link_down[a][0],
            (Who::Witness, Who::Node(b)) => !self.witness_link_down[b][1],
            _ => false,
        }
    }

    fn transmit(
        &mut self,
        from: Who,
        to: Who,
        link: Option<u8>,
        msg: HaMsg,
        payload: Vec<(Epoch, u64)>,
    ) {
        let link = match (link, to) {
            (Some(l), _) => l,
            (None, Who::Node(_)) => {
                let links = self.opts.config.links;
                (0..links).find(|l| self.link_up(from, to, *l)).unwrap_or(0)
            }
            (None, Who::Witness) => 0,
        };
        if !self.link_up(from, to, link) || self.rng.chance(self.loss_ppm) {
            return;
        }
        let copies = if self.rng.chance(self.dup_ppm) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = self.rng.range(100, 1_500);
            if self.rng.chance(200_000) {
                delay += self.rng.range(0, 10_000);
            }
            if self.rng.chance(self.spike_ppm) {
                delay += self.rng.range(50_000, 300_000);
            }
            let ev = Ev::Deliver {
                to,
                from,
                link,
                msg: msg.clone(),
                payload: payload.clone(),
            };
            self.push(self.now + delay, ev);
        }
    }

    // ----- disks --------------------------------------------------------------------------

    fn disk_submit(&mut self, who: Who, op: DiskOp) {
        let lat = {
            let (slow, latency) = match who {
                Who::Node(i) => (self.nodes[i].disk.slow, self.nodes[i].disk.latency),
                Who::Witness => (self.witness_disk.slow, self.witness_disk.latency),
            };
            if let Some((lo, hi)) = latency {
                self.rng.range(lo, hi)
            } else if slow {
                self.rng.range(50_000, 400_000)
            } else {
                self.rng.range(200, 3_000)
            }
        };
        let now = self.now;
        let (disk, inc) = match who {
            Who::Node(i) => {
                if self.nodes[i].pending_since.is_none() {
                    self.nodes[i].pending_since = Some(now);
                }
                let n = &mut self.nodes[i];
                (&mut n.disk, n.inc)
            }
            Who::Witness => (&mut self.witness_disk, self.witness_inc),
        };
        disk.next_seq += 1;
        let seq = disk.next_seq;
        disk.queue.push_back((seq, op));
        if disk.failed {
            return;
        }
        // FIFO with group commit: an op completes after its own latency, never before an
        // earlier one.
        let at = disk.busy_until.max(now + lat);
        disk.busy_until = at;
        self.push(at, Ev::Disk { who, inc, seq });
    }

    fn disk_done(&mut self, who: Who, inc: u32, seq: u64) {
        let (disk, cur_inc) = match who {
            Who::Node(i) => {
                let n = &mut self.nodes[i];
                (&mut n.disk, n.inc)
            }
            Who::Witness => (&mut self.witness_disk, self.witness_inc),
        };
        if inc != cur_inc || disk.failed {
            return;
        }
        let Some(pos) = disk.queue.iter().position(|(s, _)| *s == seq) else {
            return;
        };
        // FIFO: everything before completes too (it was scheduled earlier).
        let done: Vec<DiskOp> = disk.queue.drain(..=pos).map(|(_, op)| op).collect();
        if let Who::Node(i) = who {
            self.nodes[i].pending_since = if self.nodes[i].disk.queue.is_empty() {
                None
            } else {
                Some(self.now)
            };
        }
        for op in done {
            match (who, op) {
                (Who::Node(i), DiskOp::Epoch(st)) => {
                    let old = self.nodes[i].epoch_state;
                    if st.epoch < old.epoch || st.log_epoch < old.log_epoch {
                        self.violation(format!("node {i} epoch went backwards: {old:?} -> {st:?}"));
                    }
                    self.nodes[i].epoch_state = st;
                    self.node_input(i, Input::EpochPersisted(st));
                }
                (
                    Who::Node(i),
                    DiskOp::Write {
                        from,
                        entries,
                        replicated,
                    },
                ) => {
                    let n = &mut self.nodes[i];
                    let len = n.stream.len() as u64;
                    if from > len {
                        self.violation(format!(
                            "node {i} write at {from} leaves a gap after {len}"
                        ));
                        continue;
                    }
                    for (k, e) in entries.into_iter().enumerate() {
                        let o = from + k as u64;
                        let n = &mut self.nodes[i];
                        if (o as usize) < n.stream.len() {
                            n.stream[o as usize] = e;
                        } else {
                            n.stream.push(e);
                        }
                        if let Some(c) = self.committed.get(o as usize).filter(|_| replicated) {
                            if *c != e {
                                self.violation(format!(
                                    "node {i} overwrote committed offset {o}: {c:?} with {e:?}"
                                ));
                            }
                        }
                    }
                    let upto = Offset(self.nodes[i].stream.len() as u64);
                    self.node_input(i, Input::StreamAppended { upto });
                }
                (Who::Witness, DiskOp::Witness(st)) => {
                    if st.voted < self.witness_state.voted || st.record < self.witness_state.record
                    {
                        self.violation("witness state went backwards".into());
                    }
                    self.witness_state = st;
                    let now = self.witness_clock.local_ms(self.now);
                    if let Some(w) = &mut self.witness {
                        w.handle_persisted(now, st);
                    }
                    self.after_witness();
                }
                _ => {}
            }
        }
    }

    // ----- driving the cores --------------------------------------------------------------

    fn node_input(&mut self, i: usize, input: Input) {
        let now = self.local(i);
        if self.opts.trace && !matches!(input, Input::Health(_)) {
            eprintln!("{:>8.3} n{i} <- {input:?}", self.now as f64 / 1e6);
        }
        let Some(core) = &mut self.nodes[i].core else {
            return;
        };
        self.touched = Some(i);
        core.handle_input(now, input);
        self.after_node(i);
    }

    fn after_node(&mut self, i: usize) {
        loop {
            let Some(core) = &mut self.nodes[i].core else {
                return;
            };
            let Some(a) = core.poll_action() else { break };
            self.do_action(i, a);
        }
        let Some(core) = &self.nodes[i].core else {
            return;
        };
        if let Some(d) = core.poll_deadline() {
            let g = self.nodes[i].clock.global_of(d).max(self.now);
            if self.nodes[i].timer_at.is_none_or(|t| g < t || t < self.now) {
                self.nodes[i].timer_at = Some(g);
                let inc = self.nodes[i].inc;
                self.push(g, Ev::Timer { node: i, inc });
            }
        }
    }

    fn do_action(&mut self, i: usize, a: Action) {
        if self.opts.trace {
            let role = self.nodes[i].core.as_ref().map(|c| c.role());
            eprintln!("{:>8.3} n{i} -> {a:?}  [{role:?}]", self.now as f64 / 1e6);
        }
        match a {
            Action::Send { to, link, msg } => {
                let to = match to {
                    Party::Node(n) => Who::Node(usize::from(n.0)),
                    Party::Witness => Who::Witness,
                };
                let payload = match &msg {
                    HaMsg::Append { from, .. } if from.0 < self.nodes[i].start => {
                        // Retention deleted them: the binary cannot read them, sends nothing.
                        return;
                    }
                    HaMsg::Append { from, upto, .. } => {
                        let s = &self.nodes[i].stream;
                        let hi = (upto.0 as usize).min(s.len());
                        let lo = (from.0 as usize).min(hi);
                        s[lo..hi].to_vec()
                    }
                    _ => Vec::new(),
                };
                if to == Who::Witness
                    && self.witness.is_none()
                    && self.opts.policy != Policy::Witness
                {
                    return;
                }
                self.transmit(Who::Node(i), to, link, msg, payload);
            }
            Action::PersistEpoch(st) => self.disk_submit(Who::Node(i), DiskOp::Epoch(st)),
            Action::StartPublishing {
                epoch,
                from_offset,
                lease_until,
            } => {
                let n = &self.nodes[i];
                // Local appends still in flight (slow disk) are not known to the core yet.
                if from_offset.0 > n.pending_len {
                    let pl = n.pending_len;
                    self.violation(format!(
                        "node {i} publishes from {from_offset} but holds {pl}"
                    ));
                }
                if let Some(owner) = self.epoch_owner.get(&epoch) {
                    if *owner != i {
                        self.violation(format!("two actives in epoch {epoch}: {owner} and {i}"));
                    }
                }
                self.epoch_owner.insert(epoch, i);
                let held = self.nodes[i].stream.len();
                if held < self.committed.len()
                    || self.nodes[i].stream[..self.committed.len()] != self.committed[..]
                {
                    let c = self.committed.len();
                    self.violation(format!("node {i} promoted in epoch {epoch} lacking committed entries ({held} < {c})"));
                }
                let n = &mut self.nodes[i];
                n.publishing = Some(epoch);
                n.lease_until = lease_until;
                // Service is restored once any node publishes in a newer epoch than the one
                // at the fault (a rebooted active with the better stream may win it).
                if self.fault_at.is_some() && epoch > self.fault_epoch && self.failover_at.is_none()
                {
                    self.failover_at = Some(self.now);
                }
            }
            Action::ExtendLease { lease_until } => self.nodes[i].lease_until = lease_until,
            Action::StopPublishing(_) => self.nodes[i].publishing = None,
            Action::TruncateStream { from } => {
                let from = from.0;
                // A node truncates only beyond its commit point (its divergent suffix may sit
                // at offsets that the history has committed with other entries since).
                if from < self.nodes[i].commit {
                    let c = self.nodes[i].commit;
                    self.violation(format!(
                        "node {i} truncates committed entries from {from} (its commit {c})"
                    ));
                }
                let n = &mut self.nodes[i];
                n.stream.truncate(from as usize);
                n.verified = n.verified.min(from);
                for (_, op) in n.disk.queue.iter_mut() {
                    if let DiskOp::Write {
                        from: f, entries, ..
                    } = op
                    {
                        let keep = from.saturating_sub(*f) as usize;
                        entries.truncate(keep);
                    }
                }
                n.pending_len = n.pending_len.min(from);
            }
            Action::ResetStream { start } => {
                // Retention deletes only committed entries, so a copy restarts at most at the
                // end of the committed history; the entries below stay in `stream` as the
                // committed ones (for the checks), the rest is gone.
                let start = start.0;
                let c = self.committed.len() as u64;
                if start > c {
                    self.violation(format!(
                        "node {i} restarts its stream at {start}, beyond the committed history ({c})"
                    ));
                    return;
                }
                self.stream_restarts += 1;
                let n = &mut self.nodes[i];
                n.stream = self.committed[..start as usize].to_vec();
                n.start = n.start.max(start);
                n.verified = n.verified.min(start);
                n.pending_len = start;
                for (_, op) in n.disk.queue.iter_mut() {
                    if let DiskOp::Write { from, entries, .. } = op {
                        entries.clear();
                        *from = 0;
                    }
                }
            }
            Action::AcceptEntries {
                from,
                upto,
                entry_epoch,
            } => {
                let Some(p) = self.cur_payload.clone() else {
                    self.violation(format!("node {i} accepts entries without an Append"));
                    return;
                };
                let lo = from.0.saturating_sub(self.cur_payload_from) as usize;
                let hi = upto.0.saturating_sub(self.cur_payload_from) as usize;
                if hi > p.len() || lo > hi || from.0 != self.nodes[i].pending_len {
                    self.violation(format!(
                        "node {i} accepts [{from}, {upto}) not carried by the Append"
                    ));
                    return;
                }
                let entries = p[lo..hi].to_vec();
                if entries.iter().any(|(e, _)| *e != entry_epoch) {
                    self.violation(format!(
                        "node {i} accepts entries of another epoch than {entry_epoch}"
                    ));
                }
                self.nodes[i].pending_len = upto.0;
                self.disk_submit(
                    Who::Node(i),
                    DiskOp::Write {
                        from: from.0,
                        entries,
                        replicated: true,
                    },
                );
            }
            Action::Committed { upto } => {
                let upto = upto.0;
                let n = &self.nodes[i];
                if upto as usize > n.stream.len() {
                    let l = n.stream.len();
                    self.violation(format!("node {i} commits up to {upto} but holds {l}"));
                    return;
                }
                let from = n.verified.min(upto);
                for o in from..upto {
                    let e = self.nodes[i].stream[o as usize];
                    match self.committed.get(o as usize) {
                        Some(c) if *c != e => {
                            let c = *c;
                            self.violation(format!(
                                "node {i} committed {e:?} at {o}, history has {c:?}"
                            ));
                        }
                        Some(_) => {}
                        None => self.committed.push(e),
                    }
                }
                let n = &mut self.nodes[i];
                n.verified = n.verified.max(upto);
                n.commit = n.commit.max(upto);
            }
            Action::StartResync => {
                let inc = self.nodes[i].inc;
                let at = self.now + self.rng.range(10_000, 200_000);
                self.push(
                    at,
                    Ev::Later {
                        node: i,
                        inc,
                        input: Input::ResyncDone,
                    },
                );
            }
            Action::RunFenceCommand => {
                let inc = self.nodes[i].inc;
                let at = self.now + self.rng.range(50_000, 400_000);
                self.push(
                    at,
                    Ev::Later {
                        node: i,
                        inc,
                        input: Input::FenceResult { ok: true },
                    },
                );
            }
            Action::Ping => {
                let inc = self.nodes[i].inc;
                let at = self.now + self.rng.range(5_000, 50_000);
                let reachable =
                    !self.node_link_down[i].iter().all(|d| *d) || !self.witness_link_down[i][0];
                self.push(
                    at,
                    Ev::Later {
                        node: i,
                        inc,
                        input: Input::PingResult { reachable },
                    },
                );
            }
            Action::ShutdownReady => {
                self.crash_node(i);
            }
        }
    }

    fn after_witness(&mut self) {
        loop {
            let Some(w) = &mut self.witness else { return };
            let Some(a) = w.poll_action() else { return };
            match a {
                WitnessAction::Persist(st) => {
                    if self.opts.trace {
                        eprintln!("{:>8.3} w -> persist {st:?}", self.now as f64 / 1e6);
                    }
                    self.disk_submit(Who::Witness, DiskOp::Witness(st))
                }
                WitnessAction::Send { to, msg } => self.transmit(
                    Who::Witness,
                    Who::Node(usize::from(to.0)),
                    None,
                    msg,
                    Vec::new(),
                ),
            }
        }
    }

    fn app_tick(&mut self, i: usize) {
        self.retention_pass(i);
        let now_local = self.local(i);
        let n = &self.nodes[i];
        let stalled = n.stalled_since.is_some();
        // The merger appends while publishing under a valid lease, unless stalled.
        if let Some(epoch) = n.publishing {
            if now_local < n.lease_until && !stalled {
                let k = self.rng.range(0, 3);
                if k > 0 {
                    let from = self.nodes[i].pending_len;
                    let mut entries = Vec::new();
                    for _ in 0..k {
                        entries.push((epoch, self.next_id));
                        self.next_id += 1;
                    }
                    self.nodes[i].pending_len += k;
                    self.disk_submit(
                        Who::Node(i),
                        DiskOp::Write {
                            from,
                            entries,
                            replicated: false,
                        },
                    );
                }
            }
            self.sink_deliver(i, epoch);
        }
        let n = &self.nodes[i];
        let ms = |since: Option<u64>, now: u64| since.map_or(0, |s| ((now - s) / US) as u32);
        let fsync_ms = ms(n.pending_since, self.now);
        let stall_ms = ms(n.stalled_since, self.now);
        // Shared load: both nodes see it, each with its own jitter (80-120 %).
        let load = |sim: &mut Sim| {
            let level = u64::from(sim.load_ms);
            u32::try_from(level * sim.rng.range(80, 120) / 100).unwrap_or(u32::MAX)
        };
        let (load_fsync, load_lag) = (load(self), load(self));
        let n = &self.nodes[i];
        let health = Health {
            receivers_ok: !n.addr_lost,
            fsync_latency_ms: fsync_ms.max(load_fsync),
            merger_stall_ms: stall_ms,
            sched_lag_ms: load_lag,
            ..Health::default()
        };
        self.node_input(i, Input::Health(health));
        let inc = self.nodes[i].inc;
        let next = self.nodes[i]
            .clock
            .global_of(Millis(now_local.0 + APP_TICK_MS));
        self.push(next.max(self.now + 1), Ev::AppTick { node: i, inc });
    }

    /// Now and then stream retention deletes a node's oldest entries: any committed ones
    /// (the binary's peer hold is capped, so an active may delete what its standby lacks).
    fn retention_pass(&mut self, i: usize) {
        // None in the last 1.5 s: a copy behind the active's first retained entry must have
        // restarted by the end (checked in `finish`).
        if self.nodes[i].core.is_none()
            || self.now.saturating_add(1_500 * US) >= self.deadline
            || !self.rng.chance(RETENTION_PPM)
        {
            return;
        }
        let n = &self.nodes[i];
        let cap = n
            .commit
            .min(self.committed.len() as u64)
            .min(n.stream.len() as u64);
        if cap <= n.start {
            return;
        }
        let start = self.rng.range(n.start + 1, cap);
        self.nodes[i].start = start;
        self.node_input(
            i,
            Input::StreamStart {
                start: Offset(start),
            },
        );
    }

    /// The node's sink forwards committed entries, stamped with its epoch; the sink rejects
    /// lower epochs (Kafka transactional fencing).
    fn sink_deliver(&mut self, i: usize, epoch: Epoch) {
        if epoch < self.sink_epoch {
            return;
        }
        let n = &self.nodes[i];
        if self.local(i) >= n.lease_until {
            return;
        }
        let upto = n.commit.min(n.stream.len() as u64);
        while (self.sink.len() as u64) < upto {
            let o = self.sink.len();
            let e = self.nodes[i].stream[o];
            if self.committed.get(o) != Some(&e) {
                self.violation(format!(
                    "node {i} publishes uncommitted or wrong entry at {o}"
                ));
                return;
            }
            self.sink.push(e);
        }
        self.sink_epoch = epoch;
    }

    /// `handled`: the node that just handled an event (its core has seen the current time).
    fn check_publishers(&mut self, handled: Option<usize>) {
        let mut valid = Vec::new();
        for i in 0..2 {
            let n = &self.nodes[i];
            if let Some(e) = n.publishing {
                if n.clock.local_ms(self.now) < n.lease_until {
                    valid.push((i, e));
                }
            }
        }
        if valid.len() > 1 {
            self.violation(format!("two publishers with valid leases: {valid:?}"));
        }
        // A node reports `active`/`solo` only with a lease valid on its own clock (the last
        // StartPublishing/ExtendLease it was given): a woken or cut-off active that lost its
        // lease does not. Checked on the node that just handled an event (a core knows the
        // time only from its inputs).
        if let Some(i) = handled {
            let n = &self.nodes[i];
            let Some(core) = &n.core else { return };
            let role = core.status().role;
            if role.is_active() && n.clock.local_ms(self.now) >= n.lease_until {
                self.violation(format!("node {i} reports {role:?} without a lease"));
            }
        }
    }

    /// `F4HangLinksDown`, at healing: the node woken at least a second ago, hearing only the
    /// witness, reports the epoch the witness voted for meanwhile (it asked for leases and was
    /// told) and publishes nothing.
    fn check_woken(&mut self) {
        if self.pattern != Some(Pattern::F4HangLinksDown) || !self.measure {
            return;
        }
        let Some(i) = self.faulted else { return };
        let n = &self.nodes[i];
        let awake_ms = self.now.saturating_sub(n.paused_until) / US;
        let Some(core) = &n.core else { return };
        if awake_ms < 1_000 || self.witness.is_none() {
            return;
        }
        let st = core.status();
        let voted = self.witness_state.voted;
        if st.epoch < voted || st.role.is_active() {
            self.violation(format!(
                "node {i} awake for {awake_ms} ms reports {:?} in {:?}; the witness voted for {voted:?}",
                st.role, st.epoch
            ));
        }
    }

    // ----- faults -------------------------------------------------------------------------

    fn apply(&mut self, f: Fault) {
        if self.opts.trace {
            eprintln!("{:>8.3} FAULT {f:?}", self.now as f64 / 1e6);
        }
        match f {
            Fault::Crash(i) => self.crash_node(i),
            Fault::Restart(i) => {
                if self.nodes[i].core.is_none() {
                    self.start_node(i)
                }
            }
            Fault::Pause(i, us) => self.nodes[i].paused_until = self.now + us,
            Fault::Shutdown(i) => self.node_input(i, Input::Shutdown),
            Fault::Switchover(i) => self.node_input(i, Input::Switchover),
            Fault::CutAll(i, down) => {
                for l in 0..8 {
                    self.node_link_down[i][l] = down;
                    self.node_link_down[other(i)][l] = down;
                }
                self.witness_link_down[i] = [down, down];
            }
            Fault::NodeLink(l, down) => {
                self.node_link_down[0][usize::from(l)] = down;
                self.node_link_down[1][usize::from(l)] = down;
            }
            Fault::OneWay(from, down) => {
                for l in 0..8 {
                    self.node_link_down[from][l] = down;
                }
            }
            Fault::WitnessLink(i, down) => self.witness_link_down[i] = [down, down],
            Fault::Stall(i, on) => {
                self.nodes[i].stalled_since = if on { Some(self.now) } else { None }
            }
            Fault::AddrLost(i, on) => self.nodes[i].addr_lost = on,
            Fault::DiskFail(who, on) => {
                let disk = match who {
                    Who::Node(i) => &mut self.nodes[i].disk,
                    Who::Witness => &mut self.witness_disk,
                };
                disk.failed = on;
                if !on {
                    // Queued ops complete now that the disk is back.
                    let seqs: Vec<u64> = disk.queue.iter().map(|(s, _)| *s).collect();
                    disk.busy_until = self.now;
                    let inc = match who {
                        Who::Node(i) => self.nodes[i].inc,
                        Who::Witness => self.witness_inc,
                    };
                    for s in seqs {
                        self.push(self.now + 1_000, Ev::Disk { who, inc, seq: s });
                    }
                }
            }
            Fault::DiskSlow(who, on) => match who {
                Who::Node(i) => self.nodes[i].disk.slow = on,
                Who::Witness => self.witness_disk.slow = on,
            },
            Fault::DiskLatency(i, latency) => self.nodes[i].disk.latency = latency,
            Fault::KillActive(i) => {
                if let Some(p) = self.failover_at.take() {
                    let f = self.fault_at.unwrap_or(p);
                    self.violation(format!(
                        "failover {} ms into the lead-in, before the active was killed",
                        p.saturating_sub(f) / US
                    ));
                }
                self.fault_at = Some(self.now);
                self.killed = Some(i);
                self.crash_node(i);
            }
            Fault::WitnessCrash => {
                self.witness = None;
                self.witness_inc += 1;
                self.witness_disk.queue.clear();
            }
            Fault::WitnessRestart => {
                if self.witness.is_none() && self.opts.policy == Policy::Witness {
                    self.start_witness();
                }
            }
            Fault::Load(level) => self.load_ms = level,
            Fault::Heal => {
                self.load_ms = 0;
                self.node_link_down = [[false; 8]; 2];
                self.witness_link_down = [[false; 2]; 2];
                for i in 0..2 {
                    self.nodes[i].stalled_since = None;
                    self.nodes[i].addr_lost = false;
                    self.nodes[i].disk.slow = false;
                    self.nodes[i].disk.latency = None;
                    self.nodes[i].paused_until = self.nodes[i].paused_until.min(self.now);
                    if self.nodes[i].disk.failed {
                        self.apply(Fault::DiskFail(Who::Node(i), false));
                    }
                    if self.nodes[i].core.is_none() && self.killed != Some(i) {
                        self.start_node(i);
                    }
                }
                if self.witness_disk.failed {
                    self.apply(Fault::DiskFail(Who::Witness, false));
                }
                if self.witness.is_none() && self.opts.policy == Policy::Witness {
                    self.start_witness();
                }
            }
        }
    }

    fn plan(&mut self, pattern: Pattern) {
        let t = WARMUP_US + self.rng.range(0, 400_000);
        self.fault_plan = Some((t, pattern));
        self.deadline = t + FAULT_US + HEAL_US;
    }
}

impl Sim {
    #[allow(clippy::too_many_lines)]
    fn start_pattern(&mut self, pattern: Pattern) {
        self.pattern = Some(pattern);
        let active = (0..2).find(|i| self.nodes[*i].publishing.is_some());
        let standby = active.map(other);
        let ready = match (active, standby) {
            (Some(a), Some(s)) => {
                self.nodes[s]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.role() == crate::msg::Role::Standby)
                    && self.nodes[a]
                        .core
                        .as_ref()
                        .is_some_and(|c| c.role() == crate::msg::Role::Active)
            }
            _ => false,
        };
        let a = active.unwrap_or(0);
        self.fault_epoch = active
            .and_then(|a| self.nodes[a].publishing)
            .unwrap_or_default();
        let s = other(a);
        self.measure = ready;
        self.fault_at = Some(self.now);
        self.faulted = Some(a);
        let now = self.now;
        let end = now + FAULT_US;
        let r = |sim: &mut Sim, lo: u64, hi: u64| now + sim.rng.range(lo, hi);
        match pattern {
            Pattern::F1PowerOff => self.apply(Fault::Crash(a)),
            Pattern::F2Shutdown => self.apply(Fault::Shutdown(a)),
            Pattern::F3Reboot => {
                self.apply(Fault::Crash(a));
                let at = r(self, 100_000, 1_500_000);
                self.push(at, Ev::Fault(Fault::Restart(a)));
            }
            Pattern::F4Hang => {
                let us = self.rng.range(1_500_000, 5_000_000);
                self.apply(Fault::Pause(a, us));
            }
            Pattern::F4HangLinksDown => {
                let us = self.rng.range(1_500_000, 2_500_000);
                self.apply(Fault::Pause(a, us));
                for l in 0..8 {
                    self.node_link_down[0][l] = true;
                    self.node_link_down[1][l] = true;
                }
            }
            Pattern::F5NetworkCut => self.apply(Fault::CutAll(a, true)),
            Pattern::F6OneLink => {
                let l = self.rng.range(0, 1) as u8;
                self.apply(Fault::NodeLink(l, true));
            }
            Pattern::F7AddressLost => self.apply(Fault::AddrLost(a, true)),
            Pattern::F8PipelineStall => self.apply(Fault::Stall(a, true)),
            Pattern::F10StandbyDown => match self.rng.range(0, 2) {
                0 => self.apply(Fault::Crash(s)),
                1 => self.apply(Fault::Pause(s, FAULT_US)),
                _ => self.apply(Fault::CutAll(s, true)),
            },
            Pattern::F11DiskFails => self.apply(Fault::DiskFail(Who::Node(a), true)),
            Pattern::F12Partition => {
                for l in 0..8 {
                    self.node_link_down[0][l] = true;
                    self.node_link_down[1][l] = true;
                }
            }
            Pattern::F13WitnessDown => self.apply(Fault::WitnessCrash),
            Pattern::Switchover => self.apply(Fault::Switchover(a)),
            Pattern::SharedLoad => {
                // Bursts of 100-800 ms at levels from idle to twice the limits.
                let mut at = now;
                while at < end {
                    let level = [0, 300, 700, 1_100, 1_500, 2_000][self.rng.range(0, 5) as usize];
                    self.push(at, Ev::Fault(Fault::Load(level)));
                    at += self.rng.range(100_000, 800_000);
                }
            }
            Pattern::F1AfterSlowStandby => {
                // Bursts of 200-800 ms at a write latency from normal to a second, then the
                // active's power goes while the standby's disk is still slow.
                let mut at = now;
                let kill = r(self, 1_000_000, 2_500_000);
                while at < end {
                    let level = match self.rng.range(0, 3) {
                        0 => None,
                        1 => Some((50_000, 300_000)),
                        2 => Some((200_000, 700_000)),
                        _ => Some((500_000, 1_000_000)),
                    };
                    self.push(at, Ev::Fault(Fault::DiskLatency(s, level)));
                    at += self.rng.range(200_000, 800_000);
                }
                self.push(kill, Ev::Fault(Fault::KillActive(a)));
            }
            Pattern::Chaos => {
                self.measure = false;
                let k = self.rng.range(2, 8);
                for _ in 0..k {
                    let at = r(self, 0, FAULT_US - 200_000);
                    let i = self.rng.range(0, 1) as usize;
                    let f = match self.rng.range(0, 13) {
                        0 => Fault::Crash(i),
                        1 => Fault::Restart(i),
                        2 => Fault::Pause(i, self.rng.range(100_000, 3_000_000)),
                        3 => Fault::CutAll(i, self.rng.range(0, 1) == 0),
                        4 => Fault::OneWay(i, self.rng.range(0, 1) == 0),
                        5 => Fault::WitnessLink(i, self.rng.range(0, 1) == 0),
                        6 => Fault::Stall(i, self.rng.range(0, 1) == 0),
                        7 => Fault::DiskFail(Who::Node(i), self.rng.range(0, 1) == 0),
                        8 => Fault::DiskSlow(Who::Node(i), self.rng.range(0, 1) == 0),
                        9 => Fault::WitnessCrash,
                        10 => Fault::WitnessRestart,
                        11 => Fault::Switchover(i),
                        _ => Fault::NodeLink(self.rng.range(0, 1) as u8, self.rng.range(0, 1) == 0),
                    };
                    self.push(at, Ev::Fault(f));
                }
            }
        }
        self.committed_at_fault = self.committed.len();
        self.heal_at = end;
        self.push(end, Ev::Fault(Fault::Heal));
    }

    fn run(&mut self) {
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if t > self.deadline {
                break;
            }
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.now = t;
            self.event_count += 1;
            if self.event_count > EVENTS_MAX {
                self.violation(format!(
                    "more than {EVENTS_MAX} events: a busy loop (last {ev:?})"
                ));
                break;
            }
            if let Some((pt, p)) = self.fault_plan {
                if t >= pt {
                    self.fault_plan = None;
                    self.start_pattern(p);
                }
            }
            // A paused process handles nothing until it resumes (its clock keeps running).
            let target = match &ev {
                Ev::Deliver {
                    to: Who::Node(i), ..
                }
                | Ev::Timer { node: i, .. }
                | Ev::AppTick { node: i, .. }
                | Ev::Later { node: i, .. } => Some(*i),
                Ev::Disk {
                    who: Who::Node(i), ..
                } => Some(*i),
                _ => None,
            };
            if let Some(i) = target {
                if self.nodes[i].paused_until > t {
                    // Its inbound queues fill; on waking it drains them, the links' queues
                    // interleaved (up to 3 ms apart).
                    let mut at = self.nodes[i].paused_until;
                    if matches!(ev, Ev::Deliver { .. }) {
                        at += self.rng.range(0, 3_000);
                    }
                    self.push(at, ev);
                    continue;
                }
            }
            self.touched = None;
            self.handle(ev);
            let touched = self.touched;
            self.check_publishers(touched);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                to,
                from,
                link,
                msg,
                payload,
            } => match to {
                Who::Node(i) => {
                    let from_from = match &msg {
                        HaMsg::Append { from, .. } => from.0,
                        _ => 0,
                    };
                    self.cur_payload = Some(payload);
                    self.cur_payload_from = from_from;
                    let input = match from {
                        Who::Witness => Input::Witness(msg),
                        Who::Node(_) => Input::Peer { link, msg },
                    };
                    self.node_input(i, input);
                    self.cur_payload = None;
                }
                Who::Witness => {
                    let now = self.witness_clock.local_ms(self.now);
                    let Who::Node(n) = from else { return };
                    if self.opts.trace {
                        eprintln!("{:>8.3} w <- n{n} {msg:?}", self.now as f64 / 1e6);
                    }
                    if let Some(w) = &mut self.witness {
                        w.handle_input(now, NodeId(n as u8), msg);
                        self.after_witness();
                    }
                }
            },
            Ev::Timer { node, inc } => {
                if self.nodes[node].inc != inc || self.nodes[node].timer_at != Some(self.now) {
                    return;
                }
                self.nodes[node].timer_at = None;
                let now = self.local(node);
                if let Some(core) = &mut self.nodes[node].core {
                    self.touched = Some(node);
                    core.handle_timeout(now);
                }
                self.after_node(node);
            }
            Ev::Disk { who, inc, seq } => self.disk_done(who, inc, seq),
            Ev::AppTick { node, inc } => {
                if self.nodes[node].inc == inc && self.nodes[node].core.is_some() {
                    self.app_tick(node);
                }
            }
            Ev::Later { node, inc, input } => {
                if self.nodes[node].inc == inc {
                    if let Input::FenceResult { ok: true } = input {
                        // The fence command powers the peer off.
                        self.crash_node(other(node));
                    }
                    self.node_input(node, input);
                }
            }
            Ev::Fault(Fault::Heal) => {
                if self.heal_at == self.now {
                    self.commit_progress = self.committed.len() > self.committed_at_fault;
                    self.check_woken();
                }
                self.apply(Fault::Heal)
            }
            Ev::Fault(f) => self.apply(f),
        }
    }

    fn finish(&mut self, pattern: Pattern) {
        let limit = self.opts.failover_limit_ms;
        let failover_ms = match (self.fault_at, self.failover_at) {
            (Some(f), Some(p)) => Some((p - f) / US),
            _ => None,
        };
        if self.measure && pattern.expects_failover() {
            match failover_ms {
                Some(ms) if ms <= limit => {}
                Some(ms) => {
                    self.violation(format!("{pattern:?}: failover took {ms} ms > {limit} ms"))
                }
                None => {
                    // Say why: a standby that lacks committed entries may not take over.
                    let s = other(self.faulted.unwrap_or(0));
                    let held = self.nodes[s].stream.len();
                    let c = self.committed.len();
                    let refused = self
                        .witness
                        .as_ref()
                        .map_or(0, |w| w.stats().votes_refused_total);
                    let says = self.nodes[s]
                        .core
                        .as_ref()
                        .map(|c| c.status().lacks_committed);
                    self.violation(format!(
                        "{pattern:?}: no failover within {limit} ms (node {s} holds {held} \
                         entries, {c} committed; witness refused {refused} votes; node {s} \
                         reports lacks_committed={says:?})"
                    ))
                }
            }
        }
        if self.measure && pattern.forbids_failover() {
            if let (Some(f), Some(p)) = (self.fault_at, self.failover_at) {
                if p < self.heal_at {
                    let handovers: Vec<(u64, u64)> = self
                        .nodes
                        .iter()
                        .map(|n| {
                            n.core.as_ref().map_or((0, 0), |c| {
                                let s = c.stats();
                                (s.handovers_total, s.health_handovers_total)
                            })
                        })
                        .collect();
                    self.violation(format!(
                        "{pattern:?}: false failover after {} ms (handovers, of them for \
                         health, per node: {handovers:?})",
                        (p - f) / US
                    ));
                }
            }
            if !self.commit_progress {
                self.violation(format!("{pattern:?}: the active stopped committing"));
            }
        }
        // At most one handover per fault: one new publishing epoch at most (none where a
        // failover is forbidden, checked above).
        if self.measure && pattern != Pattern::Chaos {
            let fault_epoch = self.fault_epoch;
            let after = Epoch(fault_epoch.0 + 1);
            let new_epochs = self.epoch_owner.range(after..).count();
            if new_epochs > 1 {
                let owners: Vec<_> = self.epoch_owner.range(after..).collect();
                self.violation(format!(
                    "{pattern:?}: {new_epochs} new publishing epochs after one fault: {owners:?}"
                ));
            }
        }
        // A follower behind the active's first retained entry was told to restart its copy
        // there: none is left below it (retention stops 1.5 s before the end).
        for i in 0..2 {
            let j = other(i);
            let (a, f) = (&self.nodes[i], &self.nodes[j]);
            if a.publishing.is_some() && f.core.is_some() && f.pending_len < a.start {
                let (held, start) = (f.pending_len, a.start);
                self.violation(format!(
                    "{pattern:?}: node {j}'s copy ends at {held}, below the active's first \
                     retained offset {start}"
                ));
            }
        }
        // After healing, a node that hears its peer adopts the higher epoch (a node woken from
        // a pause must not keep acting on what it queued while stopped).
        let epochs: Vec<Option<Epoch>> = self
            .nodes
            .iter()
            .map(|n| n.core.as_ref().map(|c| c.status().epoch))
            .collect();
        if let [Some(ea), Some(eb)] = epochs[..] {
            if ea != eb {
                self.violation(format!(
                    "{pattern:?}: epochs differ 3 s after healing: a {ea:?}, b {eb:?}"
                ));
            }
        }
        // Liveness after healing: someone publishes again.
        let publishing = (0..2).any(|i| {
            let n = &self.nodes[i];
            n.publishing.is_some() && n.clock.local_ms(self.now) < n.lease_until
        });
        if !publishing {
            self.violation("nobody publishes 3 s after healing".into());
        }
    }
}

/// Runs one schedule: everything it does is drawn from `seed`.
pub fn run_schedule(seed: u64, opts: &SimOptions) -> Outcome {
    let mut sim = Sim::new(seed, opts.clone());
    let pattern = opts.patterns[(sim.rng.next_u64() % opts.patterns.len() as u64) as usize];
    sim.plan(pattern);
    sim.run();
    sim.finish(pattern);
    let failover_ms = match (sim.measure, sim.fault_at, sim.failover_at) {
        (true, Some(f), Some(p)) if pattern.expects_failover() => Some((p - f) / US),
        _ => None,
    };
    Outcome {
        seed,
        pattern,
        violations: sim.violations,
        measured: sim.measure,
        failover_ms,
        events: sim.event_count,
        stream_restarts: sim.stream_restarts,
    }
}

/// Percentiles of a sample (sorted in place): (p50, p99, max).
pub fn percentiles(v: &mut [u64]) -> Option<(u64, u64, u64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Some((at(0.50), at(0.99), v[v.len() - 1]))
}

/// Aggregate of a campaign of schedules.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub schedules: u64,
    pub measured: u64,
    pub events: u64,
    pub stream_restarts: u64,
    pub failed: Vec<Outcome>,
    pub failover_ms: Vec<u64>,
    pub per_pattern: BTreeMap<Pattern, Vec<u64>>,
}

impl Summary {
    pub fn add(&mut self, o: Outcome) {
        self.schedules += 1;
        self.events += o.events;
        self.stream_restarts += o.stream_restarts;
        if o.measured {
            self.measured += 1;
        }
        if let Some(ms) = o.failover_ms {
            self.failover_ms.push(ms);
            self.per_pattern.entry(o.pattern).or_default().push(ms);
        }
        if !o.violations.is_empty() {
            self.failed.push(o);
        }
    }

    /// The one summary line of the campaign command.
    pub fn line(&self) -> String {
        let mut v = self.failover_ms.clone();
        let (p50, p99, max) = percentiles(&mut v).unwrap_or((0, 0, 0));
        format!(
            "schedules={} violations={} failover_ms_p50={p50} failover_ms_p99={p99} failover_ms_max={max} stream_restarts={}",
            self.schedules,
            self.failed.len(),
            self.stream_restarts
        )
    }
}

/// Runs `n` schedules with seeds `first, first+1, …`.
pub fn campaign(first: u64, n: u64, opts: &SimOptions) -> Summary {
    let mut s = Summary::default();
    for k in 0..n {
        s.add(run_schedule(first.wrapping_add(k), opts));
    }
    s
}
