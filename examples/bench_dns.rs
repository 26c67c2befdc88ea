//! `bench_dns`: the in-process DNS server (`mxpipe::dnsserver`) serving a generated benchmark
//! world, and the writer of the burst file, for `perf/delivery.sh`.
//!
//! ```sh
//! cargo run --release --example bench_dns -- --domains 500 --addresses 64 --kind starttls
//! cargo run --release --example bench_dns -- --domains 500 --all-to 127.0.0.1 --kind plain
//! cargo run --release --example bench_dns -- --domains 500 --write-burst burst.jsonl --messages 20000 --size 2048
//! ```
//!
//! Domains are `d{i}.bench.test`, each with one MX `{prefix}mx{i}.bench.test` (prefix by
//! `--kind`: `starttls-`, `smtps-`, none, or a third each for `mixed`), whose A record is one
//! of `--addresses` loopback addresses 127.1.x.y (the same formula as `mxpipe demo`: domain i
//! gets address i mod K, numbered from 127.1.0.1; `--mx-ip-base 127.7` numbers them from
//! 127.7.0.1 instead), or `--all-to IP` for every host.
//!
//! Serving: prints `dns 127.0.0.1:PORT` as its first stdout line, then runs until SIGTERM,
//! SIGINT or `--max-secs` (default 600). With `--write-burst` (and no `--serve`) it only writes
//! the burst: M JSON lines `{"id","from","to":["u{m}@d{m % N}.bench.test"],"data"}` of about
//! `--size` bytes of message each, and exits.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Starttls,
    Smtps,
    Plain,
    Mixed,
}

#[derive(Parser, Debug)]
#[command(about = "DNS server and burst writer for perf/delivery.sh")]
struct Args {
    /// Destination domains d0.bench.test … d{N-1}.bench.test.
    #[arg(long, default_value_t = 500)]
    domains: usize,
    /// Loopback addresses 127.B.x.y the MX hosts are spread over.
    #[arg(long, default_value_t = 64)]
    addresses: usize,
    /// MX host name prefix: starttls- (mandatory STARTTLS), smtps- (implicit TLS), plain
    /// (opportunistic), or mixed (a third each).
    #[arg(long, value_enum, default_value_t = Kind::Starttls)]
    kind: Kind,
    /// First two octets of the MX addresses, 127.B (127.1 is the demo's formula); another B
    /// keeps a benchmark's addresses apart from others on the same machine.
    #[arg(long, default_value = "127.1")]
    mx_ip_base: String,
    /// Where the DNS server listens (UDP and TCP); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    dns_listen: SocketAddr,
    /// Give every MX host this address instead (e.g. 127.0.0.1).
    #[arg(long)]
    all_to: Option<Ipv4Addr>,
    /// Stop serving after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    /// Print the transport map (`d{i}.bench.test smtp:[IP]:PORT`) for Postfix to this file.
    #[arg(long)]
    write_transport: Option<PathBuf>,
    /// Port written in the transport map entries.
    #[arg(long, default_value_t = 25)]
    transport_port: u16,
    /// Write the burst (JSON lines for `mxpipe send`) to this file.
    #[arg(long)]
    write_burst: Option<PathBuf>,
    /// Messages in the burst.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Approximate bytes of each message.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Envelope sender of the burst.
    #[arg(long, default_value = "sender@mxpipe.localhost")]
    from: String,
    /// Serve DNS even when writing files (by default writing files means no serving).
    #[arg(long)]
    serve: bool,
}

/// The i-th MX address: 127.B.0.1, 127.B.0.2, … (with B = 1 as `address()` in src/demo.rs).
fn address(base: u8, i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(127, base, (n >> 8) as u8, (n & 0xff) as u8)
}

/// B of `--mx-ip-base 127.B`.
fn ip_base(a: &Args) -> Result<u8, String> {
    a.mx_ip_base
        .strip_prefix("127.")
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| format!("--mx-ip-base {}: expected 127.B (a loopback /16, e.g. 127.1)", a.mx_ip_base))
}

fn mx_name(kind: Kind, i: usize) -> String {
    let prefix = match kind {
        Kind::Starttls => "starttls-",
        Kind::Smtps => "smtps-",
        Kind::Plain => "",
        Kind::Mixed => ["starttls-", "smtps-", ""][i % 3],
    };
    format!("{prefix}mx{i}.bench.test")
}

fn host_ip(a: &Args, i: usize) -> Ipv4Addr {
    a.all_to.unwrap_or_else(|| address(ip_base(a).unwrap_or(1), i % a.addresses.max(1)))
}

fn write_burst(a: &Args, path: &PathBuf) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::new(f);
    for m in 0..a.messages {
        let to = vec![format!("u{m}@d{}.bench.test", m % a.domains)];
        let data = mxpipe::demo::message(m, &a.from, &to, a.size);
        let line = serde_json::json!({
            "id": format!("b{m}"),
            "from": a.from,
            "to": to,
            "data": String::from_utf8_lossy(&data),
        });
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

fn write_transport(a: &Args, path: &PathBuf) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..a.domains {
        writeln!(w, "d{i}.bench.test smtp:[{}]:{}", host_ip(a, i), a.transport_port)?;
    }
    w.flush()
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(a) {
        eprintln!("bench_dns: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    if a.domains == 0 || a.addresses == 0 {
        return Err("--domains and --addresses must be at least 1".into());
    }
    ip_base(&a)?;
    if a.all_to.is_none() && a.addresses > 65_000 {
        return Err("--addresses: at most 65000".into());
    }
    let mut wrote = false;
    if let Some(p) = &a.write_burst {
        write_burst(&a, p).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        wrote = true;
    }
    if let Some(p) = &a.write_transport {
        write_transport(&a, p).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        wrote = true;
    }
    if wrote && !a.serve {
        return Ok(());
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut zone = ZoneBuilder::new("bench.test.");
        for i in 0..a.domains {
            let host = mx_name(a.kind, i);
            zone.mx(&format!("d{i}.bench.test"), 10, &host);
            zone.a(&host, host_ip(&a, i));
        }
        let dns = DnsServer::start(vec![zone], a.dns_listen).await.map_err(|e| format!("cannot start the DNS server: {e}"))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "dns {}", dns.addr()).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = tokio::time::sleep(Duration::from_secs(a.max_secs)) => { eprintln!("bench_dns: --max-secs reached"); }
        }
        let q = dns.queries();
        dns.shutdown().await;
        eprintln!("bench_dns: answered {q} queries");
        Ok(())
    })
}
