//! The node's disk budget: default retention limits derived from the filesystem that holds
//! `data_dir`, so that a node left alone with no retention key set cannot fill its disk.
//!
//! Three areas of the data dir grow with traffic: `journal/` (this node's journal), `peer/`
//! (the copy of the peer's journal, pair only) and `stream/` (the merged stream). With a
//! `retention_bytes_max` key unset, the area's limit is its share of the filesystem's size,
//! measured once at start ([`limits`], a pure function of that size and the keys); together
//! the defaults take [`SHARE_TOTAL_PCT`] of the filesystem, the rest is margin for what
//! retention cannot delete at once (the segment being written, growth between passes, a
//! reader's hold, `history/`, the OS). The split (docs/config.md "Disk budget") gives each
//! area about the same hours of history at the measured bytes per message (journal and its
//! copy ~254 B, stream ~550 B for a 200-byte message).
//!
//! Explicit keys win. `journal.retention_bytes_max` also bounds the peer copy (the copy keeps
//! what a journal keeps, as before the budget). A default share below two segments is an
//! error naming the key (retention deletes whole segments and never the one being written,
//! so no smaller limit holds); explicit limits above the budget are a warning only.

use serde::Serialize;

/// `segment_bytes_max` of the journal and the stream when unset, on a filesystem large enough.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// Smallest `segment_bytes_max` of the journal and the stream.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;

/// With `segment_bytes_max` unset, an area's default limit holds at least this many segments:
/// retention deletes whole segments, so the area keeps between 7/8 of its limit and all of it.
pub const SEGMENTS_PER_LIMIT_MIN: u64 = 8;

/// Percent of the filesystem's size that the default limits take together.
pub const SHARE_TOTAL_PCT: u64 = 80;

/// Default shares (percent of the filesystem) of a node of a pair: journal, peer copy, stream.
pub const PAIR_SHARES_PCT: Shares = Shares {
    journal: 20,
    peer: 20,
    stream: 40,
};

/// Default shares of a single node (no `[pair]`): the peer copy's share goes to the journal
/// and the stream, in the same proportion of bytes per message.
pub const SINGLE_SHARES_PCT: Shares = Shares {
    journal: 25,
    peer: 0,
    stream: 55,
};

/// Percent of the filesystem per area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    pub journal: u64,
    pub peer: u64,
    pub stream: u64,
}

/// The retention keys as configured (`None`: unset) and what bounds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// `[journal] retention_bytes_max` (also the peer copy's).
    pub journal_bytes_max: Option<u64>,
    /// `[journal] segment_bytes_max` (also the peer copy's).
    pub journal_segment_bytes_max: Option<u64>,
    /// `[stream] retention_bytes_max`.
    pub stream_bytes_max: Option<u64>,
    /// `[stream] segment_bytes_max`.
    pub stream_segment_bytes_max: Option<u64>,
    /// `[stream] hold_bytes_max`.
    pub hold_bytes_max: Option<u64>,
    /// A `[pair]` section: the node holds a copy of the peer's journal.
    pub pair: bool,
}

/// Where an area's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A `retention_bytes_max` key.
    Configured,
    /// The area's share of the filesystem.
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Configured => "configured",
            Source::Default => "default",
        }
    }
}

/// One area's byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes_max: u64,
    pub source: Source,
}

/// The limits the node runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Size of the filesystem holding `data_dir` at start.
    pub fs_bytes: u64,
    pub journal: Limit,
    /// `None` on a single node.
    pub peer: Option<Limit>,
    pub stream: Limit,
    /// `[stream] hold_bytes_max`, or by default the stream's limit.
    pub hold_bytes_max: u64,
    /// The journal's (and peer copy's) segment size: the key, or unset
    /// [`SEGMENT_BYTES_DEFAULT`] lowered to an eighth of a default limit.
    pub journal_segment_bytes_max: u64,
    /// The stream's segment size, the same way.
    pub stream_segment_bytes_max: u64,
    /// Explicit limits that take more than the budget (logged at start).
    pub warnings: Vec<String>,
}

impl Limits {
    /// Every area's limit together.
    pub fn total_bytes_max(&self) -> u64 {
        self.journal
            .bytes_max
            .saturating_add(self.peer.map_or(0, |p| p.bytes_max))
            .saturating_add(self.stream.bytes_max)
    }
}

fn pct(fs_bytes: u64, pct: u64) -> u64 {
    u64::try_from(u128::from(fs_bytes) * u128::from(pct) / 100).unwrap_or(u64::MAX)
}

/// The limits for a filesystem of `fs_bytes` and the configured `keys`; an error per default
/// share that cannot hold two segments, naming the keys to set.
pub fn limits(fs_bytes: u64, keys: &Keys) -> Result<Limits, Vec<String>> {
    let shares = if keys.pair {
        PAIR_SHARES_PCT
    } else {
        SINGLE_SHARES_PCT
    };
    let mut problems = Vec::new();
    // One area's limit and segment size; `section` names the keys that set them.
    let mut area = |section: &str, set: Option<u64>, share: u64, segment: Option<u64>| {
        let Some(b) = set else {
            let b = pct(fs_bytes, share);
            let seg = segment.unwrap_or_else(|| {
                (b / SEGMENTS_PER_LIMIT_MIN).clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_DEFAULT)
            });
            let two = seg.saturating_mul(2);
            if b < two {
                let lower = if segment.is_some() {
                    format!("lower {section}.segment_bytes_max, ")
                } else {
                    String::new()
                };
                problems.push(format!(
                    "{section}.retention_bytes_max is unset and its default, {share} % of the \
                     {fs_bytes}-byte filesystem holding node.data_dir ({b} bytes), is below two \
                     segments (2 × {section}.segment_bytes_max = {two}): set \
                     {section}.retention_bytes_max, {lower}or give node.data_dir a larger \
                     filesystem"
                ));
            }
            let limit = Limit {
                bytes_max: b,
                source: Source::Default,
            };
            return (limit, seg);
        };
        let limit = Limit {
            bytes_max: b,
            source: Source::Configured,
        };
        (limit, segment.unwrap_or(SEGMENT_BYTES_DEFAULT))
    };
    let (journal, journal_segment_bytes_max) = area(
        "journal",
        keys.journal_bytes_max,
        shares.journal,
        keys.journal_segment_bytes_max,
    );
    // The copy is a journal with the journal's segment size and keys; in a pair its share
    // equals the journal's, so the journal's checks cover it.
    let peer = keys.pair.then(|| Limit {
        bytes_max: match journal.source {
            Source::Configured => journal.bytes_max,
            Source::Default => pct(fs_bytes, shares.peer),
        },
        source: journal.source,
    });
    let (stream, stream_segment_bytes_max) = area(
        "stream",
        keys.stream_bytes_max,
        shares.stream,
        keys.stream_segment_bytes_max,
    );
    let hold_bytes_max = match keys.hold_bytes_max {
        Some(h) => {
            if stream.source == Source::Default && h > stream.bytes_max {
                problems.push(format!(
                    "stream.hold_bytes_max = {h}: must not be above the default \
                     stream.retention_bytes_max ({} bytes, {} % of the filesystem holding \
                     node.data_dir), or a consumer that is away could keep the stream above its \
                     limit: lower it or set stream.retention_bytes_max",
                    stream.bytes_max, shares.stream
                ));
            }
            h
        }
        None => stream.bytes_max,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut limits = Limits {
        fs_bytes,
        journal,
        peer,
        stream,
        hold_bytes_max,
        journal_segment_bytes_max,
        stream_segment_bytes_max,
        warnings: Vec::new(),
    };
    let budget = pct(fs_bytes, SHARE_TOTAL_PCT);
    let total = limits.total_bytes_max();
    if total > budget {
        let mut parts = vec![format!("journal {}", journal.bytes_max)];
        if let Some(p) = peer {
            parts.push(format!("peer copy {}", p.bytes_max));
        }
        parts.push(format!("stream {}", stream.bytes_max));
        limits.warnings.push(format!(
            "the retention limits ({}: {total} bytes together) exceed {SHARE_TOTAL_PCT} % of \
             the {fs_bytes}-byte filesystem holding node.data_dir ({budget} bytes): the disk can \
             fill before retention deletes; lower journal.retention_bytes_max or \
             stream.retention_bytes_max",
            parts.join(", ")
        ));
    }
    Ok(limits)
}

/// Free bytes on the file system holding `path` (None when it cannot be read).
pub fn disk_free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Size of the file system holding `path`.
pub fn fs_size_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok((st.blocks() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Hours of history `bytes_max` holds at the area's current rate: its bytes per entry
/// (`bytes` over `entries` now held, both as retention counts them) times `entries_per_s`. `None` ("unknown") when idle
/// or empty.
pub fn hours_of_history(
    bytes_max: u64,
    bytes: u64,
    entries: u64,
    entries_per_s: f64,
) -> Option<f64> {
    // NaN counts as idle too.
    if entries == 0 || bytes == 0 || entries_per_s.is_nan() || entries_per_s <= 0.0 {
        return None;
    }
    let bytes_per_s = bytes as f64 / entries as f64 * entries_per_s;
    Some(bytes_max as f64 / bytes_per_s / 3600.0)
}

/// Samples kept by [`RateWindow`]: one every [`RATE_SAMPLE_EVERY`], a minute's window.
const RATE_SAMPLES_MAX: usize = 13;

/// How often the node samples each area's end (`node.rs`).
pub const RATE_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Each area's entries per second over the last minute, from samples of its end seq (the
/// entries appended, whatever retention deleted meanwhile), in the order journal, peer copy,
/// stream. Bounded: a minute of samples.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, [u64; 3])>>,
}

impl RateWindow {
    /// Records the areas' end seqs (0 for an area the node does not have) at `at`.
    pub fn sample(&self, at: std::time::Instant, ends: [u64; 3]) {
        if let Ok(mut s) = self.samples.lock() {
            if s.len() == RATE_SAMPLES_MAX {
                s.pop_front();
            }
            s.push_back((at, ends));
        }
    }

    /// Entries per second of each area over the window; `None` before two samples.
    pub fn entries_per_s(&self) -> Option<[f64; 3]> {
        let s = self.samples.lock().ok()?;
        let ((t0, a), (t1, b)) = (s.front()?, s.back()?);
        let dt = t1.duration_since(*t0).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        // A copy reset by a resync may go back: no growth rather than a negative rate.
        Some(std::array::from_fn(|i| {
            b[i].saturating_sub(a[i]) as f64 / dt
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn keys(pair: bool) -> Keys {
        Keys {
            journal_bytes_max: None,
            journal_segment_bytes_max: None,
            stream_bytes_max: None,
            stream_segment_bytes_max: None,
            hold_bytes_max: None,
            pair,
        }
    }

    fn default(bytes_max: u64) -> Limit {
        Limit {
            bytes_max,
            source: Source::Default,
        }
    }

    #[test]
    fn a_pair_node_with_no_key_takes_its_shares_of_the_filesystem() {
        let l = limits(100 * GIB, &keys(true)).expect("valid");
        assert_eq!(l.journal, default(20 * GIB));
        assert_eq!(l.peer, Some(default(20 * GIB)));
        assert_eq!(l.stream, default(40 * GIB));
        assert_eq!(l.hold_bytes_max, 40 * GIB, "hold: the stream's limit");
        assert_eq!(l.total_bytes_max(), 80 * GIB);
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn a_single_node_gives_the_peer_share_to_journal_and_stream() {
        let l = limits(100 * GIB, &keys(false)).expect("valid");
        assert_eq!(l.journal, default(25 * GIB));
        assert_eq!(l.peer, None);
        assert_eq!(l.stream, default(55 * GIB));
        assert_eq!(l.total_bytes_max(), 80 * GIB);
    }

    #[test]
    fn explicit_keys_win_and_unset_ones_keep_their_share() {
        let k = Keys {
            journal_bytes_max: Some(GIB),
            ..keys(true)
        };
        let l = limits(100 * GIB, &k).expect("valid");
        let configured = Limit {
            bytes_max: GIB,
            source: Source::Configured,
        };
        assert_eq!(l.journal, configured);
        assert_eq!(
            l.peer,
            Some(configured),
            "the copy keeps what the journal keeps"
        );
        assert_eq!(l.stream, default(40 * GIB));
        let k = Keys {
            stream_bytes_max: Some(2 * GIB),
            hold_bytes_max: Some(GIB),
            ..keys(true)
        };
        let l = limits(100 * GIB, &k).expect("valid");
        assert_eq!(l.journal, default(20 * GIB));
        assert_eq!(l.stream.source, Source::Configured);
        assert_eq!(l.hold_bytes_max, GIB);
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn explicit_limits_above_the_budget_warn_naming_the_keys() {
        let k = Keys {
            stream_bytes_max: Some(70 * GIB),
            ..keys(true)
        };
        let l = limits(100 * GIB, &k).expect("valid: a warning only");
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(
            l.warnings[0].contains("stream.retention_bytes_max"),
            "{:?}",
            l.warnings
        );
        assert!(l.warnings[0].contains("exceed 80 %"), "{:?}", l.warnings);
    }

    #[test]
    fn an_explicit_hold_above_the_default_stream_limit_is_refused_naming_the_key() {
        let k = Keys {
            hold_bytes_max: Some(50 * GIB),
            ..keys(true)
        };
        let problems = limits(100 * GIB, &k).expect_err("invalid");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("stream.hold_bytes_max = 53687091200: must not be above the default stream.retention_bytes_max"),
            "{problems:?}"
        );
        // Below it, or with the stream's limit set, it stands.
        let k = Keys {
            hold_bytes_max: Some(GIB),
            ..keys(true)
        };
        assert_eq!(limits(100 * GIB, &k).expect("valid").hold_bytes_max, GIB);
    }

    #[test]
    fn unset_segments_shrink_to_an_eighth_of_a_small_default_limit() {
        let l = limits(100 * GIB, &keys(true)).expect("valid");
        assert_eq!(l.journal_segment_bytes_max, SEGMENT_BYTES_DEFAULT);
        assert_eq!(l.stream_segment_bytes_max, SEGMENT_BYTES_DEFAULT);
        // 20 % of 256 MiB is 51.2 MiB: not two 64-MiB segments; eight of 6.4 MiB.
        let l = limits(256 * MIB, &keys(true)).expect("valid");
        assert_eq!(l.journal.bytes_max, 53_687_091);
        assert_eq!(l.journal_segment_bytes_max, 53_687_091 / 8);
        assert_eq!(l.stream_segment_bytes_max, 107_374_182 / 8);
        // Never below the smallest segment.
        let l = limits(2 * MIB, &keys(false)).expect("valid");
        assert_eq!(l.journal_segment_bytes_max, SEGMENT_BYTES_MIN);
        // A configured limit keeps the usual default segment (its own check applies).
        let k = Keys {
            stream_bytes_max: Some(GIB),
            ..keys(true)
        };
        let l = limits(256 * MIB, &k).expect("valid");
        assert_eq!(l.stream_segment_bytes_max, SEGMENT_BYTES_DEFAULT);
    }

    #[test]
    fn a_tiny_filesystem_is_refused_naming_each_key_to_set() {
        // Explicit 64-MiB segments: 20 % of 256 MiB is not two of them, for any area.
        let k = Keys {
            journal_segment_bytes_max: Some(64 * MIB),
            stream_segment_bytes_max: Some(64 * MIB),
            ..keys(true)
        };
        let problems = limits(256 * MIB, &k).expect_err("too small");
        let text = problems.join("\n");
        assert_eq!(problems.len(), 2, "{text}");
        assert!(
            text.contains(
                "journal.retention_bytes_max is unset and its default, 20 % of the \
                 268435456-byte filesystem holding node.data_dir (53687091 bytes), is below two \
                 segments (2 × journal.segment_bytes_max = 134217728): set \
                 journal.retention_bytes_max, lower journal.segment_bytes_max, or give"
            ),
            "{text}"
        );
        assert!(
            text.contains("stream.retention_bytes_max is unset"),
            "{text}"
        );
        // Only the unset key's share has to fit: an explicit journal limit and a stream
        // share that fits.
        let k = Keys {
            journal_bytes_max: Some(128 * MIB),
            journal_segment_bytes_max: Some(64 * MIB),
            ..keys(true)
        };
        assert!(limits(256 * MIB, &k).is_ok());
        // Even the smallest segments do not fit twice into 20 % of 512 KiB.
        let problems = limits(512 << 10, &keys(true)).expect_err("too small");
        assert_eq!(problems.len(), 1, "the stream's 40 % fits: {problems:?}");
        assert!(problems[0].starts_with("journal.retention_bytes_max is unset"));
        assert!(!problems[0].contains("lower journal.segment_bytes_max"));
    }

    #[test]
    fn hours_of_history_is_unknown_when_idle_or_empty() {
        assert_eq!(hours_of_history(GIB, 0, 0, 100.0), None);
        assert_eq!(hours_of_history(GIB, MIB, 1000, 0.0), None);
        // 1,000 B per entry at 100 entries/s: 100 kB/s; 360 MB is an hour.
        let h = hours_of_history(360_000_000, 1_000_000, 1000, 100.0).expect("known");
        assert!((h - 1.0).abs() < 1e-9, "{h}");
    }

    #[test]
    fn the_rate_window_spans_a_minute_of_samples() {
        let w = RateWindow::default();
        let t = std::time::Instant::now();
        assert_eq!(w.entries_per_s(), None);
        w.sample(t, [0, 0, 0]);
        assert_eq!(w.entries_per_s(), None, "one sample: no rate yet");
        for i in 1..=20u64 {
            w.sample(t + RATE_SAMPLE_EVERY * i as u32, [i * 500, 0, i * 100]);
        }
        // The oldest samples fell out: 12 intervals of 5 s between the kept ones.
        let r = w.entries_per_s().expect("rate");
        assert_eq!(r, [100.0, 0.0, 20.0]);
        // A copy that went back (a resync reset it) counts as idle.
        w.sample(t + RATE_SAMPLE_EVERY * 21, [10_500, 0, 0]);
        assert_eq!(w.entries_per_s().expect("rate")[2], 0.0);
    }
}
