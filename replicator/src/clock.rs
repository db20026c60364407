//! The peers' clock offset, measured over the link (PROTOCOL.md "Clock samples").
//!
//! Each side sends a `CLOCK` frame every `clock_interval` in the control lane, whatever else
//! it sends: its wall clock when it sends (`sent_us`), and an echo of the last `CLOCK` it
//! received (`echo_us`, the peer's `sent_us`) with how long it held it (`held_us`). The
//! receiver of an echo has the four timestamps of an NTP exchange (RFC 5905 §8):
//! t1 = `echo_us` (its own send), t2 = `sent_us − held_us` (the peer's receive),
//! t3 = `sent_us` (the peer's send), t4 = its receive; offset = ((t2 − t1) + (t3 − t4)) / 2 is
//! the peer's clock minus its own, rtt = (t4 − t1) − (t3 − t2). Of the last
//! [`FILTER_SAMPLES`] samples the one with the smallest round trip is reported (queueing
//! delays only lengthen a round trip, and its error is at most half of it).

use crate::frame::Cursor;

/// Samples the filter keeps.
pub const FILTER_SAMPLES: usize = 8;

/// A `CLOCK` frame's payload (24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Clock {
    /// The sender's wall clock, µs since the Unix epoch.
    pub sent_us: u64,
    /// The `sent_us` of the last `CLOCK` the sender received (0: none yet).
    pub echo_us: u64,
    /// How long the sender held that one before this send, µs.
    pub held_us: u64,
}

impl Clock {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(24);
        p.extend_from_slice(&self.sent_us.to_be_bytes());
        p.extend_from_slice(&self.echo_us.to_be_bytes());
        p.extend_from_slice(&self.held_us.to_be_bytes());
        p
    }

    pub(crate) fn decode(p: &[u8]) -> Result<Clock, String> {
        let mut c = Cursor::new(p, "clock");
        let clock = Clock {
            sent_us: c.u64()?,
            echo_us: c.u64()?,
            held_us: c.u64()?,
        };
        c.end()?;
        Ok(clock)
    }
}

/// One measurement: the peer's clock minus ours, and the round trip, µs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub offset_us: i64,
    pub rtt_us: i64,
}

/// The sample of an echo received at `t4_us` (our clock), or `None` when the frame carries
/// no echo or its timestamps cannot be a real exchange (a negative round trip).
pub(crate) fn sample(frame: &Clock, t4_us: u64) -> Option<Sample> {
    if frame.echo_us == 0 {
        return None;
    }
    let (t1, t3, t4) = (
        i128::from(frame.echo_us),
        i128::from(frame.sent_us),
        i128::from(t4_us),
    );
    let t2 = t3 - i128::from(frame.held_us);
    let rtt = (t4 - t1) - (t3 - t2);
    if rtt < 0 {
        return None;
    }
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    Some(Sample {
        offset_us: i64::try_from(offset).ok()?,
        rtt_us: i64::try_from(rtt).ok()?,
    })
}

/// The last [`FILTER_SAMPLES`] samples; reports the one with the smallest round trip.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    samples: std::collections::VecDeque<Sample>,
}

impl Filter {
    pub(crate) fn push(&mut self, s: Sample) -> Sample {
        if self.samples.len() == FILTER_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        self.samples
            .iter()
            .copied()
            .min_by_key(|s| s.rtt_us)
            .unwrap_or(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_gives_the_offset_and_the_round_trip() {
        // Our clock at 1_000_000 sends; the peer (2 s ahead) receives 5 ms later by the true
        // time, holds it 100 ms, sends back; we receive 5 ms after that.
        let peer_ahead = 2_000_000u64;
        let t1 = 1_000_000u64;
        let t2 = t1 + 5_000 + peer_ahead;
        let t3 = t2 + 100_000;
        let t4 = t1 + 5_000 + 100_000 + 5_000;
        let f = Clock {
            sent_us: t3,
            echo_us: t1,
            held_us: t3 - t2,
        };
        assert_eq!(
            sample(&f, t4),
            Some(Sample {
                offset_us: 2_000_000,
                rtt_us: 10_000
            })
        );
        // The peer behind us.
        let t1 = 10_000_000u64;
        let f = Clock {
            sent_us: t1 + 5_000 - 3_000_000,
            echo_us: t1,
            held_us: 0,
        };
        assert_eq!(
            sample(&f, t1 + 10_000).map(|s| s.offset_us),
            Some(-3_000_000)
        );
        // No echo yet; an impossible one.
        assert_eq!(sample(&Clock { echo_us: 0, ..f }, t4), None);
        let bad = Clock {
            sent_us: 10,
            echo_us: 1_000,
            held_us: 5_000,
        };
        assert_eq!(sample(&bad, 1_001), None);
    }

    #[test]
    fn the_filter_keeps_the_sample_with_the_shortest_round_trip() {
        let mut f = Filter::default();
        let s = |offset_us, rtt_us| Sample { offset_us, rtt_us };
        assert_eq!(f.push(s(900, 50_000)), s(900, 50_000));
        assert_eq!(f.push(s(100, 1_000)), s(100, 1_000));
        assert_eq!(f.push(s(700, 30_000)), s(100, 1_000));
        for _ in 0..FILTER_SAMPLES - 1 {
            f.push(s(500, 20_000));
        }
        // The short one has left the window.
        assert_eq!(f.push(s(400, 25_000)), s(500, 20_000));
    }

    #[test]
    fn frames_round_trip_and_refuse_other_lengths() {
        let c = Clock {
            sent_us: 1,
            echo_us: u64::MAX,
            held_us: 7,
        };
        assert_eq!(Clock::decode(&c.encode()), Ok(c));
        assert_eq!(c.encode().len(), 24);
        assert!(Clock::decode(&[0; 23]).is_err());
        assert!(Clock::decode(&[0; 25]).is_err());
    }
}
