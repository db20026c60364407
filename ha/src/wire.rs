//! Byte encoding of `HaMsg` for the cluster and witness links (STYLE §6: explicit widths,
//! big-endian, never `usize`). The binary frames each encoded message (length prefix,
//! authentication); an `Append` frame is followed by its entries' payload, which is not part of
//! this encoding.
//!
//! Layout: `version: u8 = 1`, `tag: u8`, then the fields in declaration order:
//! `Epoch`, `Offset`, `Millis`: u64; `NodeId`: u8; `bool`: u8 (0/1); `Role`: u8 (0 active,
//! 1 solo, 2 standby, 3 syncing, 4 stopped); `LogPos`: log_epoch u64, end u64; `Health`:
//! receivers_ok u8, fsync_latency_ms u32, disk_free_bytes u64, merger_stall_ms u32,
//! sink_stall_ms u32, sched_lag_ms u32; `Vec<Run>`: count u32 (at most `RUNS_MAX`), then per
//! run epoch u64, start u64. (`SyncRequest` and `SyncReply` end with `start`, issue #14.)
//!
//! Tags: 1 Heartbeat, 2 HeartbeatAck, 3 SyncRequest, 4 SyncReply, 5 Append, 6 AppendAck,
//! 7 Handover, 8 Leaving, 9 VoteRequest, 10 VoteReply, 11 LeaseRequest, 12 LeaseReply,
//! 13 LeaseRelease.

use twinrx_types::{Epoch, Millis, NodeId, Offset};

use crate::msg::{HaMsg, Health, LogPos, Role, Run};

pub const VERSION: u8 = 1;
/// Most runs a `SyncRequest` may carry (one per epoch that wrote entries).
pub const RUNS_MAX: u32 = 1 << 16;

/// Why bytes are not a valid message. Bad peer input is dropped and counted, never a panic.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated at byte {at}")]
    Truncated { at: usize },
    #[error("unsupported encoding version {0} (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown message tag {0}")]
    Tag(u8),
    #[error("invalid value {value} for {field}")]
    Value { field: &'static str, value: u64 },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn e(&mut self, v: Epoch) {
        self.u64(v.0);
    }
    fn o(&mut self, v: Offset) {
        self.u64(v.0);
    }
    fn t(&mut self, v: Millis) {
        self.u64(v.0);
    }
    fn log(&mut self, v: LogPos) {
        self.e(v.log_epoch);
        self.o(v.end);
    }
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &HaMsg, out: &mut Vec<u8>) {
    let mut w = W(out);
    w.u8(VERSION);
    match msg {
        HaMsg::Heartbeat {
            epoch,
            role,
            log,
            commit_end,
            health,
            healthy,
            sent_at,
        } => {
            w.u8(1);
            w.e(*epoch);
            w.u8(match role {
                Role::Active => 0,
                Role::Solo => 1,
                Role::Standby => 2,
                Role::Syncing => 3,
                Role::Stopped => 4,
            });
            w.log(*log);
            w.o(*commit_end);
            w.bool(health.receivers_ok);
            w.u32(health.fsync_latency_ms);
            w.u64(health.disk_free_bytes);
            w.u32(health.merger_stall_ms);
            w.u32(health.sink_stall_ms);
            w.u32(health.sched_lag_ms);
            w.bool(*healthy);
            w.t(*sent_at);
        }
        HaMsg::HeartbeatAck { epoch, echo } => {
            w.u8(2);
            w.e(*epoch);
            w.t(*echo);
        }
        HaMsg::SyncRequest {
            epoch,
            end,
            runs,
            start,
        } => {
            w.u8(3);
            w.e(*epoch);
            w.o(*end);
            let n = runs.len().min(RUNS_MAX as usize);
            w.u32(n as u32);
            for r in &runs[runs.len() - n..] {
                w.e(r.epoch);
                w.o(r.start);
            }
            w.o(*start);
        }
        HaMsg::SyncReply {
            epoch,
            truncate_to,
            target,
            commit_end,
            start,
        } => {
            w.u8(4);
            w.e(*epoch);
            w.o(*truncate_to);
            w.o(*target);
            w.o(*commit_end);
            w.o(*start);
        }
        HaMsg::Append {
            epoch,
            from,
            upto,
            entry_epoch,
            commit_end,
        } => {
            w.u8(5);
            w.e(*epoch);
            w.o(*from);
            w.o(*upto);
            w.e(*entry_epoch);
            w.o(*commit_end);
        }
        HaMsg::AppendAck { epoch, end } => {
            w.u8(6);
            w.e(*epoch);
            w.o(*end);
        }
        HaMsg::Handover { epoch, end } => {
            w.u8(7);
            w.e(*epoch);
            w.o(*end);
        }
        HaMsg::Leaving { epoch } => {
            w.u8(8);
            w.e(*epoch);
        }
        HaMsg::VoteRequest {
            epoch,
            candidate,
            log,
            sent_at,
        } => {
            w.u8(9);
            w.e(*epoch);
            w.u8(candidate.0);
            w.log(*log);
            w.t(*sent_at);
        }
        HaMsg::VoteReply {
            epoch,
            granted,
            voter_epoch,
            wait_ms,
            echo,
        } => {
            w.u8(10);
            w.e(*epoch);
            w.bool(*granted);
            w.e(*voter_epoch);
            w.u64(*wait_ms);
            w.t(*echo);
        }
        HaMsg::LeaseRequest {
            epoch,
            node,
            sent_at,
            record,
        } => {
            w.u8(11);
            w.e(*epoch);
            w.u8(node.0);
            w.t(*sent_at);
            w.log(*record);
        }
        HaMsg::LeaseReply {
            epoch,
            granted,
            voted,
            recorded,
            echo,
        } => {
            w.u8(12);
            w.e(*epoch);
            w.bool(*granted);
            w.e(*voted);
            w.log(*recorded);
            w.t(*echo);
        }
        HaMsg::LeaseRelease { epoch, node } => {
            w.u8(13);
            w.e(*epoch);
            w.u8(node.0);
        }
    }
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
}

impl R<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self
            .b
            .get(self.at..self.at + N)
            .ok_or(DecodeError::Truncated { at: self.b.len() })?;
        self.at += N;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::Value {
                field,
                value: u64::from(v),
            }),
        }
    }
    fn e(&mut self) -> Result<Epoch, DecodeError> {
        self.u64().map(Epoch)
    }
    fn o(&mut self) -> Result<Offset, DecodeError> {
        self.u64().map(Offset)
    }
    fn t(&mut self) -> Result<Millis, DecodeError> {
        self.u64().map(Millis)
    }
    fn node(&mut self) -> Result<NodeId, DecodeError> {
        match self.u8()? {
            v @ (0 | 1) => Ok(NodeId(v)),
            v => Err(DecodeError::Value {
                field: "node",
                value: u64::from(v),
            }),
        }
    }
    fn log(&mut self) -> Result<LogPos, DecodeError> {
        Ok(LogPos {
            log_epoch: self.e()?,
            end: self.o()?,
        })
    }
}

/// Decodes one whole message.
pub fn decode(bytes: &[u8]) -> Result<HaMsg, DecodeError> {
    let mut r = R { b: bytes, at: 0 };
    let v = r.u8()?;
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    let msg = match r.u8()? {
        1 => HaMsg::Heartbeat {
            epoch: r.e()?,
            role: match r.u8()? {
                0 => Role::Active,
                1 => Role::Solo,
                2 => Role::Standby,
                3 => Role::Syncing,
                4 => Role::Stopped,
                v => {
                    return Err(DecodeError::Value {
                        field: "role",
                        value: u64::from(v),
                    })
                }
            },
            log: r.log()?,
            commit_end: r.o()?,
            health: Health {
                receivers_ok: r.bool("receivers_ok")?,
                fsync_latency_ms: r.u32()?,
                disk_free_bytes: r.u64()?,
                merger_stall_ms: r.u32()?,
                sink_stall_ms: r.u32()?,
                sched_lag_ms: r.u32()?,
            },
            healthy: r.bool("healthy")?,
            sent_at: r.t()?,
        },
        2 => HaMsg::HeartbeatAck {
            epoch: r.e()?,
            echo: r.t()?,
        },
        3 => {
            let epoch = r.e()?;
            let end = r.o()?;
            let n = r.u32()?;
            if n > RUNS_MAX {
                return Err(DecodeError::Value {
                    field: "runs",
                    value: u64::from(n),
                });
            }
            let mut runs = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                runs.push(Run {
                    epoch: r.e()?,
                    start: r.o()?,
                });
            }
            HaMsg::SyncRequest {
                epoch,
                end,
                runs,
                start: r.o()?,
            }
        }
        4 => HaMsg::SyncReply {
            epoch: r.e()?,
            truncate_to: r.o()?,
            target: r.o()?,
            commit_end: r.o()?,
            start: r.o()?,
        },
        5 => HaMsg::Append {
            epoch: r.e()?,
            from: r.o()?,
            upto: r.o()?,
            entry_epoch: r.e()?,
            commit_end: r.o()?,
        },
        6 => HaMsg::AppendAck {
            epoch: r.e()?,
            end: r.o()?,
        },
        7 => HaMsg::Handover {
            epoch: r.e()?,
            end: r.o()?,
        },
        8 => HaMsg::Leaving { epoch: r.e()? },
        9 => HaMsg::VoteRequest {
            epoch: r.e()?,
            candidate: r.node()?,
            log: r.log()?,
            sent_at: r.t()?,
        },
        10 => HaMsg::VoteReply {
            epoch: r.e()?,
            granted: r.bool("granted")?,
            voter_epoch: r.e()?,
            wait_ms: r.u64()?,
            echo: r.t()?,
        },
        11 => HaMsg::LeaseRequest {
            epoch: r.e()?,
            node: r.node()?,
            sent_at: r.t()?,
            record: r.log()?,
        },
        12 => HaMsg::LeaseReply {
            epoch: r.e()?,
            granted: r.bool("granted")?,
            voted: r.e()?,
            recorded: r.log()?,
            echo: r.t()?,
        },
        13 => HaMsg::LeaseRelease {
            epoch: r.e()?,
            node: r.node()?,
        },
        t => return Err(DecodeError::Tag(t)),
    };
    if r.at != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - r.at));
    }
    Ok(msg)
}
