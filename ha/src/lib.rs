//! `ha`: the HA core and the witness of twinrx as pure state machines, and the deterministic
//! simulator that checks them (SPEC "HA core", guarantees G3 one publisher and G4 fast
//! failover).
//!
//! Layout:
//! - [`node`]: `HaCore`, one node's state machine: roles, heartbeats, epochs, votes, leases,
//!   handover, merged-stream replication and commit model.
//! - [`witness`]: `Witness`, the tiny third voter.
//! - [`msg`]: what goes on the wire; [`wire`]: its byte encoding.
//! - [`config`]: `[ha]` settings, defaults and validation.
//! - [`sim`]: the seeded simulator (two nodes, a witness, a faulty network and disks) with its
//!   invariant checker; driven by `tests/` and `examples/sim.rs`.
//!
//! No async runtime, clock or RNG: time is an argument, randomness a seed.

pub mod config;
pub mod msg;
pub mod node;
pub mod sim;
pub mod wire;
pub mod witness;

pub use config::{Config, ConfigError, HealthLimits, Policy, ValidConfig, WitnessConfig};
pub use msg::{EpochState, HaMsg, Health, LogPos, Role, Run};
pub use node::{
    Action, HaCore, HandoverReason, Input, LinkId, Party, Restored, Stats, Status, StopReason,
    DWELL_MAX_MS, DWELL_MS,
};
pub use witness::{Witness, WitnessAction, WitnessState, WitnessStats};
