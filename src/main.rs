//! `twinrx`: the one binary of the product. `main` parses the command line and calls
//! `run()`; every error reaches the user as one message with its causes (`{:#}`).

use twinrx::{check, client, config, gen, journal_cmd, keys, lab, node, witness};

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "twinrx",
    version,
    about = "Two-node, lossless receiver appliance for syslog and SNMP traps",
    long_about = "twinrx receives syslog and SNMP traps on two nodes, journals every message, \
                  and publishes one merged, de-duplicated stream.\n\n\
                  Start a node with `twinrx node --config FILE`; see README.md and docs/."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a TOML config (see docs/config.md).
    Node {
        /// The node's config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the witness: the pair's third voter (stores only its vote and the highest
    /// committed stream position; holds no data). See docs/config.md "Witness config".
    #[command(
        long_about = "Run the witness: the third voter of a pair. Promotion needs a \
                  majority of {node a, node b, witness}; the witness stores only the epoch it \
                  voted for and the highest committed (epoch, offset) it has heard of, in \
                  DATA_DIR/witness.json (fsynced before it answers). It holds no data and may \
                  run on any small host.\n\n\
                  Nodes connect to `listen` (default 0.0.0.0:7402) over the cluster link: TLS \
                  1.3, where the witness shows its certificate and accepts only node a's and \
                  node b's (`ca_file`, `cert_file`, `key_file`; `twinrx keys`). `admin_listen` \
                  (default 127.0.0.1:7403) serves GET /status (JSON) and GET /metrics. \
                  SIGTERM or SIGINT stops it (exit 0). Every config key is in docs/config.md, \
                  \"Witness config\"; an example is deploy/examples/witness.toml."
    )]
    Witness {
        /// The witness's config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show a node's role, journal, stream and receivers, and the next step to take.
    Status {
        #[command(flatten)]
        target: client::Target,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the merged stream as NDJSON from an offset.
    Tail {
        #[command(flatten)]
        target: client::Target,
        /// First offset to print, or `earliest`: the oldest entry stream retention has kept.
        /// An offset retention has deleted is refused, naming the first one held.
        #[arg(long, default_value_t = client::TailFrom::Earliest)]
        from: client::TailFrom,
        /// Keep printing new entries as they are committed.
        #[arg(long)]
        follow: bool,
    },
    /// Start a local pair and witness on loopback addresses, ready to try out.
    #[command(
        long_about = "Start a local pair and its witness on this machine, for trying twinrx \
                  out: node a on 127.0.0.11, node b on 127.0.0.12, the witness on 127.0.0.13 \
                  (loopback addresses; no root needed). Each node listens for syslog on UDP+TCP \
                  5514 and TLS 6514, SNMP traps on 5162, the cluster link on 7400 and admin \
                  HTTP on 7401; the witness on 7402 (admin 7403).\n\n\
                  The first run writes into DIR the link's CA and certificates (keys/), the \
                  admin token (admin.token), a self-signed syslog TLS certificate (with \
                  openssl, when present), a.toml, b.toml, witness.toml and \
                  data directories; later runs reuse them, data included. The three processes \
                  log to DIR/<name>.log, and DIR/lab.json lists their addresses and pids.\n\n\
                  Once all three answer, the lab prints what to send where and what to try \
                  (status, tail, killing a node, resync, switchover). It does not restart a \
                  process that exits: it says so and how to restart it. Ctrl-C (or SIGTERM) \
                  stops all three and exits 0. If an address is in use (another lab?), it \
                  says which and exits non-zero."
    )]
    Lab(lab::LabArgs),
    /// Planned role swap: the active hands over to the in-sync standby, with no loss and no gap.
    #[command(
        long_about = "Planned role swap (e.g. before maintenance of the active node): asks the \
                  active node (POST /switchover) to stop publishing at a committed stream \
                  position and hand the role to its in-sync standby under a new epoch; the \
                  merged stream continues with no loss and no gap.\n\n\
                  The command then follows GET /status until the node is no longer active and \
                  its peer is, and prints the old and new active, the epoch and the time taken. \
                  Exit 0 when done; 1 when the node refuses (not active, no in-sync standby: \
                  its reason is printed) or the swap does not finish within --timeout-secs; \
                  2 when the node cannot be reached."
    )]
    Switchover {
        #[command(flatten)]
        target: client::Target,
        /// How long to wait for the peer to take over.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Restore redundancy online: rebuild this node's journal copy and stream from its peer.
    #[command(
        long_about = "Restore the pair's redundancy online, after a node lost its data (a new \
                  disk, a wiped or diverged data directory) or fell too far behind: asks the \
                  node (POST /resync) to fetch what it lacks from its peer while the pair keeps \
                  receiving and publishing.\n\n\
                  The command then follows GET /status, printing one line per change of the \
                  resync's phase and progress, until the pair is redundant again. Exit 0 when \
                  redundant; 1 when the node refuses (its reason is printed), the resync fails \
                  or it does not finish within --timeout-secs (it may still be running: see \
                  `twinrx status`); 2 when the node cannot be reached."
    )]
    Resync {
        #[command(flatten)]
        target: client::Target,
        /// How long to follow the resync before giving up (it keeps running on the node).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Send sequence-tokened syslog traffic to one or more nodes, and write a manifest.
    Gen(gen::GenArgs),
    /// Compare a generator manifest with a stream dump: sent / present / missing / duplicated.
    Check(check::CheckArgs),
    /// Make the cluster link's CA and certificates (node a, node b, the witness).
    #[command(
        long_about = "Make the cluster link's credentials. The link runs over TLS 1.3 with a \
                  certificate on both ends: each of node a, node b and the witness has its own, \
                  issued by the pair's own CA, and each accepts only the parties that may speak \
                  to it (replicator/PROTOCOL.md \"Identities\"). `init DIR` makes the CA and \
                  all three; `issue PARTY --ca-key DIR/ca.key` replaces one (rotation). See \
                  docs/operations.md \"Keys\"."
    )]
    Keys {
        #[command(subcommand)]
        command: keys::KeysCmd,
    },
    /// Journal tools.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Read a journal directory fully and check every record's CRC and seq.
    Verify {
        /// A journal directory (e.g. DATA_DIR/journal or DATA_DIR/stream).
        dir: PathBuf,
        /// Print one JSON object instead of plain lines.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("twinrx: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs a command; the exit code is 0 on success, 1 when a check found a problem.
fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Node { config } => {
            let cfg = config::load(&config)?;
            node::run(cfg)?;
            Ok(0)
        }
        Command::Witness { config } => {
            witness::run(&config)?;
            Ok(0)
        }
        Command::Status { target, json } => client::status(&target, json),
        Command::Tail {
            target,
            from,
            follow,
        } => client::tail(&target, from, follow),
        Command::Lab(args) => lab::run(args),
        Command::Switchover {
            target,
            timeout_secs,
        } => client::switchover(&target, timeout_secs),
        Command::Resync {
            target,
            timeout_secs,
        } => client::resync(&target, timeout_secs),
        Command::Gen(args) => gen::run(args),
        Command::Check(args) => check::run(args),
        Command::Keys { command } => keys::run(command),
        Command::Journal {
            command: JournalCommand::Verify { dir, json },
        } => journal_cmd::verify(&dir, json),
    }
}
