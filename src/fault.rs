//! Fault injection for failure tests (SPEC F8: "the pipeline stalls while the heartbeat lives").
//!
//! Compiled in only with the cargo feature `fault-injection` (the test command enables it;
//! release builds for production leave it out): then `POST /fault?freeze=journal|merger|none`
//! on the admin server freezes the journal writer (appends stop, as on a hung disk) or the
//! merger (publishing stops, as on a hung pipeline) until `freeze=none`. The HA heartbeat keeps
//! running, so the stall is visible only through the health it carries (journal write age,
//! merger stall): the active must hand over. Without the feature every check here is a
//! constant `false` and the endpoint answers 404.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Duration;

/// What is frozen: 0 nothing, 1 the journal writer, 2 the merger.
static FROZEN: AtomicU8 = AtomicU8::new(0);

/// A part of the pipeline that can be frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Journal = 1,
    Merger = 2,
}

/// Whether fault injection is compiled in.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Sets what is frozen (`None`: nothing). Ignored without the feature.
pub fn set(part: Option<Part>) {
    if ENABLED {
        FROZEN.store(part.map_or(0, |p| p as u8), Relaxed);
    }
}

pub fn parse(s: &str) -> Option<Option<Part>> {
    match s {
        "journal" => Some(Some(Part::Journal)),
        "merger" => Some(Some(Part::Merger)),
        "none" => Some(None),
        _ => None,
    }
}

/// Blocks the calling thread while `part` is frozen (a no-op without the feature).
pub fn hold(part: Part) {
    if !ENABLED {
        return;
    }
    let mut logged = false;
    while FROZEN.load(Relaxed) == part as u8 {
        if !logged {
            tracing::warn!(?part, "fault injection: frozen");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if logged {
        tracing::warn!(?part, "fault injection: thawed");
    }
}

/// Test aid (builds with the feature only): `TWINRX_FAULT_CLOCK_SKEW_MS` shifts the clock this
/// node reports in the link's clock samples, as a host whose clock is off would. 0 otherwise.
pub fn clock_skew_ms() -> i64 {
    if !ENABLED {
        return 0;
    }
    std::env::var("TWINRX_FAULT_CLOCK_SKEW_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
