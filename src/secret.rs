//! Secret files: the admin token, private keys (cluster link, admin TLS, syslog TLS) and
//! SNMPv3 passphrase files. Every one is refused when its group or other users may read or
//! change it: the error names the config key, the file and the fix (`chmod 600`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Checks that only the owner may read or change `file` (named by config key `key`).
pub fn check_private(key: &str, file: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(file)
        .map_err(|e| format!("{key} = {:?}: cannot read: {e}", file.display().to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{key} = {:?}: mode {mode:04o} lets other users read or change a secret; run \
             `chmod 600 {}` (and keep it owned by the user twinrx runs as)",
            file.display().to_string(),
            file.display()
        ));
    }
    Ok(())
}

/// Reads a secret that is one line of text (a token, a passphrase): the first line, trailing
/// whitespace removed; refused when empty or readable by others.
pub fn read_line(key: &str, file: &Path) -> Result<String, String> {
    check_private(key, file)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{key} = {:?}: cannot read: {e}", file.display().to_string()))?;
    let line = text.lines().next().unwrap_or("").trim_end().to_string();
    if line.is_empty() {
        return Err(format!(
            "{key} = {:?}: the file is empty",
            file.display().to_string()
        ));
    }
    Ok(line)
}

/// Writes `text` to a new file only its owner may read (0600), synced. Fails if it exists.
pub fn write_new(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text)?;
    f.sync_all()
}

/// 32 random bytes from the OS, as 64 hex digits (admin tokens).
pub fn random_hex() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths (token checks).
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_readable_secrets_are_refused_naming_the_fix() {
        let dir = std::env::temp_dir().join(format!("twinrx-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("token");
        std::fs::write(&f, "s3cret\nignored\n").expect("write");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = read_line("admin.token_file", &f).expect_err("refused");
            assert!(
                e.contains("admin.token_file") && e.contains("chmod 600"),
                "{e}"
            );
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_line("k", &f).expect("ok"), "s3cret");
        std::fs::write(&f, "\n").expect("write");
        assert!(read_line("k", &f).expect_err("empty").contains("empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn equal_compares_whole_values() {
        assert!(equal(b"abc", b"abc"));
        assert!(!equal(b"abc", b"abd"));
        assert!(!equal(b"abc", b"abcd"));
        assert!(!equal(b"", b"a"));
    }
}
