//! Stdout sink: the stream as NDJSON on the node's standard output (logs go to stderr).
//!
//! Resume rule: when stdout is a regular file (systemd `StandardOutput=append:FILE`, a shell
//! `>> FILE`), its last complete line tells the last delivered offset and a torn last line is
//! cut, exactly as for the file sink. A pipe or a terminal cannot be read back: the sink then
//! starts at `start_at` (`end`: entries committed from now on; `start`: the whole stream) and,
//! within one run, continues where it stopped; across restarts it cannot be exactly-once.

use super::config::{StartAt, StdoutConfig};
use super::{complete_len, last_line_before, parse_head, Entry, Resume, Sink, SinkError};
use journal::JournalHandle;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd as _;

pub struct StdoutSink {
    cfg: StdoutConfig,
    stream: JournalHandle,
    /// The next offset, once this run has delivered anything.
    next: Option<u64>,
}

impl StdoutSink {
    pub fn new(cfg: StdoutConfig, stream: JournalHandle) -> StdoutSink {
        StdoutSink {
            cfg,
            stream,
            next: None,
        }
    }
}

fn retry(what: &str, e: std::io::Error) -> SinkError {
    SinkError::Retry(format!("stdout: cannot {what}: {e}"))
}

impl Sink for StdoutSink {
    fn open(&mut self) -> Result<Resume, SinkError> {
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| retry("duplicate the descriptor", e))?;
        let f = File::from(fd);
        let meta = f.metadata().map_err(|e| retry("stat", e))?;
        if meta.file_type().is_file() {
            // Our descriptor is usually write-only (O_APPEND): open the same file again,
            // readable, through /proc.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/proc/self/fd/1")
                .map_err(|e| retry("open the stdout file for reading back (/proc/self/fd/1)", e))?;
            let len = meta.len();
            let end = complete_len(&f, len).map_err(|e| retry("read back", e))?;
            if end < len {
                tracing::warn!(bytes = len - end, "stdout file: torn last line truncated");
                f.set_len(end)
                    .map_err(|e| retry("truncate a torn line", e))?;
            }
            return match last_line_before(&f, end).map_err(|e| retry("read back", e))? {
                None => Ok(Resume::Empty),
                Some(line) => parse_head(&line).map(Resume::After).ok_or_else(|| {
                    SinkError::Retry(
                        "stdout is a file whose last line is not a stream entry: give the stdout sink a file of its own"
                            .into(),
                    )
                }),
            };
        }
        if let Some(n) = self.next {
            return Ok(Resume::At(n));
        }
        Ok(match self.cfg.start_at {
            StartAt::Start => Resume::Empty,
            StartAt::End => Resume::At(self.stream.durable_seq().map(|s| s.0).unwrap_or(0)),
        })
    }

    fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.line.len() + 1).sum());
        for e in batch {
            buf.extend_from_slice(&e.line);
            buf.push(b'\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)
            .and_then(|()| out.flush())
            .map_err(|e| retry("write", e))?;
        self.next = batch.last().map(|e| e.offset + 1);
        Ok(())
    }
}
