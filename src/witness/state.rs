//! The witness's durable state: `DATA_DIR/witness.json`, the one file it keeps.
//!
//! ```text
//! {"format":1,"voted_epoch":7,"record":{"log_epoch":7,"end":1234}}
//! ```
//! `voted_epoch` is the highest epoch the witness voted for or adopted; `record` the highest
//! committed `LogPos` an active reported to it. Both only grow (the `ha` witness guarantees it).
//!
//! Contract (`ha::WitnessAction::Persist`): [`store`] returns only once the new content is
//! durable: written to `witness.json.tmp`, fsynced, renamed over `witness.json`, and the
//! directory fsynced (so the rename itself survives a power loss). The driver calls
//! `handle_persisted` after that, and only then may the answer that depends on it leave.
//! A crash at any point leaves either the old or the new file, never a torn one.
//! [`load`] refuses a file it cannot parse: a witness that forgot its vote could vote twice.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ha::{LogPos, WitnessState};
use serde::{Deserialize, Serialize};
use twinrx_types::{Epoch, Offset};

pub const FILE: &str = "witness.json";
const TMP: &str = "witness.json.tmp";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: u32,
    voted_epoch: u64,
    record: OnDiskPos,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDiskPos {
    log_epoch: u64,
    end: u64,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The persisted state, or the initial one (epoch 0, nothing recorded) if there is no file.
pub fn load(dir: &Path) -> anyhow::Result<Option<WitnessState>> {
    let file = path(dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is corrupt ({e}); refusing to start: a witness that forgot its vote could vote \
             twice in one epoch. Restore the file from a backup, or (only if both nodes are \
             stopped or you accept that risk) move it away to start from epoch 0",
            file.display()
        )
    })?;
    if d.format != FORMAT {
        anyhow::bail!(
            "{}: format {} is not supported by this build (it reads format {FORMAT})",
            file.display(),
            d.format
        );
    }
    Ok(Some(WitnessState {
        voted: Epoch(d.voted_epoch),
        record: LogPos {
            log_epoch: Epoch(d.record.log_epoch),
            end: Offset(d.record.end),
        },
    }))
}

/// Makes `st` durable (see the module contract). Blocking: run it off the async tasks.
pub fn store(dir: &Path, st: WitnessState) -> anyhow::Result<()> {
    let d = OnDisk {
        format: FORMAT,
        voted_epoch: st.voted.0,
        record: OnDiskPos {
            log_epoch: st.record.log_epoch.0,
            end: st.record.end.0,
        },
    };
    let mut text = serde_json::to_vec(&d).context("encoding the witness state")?;
    text.push(b'\n');
    let tmp = dir.join(TMP);
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&text)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    drop(f);
    let file = path(dir);
    std::fs::rename(&tmp, &file)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("twinrx-witness-state-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    #[test]
    fn a_stored_state_loads_back_and_a_missing_file_is_a_fresh_start() {
        let d = scratch("roundtrip");
        assert_eq!(load(&d).expect("no file"), None);
        let st = WitnessState {
            voted: Epoch(7),
            record: LogPos {
                log_epoch: Epoch(6),
                end: Offset(1234),
            },
        };
        store(&d, st).expect("store");
        assert_eq!(load(&d).expect("load"), Some(st));
        assert!(!d.join(TMP).exists());
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_corrupt_or_unknown_format_file_refuses_start_up_naming_the_file() {
        let d = scratch("corrupt");
        std::fs::write(path(&d), b"{\"format\":1,\"voted_ep").expect("write");
        let e = format!("{:#}", load(&d).expect_err("corrupt"));
        assert!(e.contains("witness.json is corrupt"), "{e}");
        std::fs::write(
            path(&d),
            b"{\"format\":9,\"voted_epoch\":1,\"record\":{\"log_epoch\":0,\"end\":0}}",
        )
        .expect("write");
        let e = format!("{:#}", load(&d).expect_err("format"));
        assert!(e.contains("format 9"), "{e}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
