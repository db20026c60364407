//! `twinrx gen`: a traffic generator for load and fault tests.
//!
//! Every message carries a unique token `T=<run>:<n>`, and every message is sent to each
//! destination (as a device sends to both nodes). A manifest records what was sent, so
//! `twinrx check` can count loss and duplicates in the merged stream.

use anyhow::Context as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GenTransport {
    Udp,
    Tcp,
    Tls,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Rfc5424,
    Rfc3164,
}

/// What the generator sends.
#[derive(
    clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum GenProtocol {
    Syslog,
    /// SNMPv2c Trap (UDP), token in an OCTET STRING varbind.
    SnmpTrap,
    /// SNMPv2c InformRequest (UDP), each awaited (1 s timeout, 2 retries) before the next.
    SnmpInform,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpFraming {
    /// RFC 6587 octet counting.
    Octet,
    /// LF-terminated (non-transparent framing).
    Lf,
}

#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Destination address:port. Repeat it to send every message to each destination.
    #[arg(long = "to", required = true)]
    pub to: Vec<SocketAddr>,
    #[arg(long, value_enum, default_value_t = GenProtocol::Syslog)]
    pub protocol: GenProtocol,
    /// syslog transport (SNMP is always UDP).
    #[arg(long, value_enum, default_value_t = GenTransport::Udp)]
    pub transport: GenTransport,
    /// SNMP community.
    #[arg(long, default_value = "public")]
    pub community: String,
    /// Messages to send.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Message size in bytes (padded; at least the header and token).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    #[arg(long, value_enum, default_value_t = Format::Rfc5424)]
    pub format: Format,
    /// TCP/TLS framing.
    #[arg(long, value_enum, default_value_t = TcpFraming::Octet)]
    pub framing: TcpFraming,
    /// CA certificate (PEM) that signed the nodes' TLS certificates.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name expected in the nodes' TLS certificates.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Where to write the manifest (JSON) that `twinrx check` reads.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Run identifier in every token (default: derived from the time).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Number of the first message (several runs can share a run id).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Stop after this many seconds even if not all messages were sent.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Manifest {
    pub run_id: String,
    pub first: u64,
    pub count: u64,
    /// Messages actually attempted (less than `count` only when the run timed out).
    pub attempted: u64,
    #[serde(default = "default_protocol")]
    pub protocol: GenProtocol,
    pub transport: GenTransport,
    pub destinations: Vec<String>,
    pub rate: u64,
    pub size: usize,
    pub started_at: String,
    pub duration_ms: u64,
    /// Per destination: sends that failed (refused, reset, not connected).
    pub send_errors: Vec<u64>,
    /// Informs: numbers that no destination acknowledged (every other inform was answered,
    /// so it must be in the stream).
    #[serde(default)]
    pub unacknowledged: Vec<u64>,
}

fn default_protocol() -> GenProtocol {
    GenProtocol::Syslog
}

/// The SNMP notification OIDs the generator uses (NET-SNMP-EXAMPLES-MIB).
pub const GEN_TRAP_OID: &str = "1.3.6.1.4.1.8072.2.3.0.1";
pub const GEN_TOKEN_OID: &str = "1.3.6.1.4.1.8072.2.3.2.1";

fn snmp_message(
    args: &GenArgs,
    run: &str,
    n: u64,
    request_id: i32,
    uptime: u32,
) -> anyhow::Result<Vec<u8>> {
    use receiver::snmp::GenValue;
    let mut text = token(run, n).into_bytes();
    // Pad the token varbind so the datagram is about --size bytes.
    let overhead = 90 + args.community.len();
    text.push(b' ');
    while text.len() + overhead < args.size {
        text.push(b'x');
    }
    let vbs = [(GEN_TOKEN_OID.to_string(), GenValue::OctetString(text))];
    let enc = match args.protocol {
        GenProtocol::SnmpInform => receiver::snmp::encode_v2c_inform(
            args.community.as_bytes(),
            request_id,
            uptime,
            GEN_TRAP_OID,
            &vbs,
        ),
        _ => receiver::snmp::encode_v2c_trap(
            args.community.as_bytes(),
            request_id,
            uptime,
            GEN_TRAP_OID,
            &vbs,
        ),
    };
    enc.map_err(|e| anyhow::anyhow!("encoding an SNMP message: {e}"))
}

/// Sends SNMP traps or informs; returns (attempted, send errors per destination, unacked).
fn run_snmp(
    args: &GenArgs,
    run: &str,
    deadline: Instant,
) -> anyhow::Result<(u64, Vec<u64>, Vec<u64>)> {
    let sock = UdpSocket::bind(if args.to.iter().all(|a| a.is_ipv4()) {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .context("binding the SNMP sender")?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let started = Instant::now();
    let mut errors = vec![0u64; args.to.len()];
    let mut unacked = Vec::new();
    let mut attempted = 0;
    let mut buf = vec![0u8; 65_536];
    for i in 0..args.count {
        let n = args.first + i;
        if !pace(args.rate, started, i, deadline) {
            break;
        }
        // The request-id differs per message (and per destination would be allowed too); it
        // is never part of the key.
        let request_id = (n as i32).wrapping_mul(2_654_435_761u32 as i32) & 0x7fff_ffff;
        let uptime = (started.elapsed().as_millis() / 10) as u32;
        let msg = snmp_message(args, run, n, request_id, uptime)?;
        let mut acked = vec![false; args.to.len()];
        let tries = if args.protocol == GenProtocol::SnmpInform {
            3
        } else {
            1
        };
        for _ in 0..tries {
            for (d, dest) in args.to.iter().enumerate() {
                if !acked[d] && sock.send_to(&msg, dest).is_err() {
                    errors[d] += 1;
                }
            }
            if args.protocol != GenProtocol::SnmpInform {
                break;
            }
            let wait_until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < wait_until && acked.iter().any(|a| !a) {
                if let Ok((len, from)) = sock.recv_from(&mut buf) {
                    if receiver::snmp::parse_response(&buf[..len]) == Some(request_id) {
                        if let Some(d) = args.to.iter().position(|t| *t == from) {
                            acked[d] = true;
                        }
                    }
                }
            }
            if acked.iter().all(|a| *a) {
                break;
            }
        }
        if args.protocol == GenProtocol::SnmpInform && !acked.iter().any(|a| *a) {
            unacked.push(n);
        }
        attempted += 1;
    }
    Ok((attempted, errors, unacked))
}

pub fn token(run: &str, n: u64) -> String {
    format!("T={run}:{n}")
}

fn message(args: &GenArgs, run: &str, n: u64, host: &str) -> Vec<u8> {
    let now = chrono::Utc::now();
    let head = match args.format {
        Format::Rfc5424 => format!(
            "<134>1 {} {host} twinrx-gen {} - - {} ",
            now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            std::process::id(),
            token(run, n)
        ),
        Format::Rfc3164 => format!(
            "<134>{} {host} twinrx-gen[{}]: {} ",
            now.format("%b %e %H:%M:%S"),
            std::process::id(),
            token(run, n)
        ),
    };
    let mut m = head.into_bytes();
    while m.len() < args.size {
        m.push(b'x');
    }
    m
}

enum Conn {
    /// Datagrams go through the shared batch (`send_batch`).
    Udp,
    Tcp(Option<TcpStream>),
    Tls(Option<Box<rustls_stream::Stream>>),
}

mod rustls_stream {
    pub type Stream = tokio_rustls::rustls::StreamOwned<
        tokio_rustls::rustls::ClientConnection,
        std::net::TcpStream,
    >;
}

fn tls_config(
    ca: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(c.with_context(|| format!("reading {}", ca.display()))?)
            .with_context(|| format!("{}: bad CA certificate", ca.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}

pub fn run(args: GenArgs) -> anyhow::Result<i32> {
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        )
    });
    if args.protocol != GenProtocol::Syslog {
        let started = Instant::now();
        let started_at = chrono::Utc::now().to_rfc3339();
        let (attempted, errors, unacked) = run_snmp(
            &args,
            &run_id,
            started + Duration::from_secs(args.timeout_s),
        )?;
        return finish(
            &args, run_id, attempted, errors, unacked, started, started_at,
        );
    }
    let tls = match (args.transport, &args.tls_ca) {
        (GenTransport::Tls, Some(ca)) => Some(tls_config(ca)?),
        (GenTransport::Tls, None) => anyhow::bail!("--transport tls needs --tls-ca FILE"),
        _ => None,
    };
    let connect = |dest: SocketAddr| -> Option<Conn> {
        match args.transport {
            GenTransport::Udp => None,
            GenTransport::Tcp => TcpStream::connect_timeout(&dest, Duration::from_secs(2))
                .ok()
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    Conn::Tcp(Some(s))
                }),
            GenTransport::Tls => {
                let cfg = tls.clone()?;
                let name =
                    rustls_pki_types::ServerName::try_from(args.tls_server_name.clone()).ok()?;
                let conn = tokio_rustls::rustls::ClientConnection::new(cfg, name).ok()?;
                let sock = TcpStream::connect_timeout(&dest, Duration::from_secs(2)).ok()?;
                let _ = sock.set_nodelay(true);
                Some(Conn::Tls(Some(Box::new(
                    tokio_rustls::rustls::StreamOwned::new(conn, sock),
                ))))
            }
        }
    };
    let udp = UdpSocket::bind(if args.to.iter().all(|a| a.is_ipv4()) {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .context("binding the UDP sender")?;
    let mut conns: Vec<Conn> = args
        .to
        .iter()
        .map(|d| match args.transport {
            GenTransport::Udp => Conn::Udp,
            GenTransport::Tcp => connect(*d).unwrap_or(Conn::Tcp(None)),
            GenTransport::Tls => connect(*d).unwrap_or(Conn::Tls(None)),
        })
        .collect();
    let mut errors = vec![0u64; args.to.len()];
    let mut last_retry = vec![Instant::now(); args.to.len()];
    let host = "gen-host";
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let mut attempted = 0;
    let mut frame = Vec::with_capacity(args.size + 16);
    // UDP goes out in batches of one sendmmsg(2) each (a device fleet is many senders; one
    // sendto per datagram made this generator, not the receiver, the bottleneck).
    let mut batch: Vec<(Vec<u8>, usize)> = Vec::with_capacity(UDP_BATCH);
    for i in 0..args.count {
        let n = args.first + i;
        if args.rate > 0 && !batch.is_empty() && due_in(args.rate, started, i).is_some() {
            send_batch(&udp, &args.to, &mut batch, &mut errors);
        }
        if !pace(args.rate, started, i, deadline) {
            break;
        }
        let msg = message(&args, &run_id, n, host);
        frame.clear();
        match args.framing {
            TcpFraming::Octet => {
                frame.extend_from_slice(format!("{} ", msg.len()).as_bytes());
                frame.extend_from_slice(&msg);
            }
            TcpFraming::Lf => {
                frame.extend_from_slice(&msg);
                frame.push(b'\n');
            }
        }
        for (d, conn) in conns.iter_mut().enumerate() {
            let ok = match conn {
                Conn::Udp => {
                    batch.push((msg.clone(), d));
                    true
                }
                Conn::Tcp(slot) => write_or_drop(slot, &frame),
                Conn::Tls(slot) => match slot {
                    Some(s) => {
                        let ok = s.write_all(&frame).is_ok();
                        if !ok {
                            *slot = None;
                        }
                        ok
                    }
                    None => false,
                },
            };
            if !ok {
                errors[d] += 1;
                // Reconnect at most every 100 ms (a restarted node comes back).
                if last_retry[d].elapsed() > Duration::from_millis(100) {
                    last_retry[d] = Instant::now();
                    if let Some(c) = connect(args.to[d]) {
                        *conn = c;
                    }
                }
            }
        }
        attempted += 1;
        if batch.len() >= UDP_BATCH {
            send_batch(&udp, &args.to, &mut batch, &mut errors);
        }
    }
    send_batch(&udp, &args.to, &mut batch, &mut errors);
    for conn in &mut conns {
        match conn {
            Conn::Tcp(Some(s)) => {
                let _ = s.flush();
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Conn::Tls(Some(s)) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            _ => {}
        }
    }
    finish(
        &args,
        run_id,
        attempted,
        errors,
        Vec::new(),
        started,
        started_at,
    )
}

fn finish(
    args: &GenArgs,
    run_id: String,
    attempted: u64,
    errors: Vec<u64>,
    unacknowledged: Vec<u64>,
    started: Instant,
    started_at: String,
) -> anyhow::Result<i32> {
    let manifest = Manifest {
        run_id: run_id.clone(),
        first: args.first,
        count: args.count,
        attempted,
        protocol: args.protocol,
        transport: args.transport,
        destinations: args.to.iter().map(|d| d.to_string()).collect(),
        rate: args.rate,
        size: args.size,
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        send_errors: errors.clone(),
        unacknowledged: unacknowledged.clone(),
    };
    std::fs::write(&args.manifest, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", args.manifest.display()))?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "twinrx gen: run {run_id}: sent {attempted} of {} messages to {} destination(s) in {secs:.2}s ({:.0}/s); send errors {:?}{}",
        args.count,
        args.to.len(),
        attempted as f64 / secs,
        errors,
        if args.protocol == GenProtocol::SnmpInform {
            format!("; informs unacknowledged {}", unacknowledged.len())
        } else {
            String::new()
        }
    );
    Ok(0)
}

/// Datagrams per sendmmsg(2).
const UDP_BATCH: usize = 64;

/// Sends the queued datagrams (`(bytes, destination index)`) with sendmmsg(2); a datagram the
/// kernel refuses is counted as a send error for its destination and skipped.
fn send_batch(
    sock: &UdpSocket,
    dests: &[SocketAddr],
    batch: &mut Vec<(Vec<u8>, usize)>,
    errors: &mut [u64],
) {
    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < batch.len() {
        let rest = &batch[done..];
        let addrs: Vec<Option<SockaddrStorage>> = rest
            .iter()
            .map(|(_, d)| Some(SockaddrStorage::from(dests[*d])))
            .collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|(m, _)| [IoSlice::new(m)]).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(rest.len(), None);
        let cmsgs: [nix::sys::socket::ControlMessage<'_>; 0] = [];
        match sendmmsg(
            sock.as_raw_fd(),
            &mut headers,
            &iovs,
            addrs,
            cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(sent) => match sent.count() {
                0 => {
                    errors[rest[0].1] += 1;
                    done += 1;
                }
                k => done += k,
            },
            Err(_) => {
                errors[rest[0].1] += 1;
                done += 1;
            }
        }
    }
    batch.clear();
}

/// How long until message `i` is due at `rate` per second, if it is not due yet (> 1 ms).
fn due_in(rate: u64, started: Instant, i: u64) -> Option<Duration> {
    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
    let now = Instant::now();
    (due > now + Duration::from_millis(1)).then(|| due - now)
}

/// Sleeps until message `i` is due at `rate` per second (0: no pacing); false once the
/// deadline has passed.
fn pace(rate: u64, started: Instant, i: u64, deadline: Instant) -> bool {
    if rate > 0 {
        if let Some(wait) = due_in(rate, started, i) {
            std::thread::sleep(wait);
        }
    }
    Instant::now() <= deadline
}

fn write_or_drop(slot: &mut Option<TcpStream>, frame: &[u8]) -> bool {
    match slot {
        Some(s) => {
            if s.write_all(frame).is_ok() {
                true
            } else {
                *slot = None;
                false
            }
        }
        None => false,
    }
}
