//! Property: whatever a crash (a cut at any byte) or a bit flip does to a journal, reopening
//! and reading either yields exactly a prefix of what was written (for a cut: exactly the
//! records wholly before the cut) or an error naming the damaged segment and record offset.
//! It never returns wrong data.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use journal::{Error, FsyncPolicy, Journal, Options, Retention};
use proptest::prelude::*;
use proptest::sample::Index;
use twinrx_types::Seq;

const SEGMENT_HEADER: u64 = 32;

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the journal (its segments laid end to end) at this byte.
    Cut(Index),
    /// Flip one bit of this byte.
    Flip(Index, u8),
}

/// One record on disk: segment index, byte offset, frame length.
#[derive(Debug, Clone, Copy)]
struct Placed {
    seg: usize,
    offset: u64,
    frame: u64,
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Where each record landed, by walking the frames (layout in FORMAT.md).
fn placement(files: &[PathBuf]) -> Vec<Placed> {
    let mut out = Vec::new();
    for (seg, f) in files.iter().enumerate() {
        let b = std::fs::read(f).expect("read");
        let mut off = SEGMENT_HEADER as usize;
        while off < b.len() {
            let len = u32::from_le_bytes([b[off + 4], b[off + 5], b[off + 6], b[off + 7]]) as u64;
            out.push(Placed {
                seg,
                offset: off as u64,
                frame: 24 + len,
            });
            off += 24 + len as usize;
        }
    }
    out
}

/// Opens and reads everything; `Ok(records)` or the error.
fn reopen_and_read(dir: &Path, o: Options) -> Result<(Vec<Vec<u8>>, Journal), Error> {
    let (j, rec) = Journal::open(dir, o)?;
    let h = j.handle();
    let mut out = Vec::new();
    let mut next = h.first_seq();
    loop {
        let got = h.read(next, 7, 300)?;
        let Some(&(last, _)) = got.last() else { break };
        for (s, p) in got {
            assert_eq!(s, Seq(out.len() as u64 + 1), "seqs contiguous from 1");
            out.push(p);
        }
        next = last.next();
    }
    assert_eq!(
        rec.last_seq,
        (!out.is_empty()).then_some(Seq(out.len() as u64))
    );
    Ok((out, j))
}

/// A temporary directory, on tmpfs when there is one: the property is about bytes, not
/// about the disk, and each case creates segments (two fsyncs each).
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fn batches() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    prop::collection::vec(
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..8),
        1..6,
    )
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<Index>().prop_map(Damage::Cut),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Damage::Flip(i, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn damaged_journal_recovers_a_prefix_or_names_the_damage(
        batches in batches(),
        segment_bytes_max in 100u64..500,
        damage in damage(),
    ) {
        let dir = scratch_dir();
        let o = Options { segment_bytes_max, fsync: FsyncPolicy::Never, retention: Retention::default(), compression: journal::Compression::None };
        let written: Vec<Vec<u8>> = batches.iter().flatten().cloned().collect();
        {
            let (mut j, _) = Journal::open(dir.path(), o).expect("open");
            for b in &batches {
                j.append_batch(b).expect("append");
            }
        }
        let files = segments(dir.path());
        let lens: Vec<u64> = files.iter().map(|f| std::fs::metadata(f).expect("stat").len()).collect();
        let starts: Vec<u64> = lens.iter().scan(0, |acc, l| { let s = *acc; *acc += l; Some(s) }).collect();
        let total: u64 = lens.iter().sum();
        let placed = placement(&files);
        prop_assert_eq!(placed.len(), written.len());

        match damage {
            Damage::Cut(i) => {
                let cut = i.index(total as usize + 1) as u64;
                // The segment holding the cut (the last one if the cut is at the very end).
                let k = starts.iter().rposition(|&s| s <= cut).unwrap_or(0);
                let k = if cut == total { files.len() - 1 } else { k };
                for f in &files[k + 1..] {
                    std::fs::remove_file(f).expect("remove");
                }
                OpenOptions::new().write(true).open(&files[k]).expect("open")
                    .set_len(cut - starts[k]).expect("set_len");
                let expected = placed
                    .iter()
                    .take_while(|p| starts[p.seg] + p.offset + p.frame <= cut)
                    .count();
                let (got, mut j) = reopen_and_read(dir.path(), o)
                    .map_err(|e| TestCaseError::fail(format!("cut at {cut}: {e}")))?;
                prop_assert_eq!(&got[..], &written[..expected]);
                // Appends continue right after the surviving prefix.
                let r = j.append_batch([b"after".as_slice()]).expect("append after recovery");
                prop_assert_eq!(r.first, Seq(expected as u64 + 1));
                drop(j);
                let v = journal::verify(dir.path()).expect("verify after recovery");
                prop_assert_eq!(v.records, expected as u64 + 1);
                prop_assert_eq!(v.torn_tail, None);
            }
            Damage::Flip(i, bit) => {
                let at = i.index(total as usize) as u64;
                let k = starts.iter().rposition(|&s| s <= at).expect("a segment");
                let off = at - starts[k];
                let mut bytes = std::fs::read(&files[k]).expect("read");
                bytes[off as usize] ^= 1 << bit;
                std::fs::write(&files[k], bytes).expect("write");
                let hit = placed.iter().position(|p| p.seg == k && p.offset <= off && off < p.offset + p.frame);
                let result = reopen_and_read(dir.path(), o).map(|(got, _)| got);
                match hit {
                    None => {
                        // The segment header.
                        prop_assert!(off < SEGMENT_HEADER);
                        match result {
                            Err(Error::BadSegment { segment, .. }) => prop_assert_eq!(&segment, &files[k]),
                            other => prop_assert!(false, "header flip at {}:{}: {:?}", k, off, other.map(|g| g.len())),
                        }
                    }
                    Some(r) if r + 1 == written.len() => {
                        // The very last record: a torn tail, truncated.
                        let got = result.map_err(|e| TestCaseError::fail(format!("tail flip: {e}")))?;
                        prop_assert_eq!(&got[..], &written[..r]);
                    }
                    Some(r) => {
                        match result {
                            Err(Error::Corrupt { segment, offset, seq, .. }) => {
                                prop_assert_eq!(&segment, &files[k]);
                                prop_assert_eq!(offset, placed[r].offset);
                                prop_assert_eq!(seq, Seq(r as u64 + 1));
                            }
                            other => prop_assert!(false, "flip in record {} of {}: {:?}", r + 1, written.len(), other.map(|g| g.len())),
                        }
                        match journal::verify(dir.path()) {
                            Err(Error::Corrupt { offset, .. }) => prop_assert_eq!(offset, placed[r].offset),
                            other => prop_assert!(false, "verify: {:?}", other),
                        }
                    }
                }
            }
        }
    }
}
