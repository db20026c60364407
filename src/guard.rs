//! Panic isolation for the handling of one message (SPEC "Bad input", issue #16): a parser or
//! renderer that panics on a crafted message must not stop the thread that writes the merged
//! stream, or the active would stop publishing, and then the next active on the same entry (a
//! poison pill for the pair). [`catch`] runs such a step under `catch_unwind`; the caller keeps
//! the message raw with the error, counts it, and goes on. The panic is logged once per kind
//! (not once per message: a flood of the same crafted message would flood the log), and the
//! process's panic hook stays quiet for caught panics.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, Once};

thread_local! {
    /// Set while [`catch`] runs its step on this thread: the hook only records the panic.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the last caught panic happened (`file:line`), recorded by the hook.
    static WHERE: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();
static LOGGED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// Chains a hook that stays quiet for the panics [`catch`] catches; every other panic goes
/// to the hook installed before (the default one prints it).
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                WHERE.with(|w| *w.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `step` (the handling of one message by `kind`, e.g. "syslog parser"); a panic in it
/// comes back as `Err` with a description naming the kind, what it said and where.
pub fn catch<T>(kind: &'static str, step: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let was = CATCHING.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(step));
    CATCHING.with(|c| c.set(was));
    result.map_err(|payload| {
        let said = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".to_string());
        let at = WHERE
            .with(|w| w.borrow_mut().take())
            .unwrap_or_else(|| "an unknown place".to_string());
        let error = format!("internal error in the {kind}: {said} (at {at})");
        let first = LOGGED.lock().map(|mut l| l.insert(kind)).unwrap_or(false);
        if first {
            tracing::error!(
                kind,
                %error,
                "a message made the {kind} panic: it is kept raw with this error and counted \
                 (twinrx_stream_internal_errors_total); further panics of this kind are not \
                 logged. Please report it with the entry's raw text"
            );
        }
        error
    })
}

#[cfg(test)]
mod tests {
    use super::catch;

    #[test]
    fn a_panic_comes_back_as_an_error_naming_kind_message_and_place() {
        assert_eq!(catch("test step", || 7), Ok(7));
        let e = catch("test step", || -> u32 { panic!("bad byte {}", 42) }).unwrap_err();
        assert!(
            e.starts_with("internal error in the test step: bad byte 42 (at "),
            "{e}"
        );
        assert!(e.contains("src/guard.rs:"), "{e}");
        let e = catch("test step", || -> u32 { std::panic::panic_any(5u8) }).unwrap_err();
        assert!(e.contains("a non-text panic"), "{e}");
        // Nested: the inner catch does not end the outer one's quiet.
        let outer = catch("test step", || {
            let inner = catch("test step", || -> u8 { panic!("inner") });
            assert!(inner.is_err());
            panic!("outer")
        });
        assert!(outer.unwrap_err().contains("outer"));
    }
}
