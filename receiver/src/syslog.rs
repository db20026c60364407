//! syslog: RFC 6587 TCP framing and RFC 3164 / RFC 5424 parsing, as pure functions.
//!
//! Receiving and parsing are separate on purpose. A receiver only frames: it finds message
//! boundaries, refuses oversize frames, and computes the content key from the bytes. Parsing
//! happens when the merged-stream entry is built ([`parse`]), so the receive path stays cheap
//! and a parser change never changes a key.
//!
//! Parsed or raw: a message is *parsed* when it starts with a valid PRI (`<0>`..`<191>`,
//! RFC 5424 §6.2.1: 1-3 digits) and `syslog_loose` or the Cisco IOS form below accepts the
//! rest. Anything else is kept *raw* with the reason (SPEC "Bad input": never dropped).

use serde::Serialize;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Framing (RFC 6587)
// ---------------------------------------------------------------------------------------------

/// How a TCP connection delimits messages. Detected from the first byte of a connection:
/// RFC 6587 §3.4.1 octet counting starts with the length (a digit); non-transparent framing
/// (§3.4.2) starts with the message itself, normally `<` of the PRI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    OctetCounting,
    NonTransparent,
}

/// One result of [`TcpFramer::next_frame`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete message, framing removed.
    Message(Vec<u8>),
    /// A frame longer than the limit, refused (and its bytes skipped, never truncated).
    Oversize { len: u64 },
    /// The stream no longer follows its framing: the connection must be closed.
    BadFraming(&'static str),
}

/// Incremental RFC 6587 deframer for one TCP connection.
///
/// Feed bytes with [`TcpFramer::extend`], then take frames with [`TcpFramer::next_frame`] until
/// it returns `None`. Memory is bounded by the message limit plus one read buffer.
pub struct TcpFramer {
    framing: Option<Framing>,
    max_bytes: usize,
    buf: Vec<u8>,
    start: usize,
    /// Octet counting: bytes of a refused frame still to skip.
    skip: u64,
    /// Non-transparent: discarding an oversize line until its LF.
    discarding_line: bool,
    /// Non-transparent: bytes of `buf[start..]` already searched for LF.
    scanned: usize,
    broken: bool,
}

/// RFC 6587 §3.4.1: MSG-LEN is NONZERO-DIGIT *DIGIT; ten digits already exceed any limit.
const MSG_LEN_DIGITS_MAX: usize = 10;

impl TcpFramer {
    pub fn new(max_bytes: usize) -> TcpFramer {
        TcpFramer {
            framing: None,
            max_bytes,
            buf: Vec::new(),
            start: 0,
            skip: 0,
            discarding_line: false,
            scanned: 0,
            broken: false,
        }
    }

    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Bytes buffered and not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn extend(&mut self, mut data: &[u8]) {
        if self.broken {
            return;
        }
        if self.skip > 0 {
            let n = (self.skip.min(data.len() as u64)) as usize;
            self.skip -= n as u64;
            data = &data[n..];
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.broken || self.skip > 0 {
            return None;
        }
        let framing = match self.framing {
            Some(f) => f,
            None => {
                let first = *self.buf.get(self.start)?;
                let f = if first.is_ascii_digit() {
                    Framing::OctetCounting
                } else {
                    Framing::NonTransparent
                };
                self.framing = Some(f);
                f
            }
        };
        match framing {
            Framing::OctetCounting => self.next_counted(),
            Framing::NonTransparent => self.next_line(),
        }
    }

    fn next_counted(&mut self) -> Option<Frame> {
        let avail = &self.buf[self.start..];
        // Between frames a sender may leave LF/CR/NUL (some send both count and trailer).
        let lead = avail
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r' || b == 0)
            .count();
        if lead > 0 {
            self.start += lead;
            return self.next_counted();
        }
        let digits = avail.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == avail.len() {
            if digits > MSG_LEN_DIGITS_MAX {
                return Some(self.fail("octet count too long"));
            }
            return None; // need more bytes
        }
        if digits == 0 || digits > MSG_LEN_DIGITS_MAX || avail[digits] != b' ' {
            return Some(self.fail("expected MSG-LEN SP"));
        }
        if avail[0] == b'0' {
            return Some(self.fail("MSG-LEN starts with 0"));
        }
        let mut len: u64 = 0;
        for &d in &avail[..digits] {
            len = len * 10 + u64::from(d - b'0');
        }
        let header = digits + 1;
        if len > self.max_bytes as u64 {
            // Refuse, and skip the frame's bytes so the next frame is found intact.
            let here = (avail.len() - header) as u64;
            let consumed = here.min(len);
            self.start += header + consumed as usize;
            self.skip = len - consumed;
            return Some(Frame::Oversize { len });
        }
        let len = len as usize;
        if avail.len() < header + len {
            return None;
        }
        let msg = avail[header..header + len].to_vec();
        self.start += header + len;
        Some(Frame::Message(msg))
    }

    fn next_line(&mut self) -> Option<Frame> {
        loop {
            let avail = &self.buf[self.start..];
            let from = self.scanned.min(avail.len());
            match avail[from..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = from + i;
                    self.scanned = 0;
                    let was_discarding = std::mem::replace(&mut self.discarding_line, false);
                    let line_len = end;
                    let msg = if was_discarding {
                        None
                    } else {
                        Some(avail[..end].to_vec())
                    };
                    self.start += end + 1;
                    match msg {
                        None => continue,
                        Some(m) if m.len() > self.max_bytes => {
                            return Some(Frame::Oversize {
                                len: line_len as u64,
                            })
                        }
                        Some(m) if is_blank(&m) => continue,
                        Some(m) => return Some(Frame::Message(m)),
                    }
                }
                None => {
                    if self.discarding_line {
                        self.start = self.buf.len();
                        self.scanned = 0;
                        return None;
                    }
                    if avail.len() > self.max_bytes {
                        let len = avail.len() as u64;
                        self.discarding_line = true;
                        self.start = self.buf.len();
                        self.scanned = 0;
                        return Some(Frame::Oversize { len });
                    }
                    self.scanned = avail.len();
                    return None;
                }
            }
        }
    }

    /// The connection closed: what is left is a last LF-less message (non-transparent), or
    /// a truncated frame (octet counting).
    pub fn finish(&mut self) -> Option<Frame> {
        if self.broken {
            return None;
        }
        let rest = &self.buf[self.start..];
        if self.discarding_line || rest.is_empty() || is_blank(rest) {
            return None;
        }
        let frame = match self.framing {
            Some(Framing::OctetCounting) | None if rest[0].is_ascii_digit() => {
                Frame::BadFraming("connection closed inside a frame")
            }
            _ if rest.len() > self.max_bytes => Frame::Oversize {
                len: rest.len() as u64,
            },
            _ => Frame::Message(rest.to_vec()),
        };
        self.start = self.buf.len();
        Some(frame)
    }

    fn fail(&mut self, why: &'static str) -> Frame {
        self.broken = true;
        self.buf = Vec::new();
        self.start = 0;
        Frame::BadFraming(why)
    }
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|&c| c == b'\r' || c == 0 || c == b' ')
}

// ---------------------------------------------------------------------------------------------
// Parsing (RFC 5424, RFC 3164, Cisco IOS)
// ---------------------------------------------------------------------------------------------

/// The parsed fields of a syslog message, as they appear in a merged-stream entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyslogFields {
    /// `rfc5424`, `rfc3164` or `cisco`.
    pub format: &'static str,
    pub facility: u8,
    pub severity: u8,
    /// RFC 3339; absent when the message carries none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
    /// SD-ID → parameters. An SD-ID that repeats keeps its first element (RFC 5424 §6.3.2
    /// forbids repeats).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub structured_data: BTreeMap<String, BTreeMap<String, String>>,
    /// Cisco IOS message sequence number (`<189>123: ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    pub message: String,
    /// The message was not valid UTF-8; invalid bytes were replaced with U+FFFD.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lossy_utf8: bool,
}

/// Why a message could not be parsed; it is kept raw with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no PRI: a syslog message starts with <0>..<191>")]
    NoPri,
    #[error("PRI {0} is out of range (0..=191)")]
    PriRange(u32),
    #[error("empty message")]
    Empty,
}

/// Parses one message (framing already removed). `received_year` supplies the year that
/// RFC 3164 timestamps lack (taken from the receive time, not the local clock, so the result
/// does not depend on when the entry is built).
pub fn parse(
    raw: &[u8],
    received_year: i32,
    received_month: u32,
) -> Result<SyslogFields, ParseError> {
    let trimmed = crate::key::trim_trailer(raw);
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    let (pri, _) = split_pri(trimmed)?;
    let (text, lossy) = match std::str::from_utf8(trimmed) {
        Ok(s) => (std::borrow::Cow::Borrowed(s), false),
        Err(_) => (String::from_utf8_lossy(trimmed), true),
    };
    let year_for = move |date: syslog_loose::IncompleteDate| -> i32 {
        // A December message received in January belongs to the previous year.
        let (month, ..) = date;
        if month > received_month + 1 {
            received_year - 1
        } else {
            received_year
        }
    };
    let msg = syslog_loose::parse_message_with_year_tz(
        &text,
        year_for,
        Some(chrono::Utc),
        syslog_loose::Variant::Either,
    );
    let facility = (pri / 8) as u8;
    let severity = (pri % 8) as u8;
    if let syslog_loose::Protocol::RFC3164 = msg.protocol {
        if msg.timestamp.is_none() {
            if let Some(cisco) = parse_cisco(&text, received_year, received_month) {
                return Ok(SyslogFields {
                    facility,
                    severity,
                    lossy_utf8: lossy,
                    ..cisco
                });
            }
        }
    }
    let mut sd = BTreeMap::new();
    for el in &msg.structured_data {
        sd.entry(el.id.to_string()).or_insert_with(|| {
            el.params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        });
    }
    Ok(SyslogFields {
        format: match msg.protocol {
            syslog_loose::Protocol::RFC5424(_) => "rfc5424",
            syslog_loose::Protocol::RFC3164 => "rfc3164",
        },
        facility,
        severity,
        timestamp: msg
            .timestamp
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        hostname: msg.hostname.map(str::to_string),
        app_name: msg.appname.map(str::to_string),
        procid: msg.procid.map(|p| p.to_string()),
        msgid: msg.msgid.map(str::to_string),
        structured_data: sd,
        sequence: None,
        message: msg.msg.to_string(),
        lossy_utf8: lossy,
    })
}

/// RFC 5424 §6.2.1: `<` 1*3DIGIT `>`, value 0..=191. Returns the PRI and the rest.
fn split_pri(b: &[u8]) -> Result<(u32, &[u8]), ParseError> {
    if b.first() != Some(&b'<') {
        return Err(ParseError::NoPri);
    }
    let digits = b[1..]
        .iter()
        .take(4)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 || digits > 3 || b.get(1 + digits) != Some(&b'>') {
        return Err(ParseError::NoPri);
    }
    let pri = b[1..1 + digits]
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if pri > 191 {
        return Err(ParseError::PriRange(pri));
    }
    Ok((pri, &b[2 + digits..]))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Cisco IOS: `<PRI>SEQ: [HOST: ]['*'|'.']Mmm dd hh:mm:ss[.mmm][ ZONE]: %FAC-SEV-MNEMONIC: text`.
/// `*` marks an unsynchronised clock, `.` a clock that lost sync; both still carry a time.
fn parse_cisco(text: &str, received_year: i32, received_month: u32) -> Option<SyslogFields> {
    let rest = &text[text.find('>')? + 1..];
    let colon = rest.find(": ")?;
    let sequence: u64 = rest[..colon].parse().ok()?;
    let mut rest = &rest[colon + 2..];
    let mut hostname = None;
    // An optional "host: " before the timestamp (logging origin-id hostname).
    if let Some(c) = rest.find(": ") {
        let cand = &rest[..c];
        if !cand.is_empty()
            && !cand.contains(' ')
            && !cand.starts_with(['*', '.'])
            && !MONTHS.iter().any(|m| cand.starts_with(m))
        {
            hostname = Some(cand.to_string());
            rest = &rest[c + 2..];
        }
    }
    let rest = rest.trim_start_matches(['*', '.']);
    let month = MONTHS.iter().position(|m| rest.starts_with(m))? as u32 + 1;
    let after_month = rest[3..].trim_start();
    let (day, after_day) = after_month.split_once(' ')?;
    let day: u32 = day.parse().ok()?;
    let end = after_day.find(": ")?;
    let mut time_part = after_day[..end].split(' ');
    let clock = time_part.next()?;
    let zone = time_part.next();
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let mut it = hms.split(':');
    let (h, m, s): (u32, u32, u32) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    let nanos = match frac {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|c| c.is_ascii_digit()) => {
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
        None => 0,
    };
    let year = if month > received_month + 1 {
        received_year - 1
    } else {
        received_year
    };
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let naive = date.and_hms_nano_opt(h, m, s, nanos)?;
    // Only UTC/GMT (or no zone) can be placed on the time line without a zone database.
    let timestamp = match zone {
        None | Some("UTC") | Some("GMT") => Some(
            naive
                .and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        Some(_) => None,
    };
    let message = after_day[end + 2..].to_string();
    let app_name = message
        .strip_prefix('%')
        .and_then(|m| m.split(':').next())
        .map(str::to_string);
    Some(SyslogFields {
        format: "cisco",
        facility: 0,
        severity: 0,
        timestamp,
        hostname,
        app_name,
        procid: None,
        msgid: None,
        structured_data: BTreeMap::new(),
        sequence: Some(sequence),
        message,
        lossy_utf8: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut TcpFramer) -> Vec<Frame> {
        std::iter::from_fn(|| framer.next_frame()).collect()
    }

    #[test]
    fn octet_counting_across_split_reads() {
        let mut f = TcpFramer::new(1024);
        let stream = b"5 <13>a11 <13>hello\n!3 xyz";
        for chunk in stream.chunks(3) {
            f.extend(chunk);
        }
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::Message(b"<13>a".to_vec()),
                Frame::Message(b"<13>hello\n!".to_vec()),
                Frame::Message(b"xyz".to_vec()),
            ]
        );
        assert_eq!(f.framing(), Some(Framing::OctetCounting));
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn lf_framing_and_last_line_without_lf() {
        let mut f = TcpFramer::new(1024);
        f.extend(b"<13>one\r\n\n<13>two\n<13>thr");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::Message(b"<13>one\r".to_vec()),
                Frame::Message(b"<13>two".to_vec())
            ]
        );
        f.extend(b"ee");
        assert_eq!(f.finish(), Some(Frame::Message(b"<13>three".to_vec())));
    }

    #[test]
    fn oversize_counted_frame_is_skipped_not_truncated() {
        let mut f = TcpFramer::new(10);
        f.extend(b"12 0123456789ab");
        f.extend(b"3 abc");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Oversize { len: 12 }, Frame::Message(b"abc".to_vec())]
        );
        // The skipped bytes may arrive in later reads.
        let mut f = TcpFramer::new(10);
        f.extend(b"20 0123");
        assert_eq!(frames(&mut f), vec![Frame::Oversize { len: 20 }]);
        f.extend(b"4567890123456");
        f.extend(b"789");
        f.extend(b"2 ok");
        assert_eq!(frames(&mut f), vec![Frame::Message(b"ok".to_vec())]);
    }

    #[test]
    fn oversize_line_is_discarded_until_its_lf() {
        let mut f = TcpFramer::new(8);
        f.extend(b"<13>0123456789");
        assert_eq!(frames(&mut f), vec![Frame::Oversize { len: 14 }]);
        f.extend(b"more bytes\n<13>ok\n");
        assert_eq!(frames(&mut f), vec![Frame::Message(b"<13>ok".to_vec())]);
    }

    #[test]
    fn garbage_after_counted_frame_breaks_the_connection() {
        let mut f = TcpFramer::new(100);
        f.extend(b"3 abcXYZ 3 def");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::Message(b"abc".to_vec()),
                Frame::BadFraming("expected MSG-LEN SP")
            ]
        );
        assert_eq!(f.next_frame(), None);
        let mut f = TcpFramer::new(100);
        f.extend(b"99999999999999 x");
        assert_eq!(
            frames(&mut f),
            vec![Frame::BadFraming("expected MSG-LEN SP")]
        );
    }

    #[test]
    fn truncated_counted_frame_at_close_is_bad_framing() {
        let mut f = TcpFramer::new(100);
        f.extend(b"10 abc");
        assert_eq!(f.next_frame(), None);
        assert!(matches!(f.finish(), Some(Frame::BadFraming(_))));
    }

    #[test]
    fn parses_rfc5424_with_structured_data() {
        let raw = br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application"] An application event"#;
        let p = parse(raw, 2026, 11).expect("valid");
        assert_eq!(p.format, "rfc5424");
        assert_eq!((p.facility, p.severity), (20, 5));
        assert_eq!(p.timestamp.as_deref(), Some("2003-10-11T22:14:15.003Z"));
        assert_eq!(p.hostname.as_deref(), Some("mymachine.example.com"));
        assert_eq!(p.app_name.as_deref(), Some("evntslog"));
        assert_eq!(p.procid, None);
        assert_eq!(p.msgid.as_deref(), Some("ID47"));
        assert_eq!(p.structured_data["exampleSDID@32473"]["iut"], "3");
        assert_eq!(p.message, "An application event");
    }

    #[test]
    fn parses_rfc3164_with_year_from_receive_time() {
        let raw = b"<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed\n";
        let p = parse(raw, 2026, 11).expect("valid");
        assert_eq!(p.format, "rfc3164");
        assert_eq!((p.facility, p.severity), (4, 2));
        assert_eq!(p.timestamp.as_deref(), Some("2026-10-11T22:14:15Z"));
        assert_eq!(p.hostname.as_deref(), Some("mymachine"));
        assert_eq!(p.app_name.as_deref(), Some("su"));
        assert_eq!(p.procid.as_deref(), Some("123"));
        assert_eq!(p.message, "'su root' failed");
        // A December message received in January is from last year.
        let p = parse(b"<34>Dec 31 23:59:59 h app: x", 2027, 1).expect("valid");
        assert_eq!(p.timestamp.as_deref(), Some("2026-12-31T23:59:59Z"));
    }

    #[test]
    fn parses_cisco_ios_form() {
        let raw =
            b"<189>123: *Mar  1 18:46:11.123: %SYS-5-CONFIG_I: Configured from console by vty0";
        let p = parse(raw, 2026, 11).expect("valid");
        assert_eq!(p.format, "cisco");
        assert_eq!((p.facility, p.severity), (23, 5));
        assert_eq!(p.sequence, Some(123));
        assert_eq!(p.timestamp.as_deref(), Some("2026-03-01T18:46:11.123Z"));
        assert_eq!(p.app_name.as_deref(), Some("SYS-5-CONFIG_I"));
        assert_eq!(
            p.message,
            "%SYS-5-CONFIG_I: Configured from console by vty0"
        );
        let p = parse(
            b"<187>45: router1: Nov 20 10:00:00 UTC: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
            2026,
            11,
        )
        .expect("valid");
        assert_eq!(p.hostname.as_deref(), Some("router1"));
        assert_eq!(p.timestamp.as_deref(), Some("2026-11-20T10:00:00Z"));
        assert_eq!(p.sequence, Some(45));
    }

    #[test]
    fn unparsable_is_an_error_with_a_reason() {
        assert_eq!(parse(b"hello", 2026, 1), Err(ParseError::NoPri));
        assert_eq!(parse(b"<999>x", 2026, 1), Err(ParseError::PriRange(999)));
        assert_eq!(parse(b"<1x>x", 2026, 1), Err(ParseError::NoPri));
        assert_eq!(parse(b"\n\0", 2026, 1), Err(ParseError::Empty));
    }

    #[test]
    fn invalid_utf8_is_parsed_lossily_and_flagged() {
        let p = parse(b"<13>Oct 11 22:14:15 h app: caf\xe9", 2026, 11).expect("valid");
        assert!(p.lossy_utf8);
        assert!(p.message.starts_with("caf"));
    }

    proptest::proptest! {
        #[test]
        fn framer_never_panics_and_stays_bounded(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 0..20)) {
            let mut f = TcpFramer::new(64);
            for c in &chunks {
                f.extend(c);
                while let Some(fr) = f.next_frame() {
                    if let Frame::Message(m) = fr { proptest::prop_assert!(m.len() <= 64); }
                }
                proptest::prop_assert!(f.buffered() <= 64 + 200 + 1);
            }
            let _ = f.finish();
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&bytes, 2026, 6);
            let mut b = b"<13>".to_vec();
            b.extend_from_slice(&bytes);
            let _ = parse(&b, 2026, 6);
        }
    }
}
