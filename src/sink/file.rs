//! File sink: the stream as NDJSON in `path`, rotated by size into `path.1` .. `path.N`.
//!
//! Resume rule: the last complete line of the newest file tells the last delivered offset.
//! A batch is one `write` of whole lines followed by `fdatasync` (unless `fsync = false`);
//! a crash can leave a torn last line, which [`FileSink::open`] cuts off before resuming, so
//! an entry is either in the file whole, once, or delivered again whole.
//!
//! Rotation (after a batch, when the file reached `rotate_bytes_max`): `path.N` is deleted,
//! `path.i` renamed to `path.i+1`, `path` to `path.1`, the directory fsynced, and a new
//! `path` created. A crash in between leaves `path` missing or empty; `open` then reads the
//! last line of the newest rotated file.

use super::config::FileConfig;
use super::{complete_len, last_line_before, parse_head, Entry, Resume, Sink, SinkError};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;

pub struct FileSink {
    name: String,
    cfg: FileConfig,
    file: Option<File>,
    size: u64,
}

impl FileSink {
    pub fn new(name: &str, cfg: FileConfig) -> FileSink {
        FileSink {
            name: name.to_string(),
            cfg,
            file: None,
            size: 0,
        }
    }

    fn rotated(&self, i: usize) -> PathBuf {
        let mut s = self.cfg.path.clone().into_os_string();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    fn io(&self, what: &str, p: &std::path::Path, e: std::io::Error) -> SinkError {
        SinkError::Retry(format!("cannot {what} {}: {e}", p.display()))
    }

    fn sync_dir(&self) -> Result<(), SinkError> {
        if let Some(dir) = self.cfg.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io("fsync directory", dir, e))?;
        }
        Ok(())
    }

    /// The last entry of an existing file, cutting a torn tail first when `cut` is set.
    fn last_of(
        &self,
        p: &std::path::Path,
        cut: bool,
    ) -> Result<Option<super::Delivered>, SinkError> {
        let f = match OpenOptions::new().read(true).write(cut).open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("open", p, e)),
        };
        let len = f.metadata().map_err(|e| self.io("stat", p, e))?.len();
        let end = complete_len(&f, len).map_err(|e| self.io("read", p, e))?;
        if end < len {
            if !cut {
                return Err(SinkError::Retry(format!(
                    "{} ends with a torn line: a rotated file is always complete; inspect it",
                    p.display()
                )));
            }
            tracing::warn!(sink = %self.name, file = %p.display(), bytes = len - end, "torn last line truncated");
            f.set_len(end).map_err(|e| self.io("truncate", p, e))?;
            f.sync_all().map_err(|e| self.io("fsync", p, e))?;
        }
        let Some(line) = last_line_before(&f, end).map_err(|e| self.io("read", p, e))? else {
            return Ok(None);
        };
        match parse_head(&line) {
            Some(d) => Ok(Some(d)),
            None => Err(SinkError::Retry(format!(
                "the last line of {} is not a stream entry (no offset/epoch): this file must be written by this sink only",
                p.display()
            ))),
        }
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        self.file = None;
        let oldest = self.rotated(self.cfg.keep_files);
        match std::fs::remove_file(&oldest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("remove", &oldest, e)),
        }
        for i in (1..self.cfg.keep_files).rev() {
            let (from, to) = (self.rotated(i), self.rotated(i + 1));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("rename", &from, e)),
            }
        }
        let first = self.rotated(1);
        std::fs::rename(&self.cfg.path, &first)
            .map_err(|e| self.io("rename", &self.cfg.path.clone(), e))?;
        // Files beyond keep_files left by an earlier, larger setting.
        let mut i = self.cfg.keep_files + 1;
        while std::fs::remove_file(self.rotated(i)).is_ok() {
            i += 1;
        }
        self.sync_dir()?;
        tracing::info!(sink = %self.name, file = %first.display(), "rotated");
        self.open_current()
    }

    fn open_current(&mut self) -> Result<(), SinkError> {
        let p = self.cfg.path.clone();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| self.io("open", &p, e))?;
        self.size = f.metadata().map_err(|e| self.io("stat", &p, e))?.len();
        self.file = Some(f);
        Ok(())
    }
}

impl Sink for FileSink {
    fn open(&mut self) -> Result<Resume, SinkError> {
        self.file = None;
        if let Some(dir) = self.cfg.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io("create directory", dir, e))?;
        }
        let p = self.cfg.path.clone();
        let mut last = self.last_of(&p, true)?;
        // An empty or missing current file: the newest rotated one tells.
        let mut i = 1;
        while last.is_none() && i <= self.cfg.keep_files {
            last = self.last_of(&self.rotated(i), false)?;
            i += 1;
        }
        self.open_current()?;
        Ok(match last {
            Some(d) => Resume::After(d),
            None => Resume::Empty,
        })
    }

    fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let p = self.cfg.path.clone();
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.line.len() + 1).sum());
        for e in batch {
            buf.extend_from_slice(&e.line);
            buf.push(b'\n');
        }
        let Some(f) = self.file.as_mut() else {
            return Err(SinkError::Retry(format!("{} is not open", p.display())));
        };
        let written = f.write_all(&buf).and_then(|()| {
            if self.cfg.fsync {
                f.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut what part of the batch reached the file; `open` would cut a torn line
            // anyway, but whole lines written before the error must go too.
            if let Err(e2) = f.set_len(self.size) {
                tracing::error!(sink = %self.name, file = %p.display(), error = %e2, "cannot cut a failed write; the next open re-reads the file");
            }
            self.file = None;
            return Err(self.io("write", &p, e));
        }
        self.size += buf.len() as u64;
        if self.size >= self.cfg.rotate_bytes_max {
            self.rotate()?;
        }
        Ok(())
    }
}
