//! `twinrx check`: reads generator manifests and a merged-stream dump and reports, per run,
//! sent / present / missing / duplicated; checks that offsets are contiguous and epochs never
//! go down. Exits 1 on any loss, duplicate or stream defect.

use anyhow::Context as _;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Manifest(s) written by `twinrx gen` (repeat for several runs).
    #[arg(long = "manifest", required = true)]
    pub manifests: Vec<PathBuf>,
    /// A stream dump (NDJSON, e.g. from `twinrx tail > FILE`); `-` for stdin.
    #[arg(long, conflicts_with = "node")]
    pub stream: Option<PathBuf>,
    /// Read the stream from this node's admin URL instead.
    #[arg(long)]
    pub node: Option<String>,
    /// Numbers (from the manifest runs) allowed to be missing, e.g. messages sent while no
    /// node could receive them: a file of `run:n` lines.
    #[arg(long)]
    pub allow_missing: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Report {
    pub sent: u64,
    pub present: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub allowed_missing: u64,
    /// Informs that a node acknowledged but that are not in the stream (a broken promise).
    pub acknowledged_missing: u64,
    pub missing_examples: Vec<String>,
    pub duplicated_examples: Vec<String>,
    pub entries: u64,
    pub offset_gaps: u64,
    pub epoch_regressions: u64,
    pub first_offset: Option<u64>,
    pub last_offset: Option<u64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.offset_gaps == 0
            && self.epoch_regressions == 0
    }
}

/// Finds every `T=<run>:<n>` token in a line (the generator's marker).
fn tokens(line: &str) -> impl Iterator<Item = (&str, u64)> {
    line.match_indices("T=").filter_map(move |(i, _)| {
        let rest = &line[i + 2..];
        let colon = rest.find(':')?;
        let run = &rest[..colon];
        if run.is_empty()
            || !run
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let digits: &str = &rest[colon + 1..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok().map(|n| (run, n))
    })
}

pub fn check<R: std::io::BufRead>(
    manifests: &[crate::gen::Manifest],
    stream: R,
    allowed: &std::collections::HashSet<(String, u64)>,
) -> anyhow::Result<Report> {
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    let runs: HashMap<&str, ()> = manifests.iter().map(|m| (m.run_id.as_str(), ())).collect();
    let mut r = Report::default();
    let mut last_epoch = 0u64;
    for line in stream.lines() {
        let line = line.context("reading the stream")?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("stream line {} is not JSON", r.entries + 1))?;
        let offset = v["offset"].as_u64().context("entry without offset")?;
        let epoch = v["epoch"].as_u64().unwrap_or(0);
        match r.last_offset {
            Some(prev) if offset != prev + 1 => r.offset_gaps += 1,
            None => r.first_offset = Some(offset),
            _ => {}
        }
        if epoch < last_epoch {
            r.epoch_regressions += 1;
        }
        last_epoch = epoch;
        r.last_offset = Some(offset);
        r.entries += 1;
        // One token per entry: count it once even if it appears in several fields.
        let mut in_entry: Vec<(String, u64)> = tokens(&line)
            .filter(|(run, _)| runs.contains_key(run))
            .map(|(run, n)| (run.to_string(), n))
            .collect();
        in_entry.sort();
        in_entry.dedup();
        for t in in_entry {
            *seen.entry(t).or_default() += 1;
        }
    }
    for m in manifests {
        for n in m.first..m.first + m.attempted {
            r.sent += 1;
            let k = (m.run_id.clone(), n);
            match seen.get(&k).copied().unwrap_or(0) {
                0 if allowed.contains(&k) => r.allowed_missing += 1,
                0 => {
                    if m.protocol == crate::gen::GenProtocol::SnmpInform
                        && !m.unacknowledged.contains(&n)
                    {
                        r.acknowledged_missing += 1;
                    }
                    r.missing += 1;
                    if r.missing_examples.len() < 10 {
                        r.missing_examples.push(format!("{}:{n}", m.run_id));
                    }
                }
                1 => r.present += 1,
                c => {
                    r.present += 1;
                    r.duplicated += u64::from(c - 1);
                    if r.duplicated_examples.len() < 10 {
                        r.duplicated_examples.push(format!("{}:{n} x{c}", m.run_id));
                    }
                }
            }
        }
    }
    Ok(r)
}

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let manifests = args
        .manifests
        .iter()
        .map(|p| {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{}: not a twinrx gen manifest", p.display()))
        })
        .collect::<anyhow::Result<Vec<crate::gen::Manifest>>>()?;
    let mut allowed = std::collections::HashSet::new();
    if let Some(p) = &args.allow_missing {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let (run, n) = l
                .trim()
                .rsplit_once(':')
                .with_context(|| format!("{}: line {l:?} is not run:n", p.display()))?;
            allowed.insert((
                run.to_string(),
                n.parse()
                    .with_context(|| format!("{}: {l:?}", p.display()))?,
            ));
        }
    }
    let report = match (&args.stream, &args.node) {
        (Some(p), _) if p.as_os_str() == "-" => {
            check(&manifests, std::io::stdin().lock(), &allowed)?
        }
        (Some(p), _) => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            check(&manifests, std::io::BufReader::new(f), &allowed)?
        }
        (None, node) => {
            let base = node
                .clone()
                .unwrap_or_else(|| "http://127.0.0.1:7401".into());
            let url = format!("{}/stream?from=0", base.trim_end_matches('/'));
            let mut resp = match ureq::get(&url).call() {
                Err(ureq::Error::StatusCode(410)) => anyhow::bail!(
                    "{url}: the node's stream retention has deleted its first entries, so the \
                     whole stream cannot be checked from the node; check a dump you kept \
                     (`twinrx tail > dump`, then --stream dump)"
                ),
                r => r.with_context(|| format!("cannot read {url}"))?,
            };
            let reader = std::io::BufReader::new(resp.body_mut().as_reader());
            check(&manifests, reader, &allowed)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sent {}  present {}  missing {}  duplicated {}  (allowed missing {}, acknowledged informs missing {})",
            report.sent,
            report.present,
            report.missing,
            report.duplicated,
            report.allowed_missing,
            report.acknowledged_missing
        );
        println!(
            "stream entries {}  offsets {}..{}  offset gaps {}  epoch regressions {}",
            report.entries,
            report
                .first_offset
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
            report
                .last_offset
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
            report.offset_gaps,
            report.epoch_regressions
        );
        if !report.missing_examples.is_empty() {
            println!("missing e.g. {}", report.missing_examples.join(" "));
        }
        if !report.duplicated_examples.is_empty() {
            println!("duplicated e.g. {}", report.duplicated_examples.join(" "));
        }
        println!("{}", if report.ok() { "OK" } else { "FAILED" });
    }
    Ok(if report.ok() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(run: &str, count: u64) -> crate::gen::Manifest {
        crate::gen::Manifest {
            run_id: run.into(),
            first: 0,
            count,
            attempted: count,
            protocol: crate::gen::GenProtocol::Syslog,
            transport: crate::gen::GenTransport::Udp,
            destinations: vec![],
            rate: 0,
            size: 0,
            started_at: String::new(),
            duration_ms: 0,
            send_errors: vec![],
            unacknowledged: vec![],
        }
    }

    #[test]
    fn counts_missing_duplicates_gaps_and_epochs() {
        let stream = "\
{\"offset\":0,\"epoch\":1,\"syslog\":{\"message\":\"T=r1:0 x\"}}
{\"offset\":1,\"epoch\":2,\"syslog\":{\"message\":\"T=r1:2 x\"}}
{\"offset\":3,\"epoch\":1,\"syslog\":{\"message\":\"T=r1:2 x\"},\"raw\":\"T=r1:2\"}
{\"offset\":4,\"epoch\":2,\"syslog\":{\"message\":\"T=other:1\"}}
";
        let r = check(&[manifest("r1", 4)], stream.as_bytes(), &Default::default()).expect("check");
        assert_eq!((r.sent, r.present, r.missing, r.duplicated), (4, 2, 2, 1));
        assert_eq!(r.offset_gaps, 1);
        assert_eq!(r.epoch_regressions, 1);
        assert_eq!(r.entries, 4);
        assert!(!r.ok());
        let allowed = [("r1".to_string(), 1u64), ("r1".to_string(), 3u64)]
            .into_iter()
            .collect();
        let r = check(&[manifest("r1", 4)], stream.as_bytes(), &allowed).expect("check");
        assert_eq!((r.missing, r.allowed_missing), (0, 2));
    }

    #[test]
    fn clean_stream_passes() {
        let stream = "{\"offset\":5,\"epoch\":0,\"m\":\"T=a:0\"}\n{\"offset\":6,\"epoch\":0,\"m\":\"T=a:1\"}\n";
        let r = check(&[manifest("a", 2)], stream.as_bytes(), &Default::default()).expect("check");
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.present, 2);
    }
}
