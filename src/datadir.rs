//! Exclusive ownership of a data directory: a second process on the same directory (a node
//! started twice, two witnesses sharing one vote record) would corrupt journals or vote twice,
//! so each daemon holds an advisory `flock` on a lock file there for as long as it runs.

use anyhow::Context as _;
use std::path::Path;

/// The lock; released when dropped (or when the process dies, even by SIGKILL).
pub type DirLock = nix::fcntl::Flock<std::fs::File>;

/// Takes the lock `dir/file`, or fails at once naming `what` holds it.
pub fn lock(dir: &Path, file: &str, what: &str) -> anyhow::Result<DirLock> {
    let path = dir.join(file);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "{} is locked ({e}): another {what} runs on data_dir {}",
            path.display(),
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_freed_on_drop() {
        let dir = std::env::temp_dir().join(format!("twinrx-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = super::lock(&dir, "node.lock", "node").expect("first lock");
        let err = super::lock(&dir, "node.lock", "node").expect_err("second lock");
        assert!(err.to_string().contains("another node runs"), "{err}");
        drop(first);
        super::lock(&dir, "node.lock", "node").expect("free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
