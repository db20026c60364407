//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`), replayed on stable by the test
//! suite: every file, every truncation of it and bit flips across it go through the target's
//! body (`twinrx::fuzz`, the same function `cargo +nightly fuzz run <target>` drives), which
//! must not panic. Inputs a fuzzing campaign found are kept in the corpus, so each stays a
//! regression test here. The coverage-guided campaigns are in fuzz/README.md.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// `input`, its truncations (every length up to 256, then every 16th) and 64 single-bit
/// flips spread over it.
fn variants(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![input.to_vec()];
    for n in (0..input.len()).filter(|n| *n < 256 || n % 16 == 0) {
        out.push(input[..n].to_vec());
    }
    let bits = input.len() * 8;
    for i in 0..64.min(bits) {
        let bit = i * bits / 64.min(bits);
        let mut v = input.to_vec();
        v[bit / 8] ^= 1 << (bit % 8);
        out.push(v);
    }
    out
}

fn replay(target: &str, body: fn(&[u8])) {
    let mut runs = 0;
    for (path, bytes) in corpus(target) {
        for v in variants(&bytes) {
            let r = std::panic::catch_unwind(|| body(&v));
            assert!(
                r.is_ok(),
                "target {target} panicked on a variant of {} ({} bytes: {:02x?})",
                path.display(),
                v.len(),
                &v[..v.len().min(64)]
            );
            runs += 1;
        }
    }
    eprintln!("[fuzz_corpus] {target}: {runs} inputs");
}

#[test]
fn syslog_corpus() {
    replay("syslog", twinrx::fuzz::syslog);
}

#[test]
fn snmp_corpus() {
    replay("snmp", twinrx::fuzz::snmp);
}

#[test]
fn link_corpus() {
    replay("link", twinrx::fuzz::link);
}

#[test]
fn config_corpus() {
    replay("config", twinrx::fuzz::config);
}

/// The link's seeds come from its own encoders: `cargo test --test fuzz_corpus -- --ignored
/// write_link_seeds` rewrites them after a protocol change.
#[test]
#[ignore]
fn write_link_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/link");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, bytes) in replicator::fuzz::seeds() {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}
