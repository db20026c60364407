//! The cluster's pre-shared key file, read the same way by a node's `[pair]` and the witness.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Reads the key file named by config key `key_name`: hex text, whitespace ignored, at least
/// 16 bytes. A key file that other users may read or write is refused (whoever holds the key
/// can feed a node's copy of its peer's journal and vote); one the group may read is accepted
/// with a warning.
pub fn read_psk(
    key_name: &str,
    file: &Path,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<replicator::Psk> {
    let key = format!("{key_name} = {:?}", file.display().to_string());
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("{key}: cannot read: {e}"));
            return None;
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        problems.push(format!(
            "{key}: mode {mode:04o} lets every user read or change the cluster key; run `chmod 600` on it"
        ));
        return None;
    }
    if mode & 0o070 != 0 {
        warnings.push(format!(
            "{key}: mode {mode:04o} lets the file's group read the cluster key; `chmod 600` is safer"
        ));
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{key}: cannot read: {e}"));
            return None;
        }
    };
    match replicator::Psk::from_hex(&text) {
        Ok(psk) => Some(psk),
        Err(e) => {
            problems.push(format!(
                "{key}: {e} (hex digits, at least {} bytes; the same file on both nodes and the witness)",
                replicator::Psk::BYTES_MIN
            ));
            None
        }
    }
}
