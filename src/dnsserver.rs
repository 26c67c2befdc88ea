//! An in-process authoritative DNS server for tests and `mxpipe demo`.
//!
//! Resolution code is only trustworthy when it has met a real DNS server over real sockets:
//! truncation, REFUSED, NXDOMAIN against NODATA and TTLs all look different on the wire than
//! in a mock. This module serves zones we generate ([`ZoneBuilder`]) with hickory-server, on
//! UDP and TCP of the *same* loopback port (a resolver that falls back to TCP expects that),
//! and counts the queries it answers so that tests can prove caching and single flight.
//!
//! What it does not do: recursion, zone transfers, dynamic updates. A name outside every
//! zone is REFUSED (hickory's behaviour), which tests use as a temporary DNS failure.
//!
//! DNSSEC: a signed zone ([`ZoneBuilder::dnssec`]) can also serve *bogus* data on purpose,
//! one RRset whose signatures fail ([`ZoneBuilder::bogus`]) or a whole zone whose published
//! anchor is not its key ([`ZoneBuilder::dnssec_unanchored`]), so that tests can prove a
//! validating resolver refuses it. The anchors go to a resolver in memory
//! ([`DnsServer::trust_anchors`]) or as a file ([`DnsServer::write_trust_anchors`]) that
//! [`crate::dnssec`] and unbound both read.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::dnssec::crypto::EcdsaSigningKey;
use hickory_server::proto::dnssec::rdata::{DNSSECRData, DNSKEY, DS, RRSIG};
use hickory_server::proto::dnssec::{Algorithm, DigestType, DnssecSigner, PublicKeyBuf, SigningKey, TrustAnchors};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, NS, SOA, TLSA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// TTL of records added without an explicit one, unless [`ZoneBuilder::ttl`] changes it.
pub const DEFAULT_TTL: u32 = 300;

/// How long an idle TCP client may keep a connection to the server.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times [`DnsServer::start`] looks for a port free on both UDP and TCP.
const BIND_ATTEMPTS: usize = 20;

/// The records of one zone, built up before the server starts.
///
/// Names are absolute, with or without the trailing dot (`"mx1.example.test"`); each must lie
/// inside the zone's origin. A name that fails to parse is remembered and reported by
/// [`DnsServer::start`], so that the builder methods can chain.
#[derive(Debug, Clone)]
pub struct ZoneBuilder {
    origin: Result<Name, String>,
    ttl: u32,
    records: Vec<Record>,
    errors: Vec<String>,
    signed: bool,
    /// Publish a key other than the zone's as its anchor ([`ZoneBuilder::dnssec_unanchored`]).
    unanchored: bool,
    /// RRsets whose signatures are corrupted after signing ([`ZoneBuilder::bogus`]).
    bogus: Vec<(Name, RecordType)>,
}

impl ZoneBuilder {
    /// A zone at `origin` (e.g. `"test."`) with a made-up SOA and NS, and no other records.
    pub fn new(origin: &str) -> Self {
        let origin = parse_name(origin);
        ZoneBuilder {
            origin,
            ttl: DEFAULT_TTL,
            records: Vec::new(),
            errors: Vec::new(),
            signed: false,
            unanchored: false,
            bogus: Vec::new(),
        }
    }

    /// The zone's origin, as given (lowercase, absolute), or the parse error.
    pub fn origin(&self) -> Result<&Name, &str> {
        self.origin.as_ref().map_err(String::as_str)
    }

    /// Default TTL, in seconds, of the records added after this call. The SOA and NS (and the
    /// SOA minimum, which bounds negative caching) take the last value set.
    pub fn ttl(mut self, secs: u32) -> Self {
        self.ttl = secs;
        self
    }

    /// Sign the zone (DNSSEC, ECDSA P-256 key generated at start, NSEC denial of existence).
    /// The public key is in [`DnsServer::trust_anchors`], for a validating resolver.
    pub fn dnssec(mut self) -> Self {
        self.signed = true;
        self
    }

    /// Sign the zone as [`ZoneBuilder::dnssec`] does, but publish another, freshly generated
    /// key as its anchor ([`DnsServer::trust_anchors`], [`DnsServer::write_trust_anchors`]):
    /// every answer from the zone is then bogus to a resolver that trusts those anchors, as
    /// when a zone's key was rolled without telling the resolver.
    pub fn dnssec_unanchored(mut self) -> Self {
        self.signed = true;
        self.unanchored = true;
        self
    }

    /// Serve the `record_type` RRset of `name` with signatures that do not verify (each
    /// RRSIG's signature has one bit flipped after signing; the RRset, the NSEC chain and the
    /// DNSKEY are intact): a validating resolver must call that RRset bogus and the rest of the
    /// zone secure. [`DnsServer::start`] fails when the zone is not signed or the RRset does
    /// not exist.
    pub fn bogus(&mut self, name: &str, record_type: RecordType) -> &mut Self {
        match parse_name(name) {
            Ok(name) => self.bogus.push((name, record_type)),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// `domain MX pref host` with the current default TTL.
    pub fn mx(&mut self, domain: &str, pref: u16, host: &str) -> &mut Self {
        self.mx_with_ttl(domain, pref, host, self.ttl)
    }

    /// `domain MX pref host` with an explicit TTL.
    pub fn mx_with_ttl(&mut self, domain: &str, pref: u16, host: &str, ttl: u32) -> &mut Self {
        match parse_name(host) {
            Ok(exchange) => self.push(domain, ttl, RData::MX(MX::new(pref, exchange))),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// The null MX of RFC 7505 (`domain MX 0 .`): the domain accepts no mail.
    pub fn null_mx(&mut self, domain: &str) -> &mut Self {
        self.push(domain, self.ttl, RData::MX(MX::new(0, Name::root())));
        self
    }

    /// `host A ip` with the current default TTL.
    pub fn a(&mut self, host: &str, ip: Ipv4Addr) -> &mut Self {
        self.a_with_ttl(host, ip, self.ttl)
    }

    /// `host A ip` with an explicit TTL.
    pub fn a_with_ttl(&mut self, host: &str, ip: Ipv4Addr, ttl: u32) -> &mut Self {
        self.push(host, ttl, RData::A(A(ip)));
        self
    }

    /// `host AAAA ip` with the current default TTL.
    pub fn aaaa(&mut self, host: &str, ip: Ipv6Addr) -> &mut Self {
        self.aaaa_with_ttl(host, ip, self.ttl)
    }

    /// `host AAAA ip` with an explicit TTL.
    pub fn aaaa_with_ttl(&mut self, host: &str, ip: Ipv6Addr, ttl: u32) -> &mut Self {
        self.push(host, ttl, RData::AAAA(AAAA(ip)));
        self
    }

    /// `name TXT value` with the current default TTL. A value longer than 255 bytes is split
    /// into several character-strings, as a zone file would have to write it; resolvers
    /// (and [`crate::resolve::MxResolver::txt`]) join them again.
    pub fn txt(&mut self, name: &str, value: &str) -> &mut Self {
        self.txt_with_ttl(name, value, self.ttl)
    }

    /// `name TXT value` with an explicit TTL (see [`ZoneBuilder::txt`]).
    pub fn txt_with_ttl(&mut self, name: &str, value: &str, ttl: u32) -> &mut Self {
        let strings: Vec<&[u8]> = if value.is_empty() { vec![&[][..]] } else { value.as_bytes().chunks(255).collect() };
        self.push(name, ttl, RData::TXT(TXT::from_bytes(strings)));
        self
    }

    /// `name TLSA usage selector matching data` (RFC 6698) with the current default TTL, e.g.
    /// `tlsa("_25._tcp.mx1.example.test", 3, 1, 1, &sha256_of_spki)`. Values outside the
    /// registered ones are served as given, so tests can publish unusable records.
    pub fn tlsa(&mut self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> &mut Self {
        self.tlsa_with_ttl(name, usage, selector, matching, data, self.ttl)
    }

    /// `name TLSA …` with an explicit TTL (see [`ZoneBuilder::tlsa`]).
    pub fn tlsa_with_ttl(&mut self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8], ttl: u32) -> &mut Self {
        let rdata = TLSA::new(usage.into(), selector.into(), matching.into(), data.to_vec());
        self.push(name, ttl, RData::TLSA(rdata));
        self
    }

    fn push(&mut self, owner: &str, ttl: u32, rdata: RData) {
        match parse_name(owner) {
            Ok(name) => self.records.push(Record::from_rdata(name, ttl, rdata)),
            Err(e) => self.errors.push(e),
        }
    }

    /// The zone handler hickory serves, with SOA and NS first, signed if asked; and the
    /// zone's public key when it is signed.
    fn build(self) -> io::Result<BuiltZone> {
        let origin = self.origin.map_err(invalid)?;
        if let Some(e) = self.errors.into_iter().next() {
            return Err(invalid(e));
        }
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            self.signed.then_some(NxProofKind::Nsec),
        );
        let ns = origin.prepend_label("ns").map_err(|e| invalid(e.to_string()))?;
        let hostmaster = origin.prepend_label("hostmaster").map_err(|e| invalid(e.to_string()))?;
        let serial = 1;
        // SOA minimum is the negative-caching TTL (RFC 2308); the zone's TTL is as good as any.
        let soa = SOA::new(ns.clone(), hostmaster, serial, 3600, 600, 86_400, self.ttl);
        let mut all = vec![
            Record::from_rdata(origin.clone(), self.ttl, RData::SOA(soa)),
            Record::from_rdata(origin.clone(), self.ttl, RData::NS(NS(ns))),
        ];
        all.extend(self.records);
        for record in all {
            if !origin.zone_of(&record.name) {
                return Err(invalid(format!("{} is outside zone {origin}", record.name)));
            }
            let desc = format!("{} {}", record.name, record.record_type());
            if !zone.upsert_mut(record, serial) {
                return Err(invalid(format!("zone {origin} rejected record {desc}")));
            }
        }
        if !self.signed && !self.bogus.is_empty() {
            return Err(invalid(format!("zone {origin}: bogus RRsets need a signed zone (ZoneBuilder::dnssec)")));
        }
        let public_key = if self.signed {
            let key = sign(&mut zone, &origin)?;
            for (name, record_type) in &self.bogus {
                corrupt_signatures(&mut zone, name, *record_type)?;
            }
            // The anchor published for an unanchored zone: a key nobody signs with.
            Some(if self.unanchored { generate_key(&origin)?.to_public_key().map_err(|e| dnssec_error(&origin, e))? } else { key })
        } else {
            None
        };
        Ok(BuiltZone { origin: LowerName::new(&origin), zone, public_key })
    }
}

/// Flip one bit in the signature of every RRSIG covering `name`'s `record_type` RRset, after
/// signing: the records stay as they were, only their proof fails.
fn corrupt_signatures(zone: &mut InMemoryZoneHandler<TokioRuntimeProvider>, name: &Name, record_type: RecordType) -> io::Result<()> {
    let key = RrKey::new(LowerName::new(name), record_type);
    let Some(rrset) = zone.records_get_mut().get_mut(&key) else {
        return Err(invalid(format!("bogus {name} {record_type}: no such RRset in the zone")));
    };
    let rrset = Arc::make_mut(rrset);
    let mut rrsigs = Vec::with_capacity(rrset.rrsigs().len());
    for record in rrset.rrsigs() {
        let RData::DNSSEC(DNSSECRData::RRSIG(sig)) = &record.data else {
            return Err(invalid(format!("bogus {name} {record_type}: unexpected record among the RRSIGs")));
        };
        let mut bytes = sig.sig().to_vec();
        let Some(last) = bytes.last_mut() else { return Err(invalid(format!("bogus {name} {record_type}: empty signature"))) };
        *last ^= 1;
        let rdata = RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(sig.input().clone(), bytes)));
        let mut bad = record.clone();
        bad.data = rdata;
        rrsigs.push(bad);
    }
    if rrsigs.is_empty() {
        return Err(invalid(format!("bogus {name} {record_type}: the RRset has no signatures")));
    }
    rrset.set_rrsigs(rrsigs);
    Ok(())
}

/// A zone ready to serve.
struct BuiltZone {
    origin: LowerName,
    zone: InMemoryZoneHandler<TokioRuntimeProvider>,
    /// The key published as the zone's anchor: its own, or a stranger for an unanchored zone.
    public_key: Option<PublicKeyBuf>,
}

/// How long the zone's signatures stay valid; tests and demos are much shorter.
const SIGNATURE_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

/// Generate a key, add its DNSKEY to the zone, sign every RRset and build the NSEC chain.
/// One key serves as both KSK and ZSK, as it may in a zone nobody delegates to.
fn sign(zone: &mut InMemoryZoneHandler<TokioRuntimeProvider>, origin: &Name) -> io::Result<PublicKeyBuf> {
    let dnssec_err = |e| dnssec_error(origin, e);
    let key = generate_key(origin)?;
    let public_key = key.to_public_key().map_err(dnssec_err)?;
    let dnskey = DNSKEY::from_key(&public_key);
    let signer = DnssecSigner::new(dnskey, Box::new(key), origin.clone(), SIGNATURE_VALIDITY);
    zone.add_zone_signing_key_mut(signer).map_err(dnssec_err)?;
    zone.secure_zone_mut().map_err(dnssec_err)?;
    Ok(public_key)
}

/// A fresh ECDSA P-256 key for `origin`.
fn generate_key(origin: &Name) -> io::Result<EcdsaSigningKey> {
    let algorithm = Algorithm::ECDSAP256SHA256;
    let pkcs8 = EcdsaSigningKey::generate_pkcs8(algorithm).map_err(|e| dnssec_error(origin, e))?;
    EcdsaSigningKey::from_pkcs8(&pkcs8, algorithm).map_err(|e| dnssec_error(origin, e))
}

fn dnssec_error(origin: &Name, e: hickory_server::proto::dnssec::DnsSecError) -> io::Error {
    io::Error::other(format!("DNSSEC signing of {origin}: {e}"))
}

/// Parse an absolute name, adding the trailing dot when it is missing, lowercased.
fn parse_name(s: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(s).map_err(|e| format!("invalid DNS name {s:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Wraps the catalog to count the requests it answers.
struct CountingHandler {
    catalog: Catalog,
    /// Child zone origin → a catalog of its parent zone alone, for DS queries at the apex.
    ds: HashMap<LowerName, Catalog>,
    queries: Arc<AtomicU64>,
}

/// Delegate each zone that lies inside another of `zones` from the closest such parent: an
/// NS record at the child's origin in the parent (before signing, so a signed parent's NSEC
/// chain proves that the delegation has no DS). A validating resolver then finds an unsigned
/// child *insecure*, not bogus, and a signed child can be anchored on its own key. Returns
/// (child, parent) origins.
fn delegate(zones: &mut [ZoneBuilder]) -> Vec<(LowerName, LowerName)> {
    let origins: Vec<Option<Name>> = zones.iter().map(|z| z.origin.as_ref().ok().cloned()).collect();
    let mut pairs = Vec::new();
    for (ci, child) in origins.iter().enumerate() {
        let Some(child) = child else { continue };
        let parent = origins
            .iter()
            .enumerate()
            .filter_map(|(pi, p)| p.as_ref().map(|p| (pi, p)))
            .filter(|(pi, p)| *pi != ci && *p != child && p.zone_of(child))
            .max_by_key(|(_, p)| p.num_labels());
        let Some((pi, parent)) = parent else { continue };
        match child.prepend_label("ns") {
            Ok(ns) => zones[pi].records.push(Record::from_rdata(child.clone(), zones[pi].ttl, RData::NS(NS(ns)))),
            Err(e) => zones[pi].errors.push(e.to_string()),
        }
        pairs.push((LowerName::new(child), LowerName::new(parent)));
    }
    pairs
}

// `RequestHandler` is declared with `#[async_trait]`; mxpipe does not depend on the
// async-trait crate, so this is the method that macro would generate, written out.
impl RequestHandler for CountingHandler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Ok(info) = request.request_info() {
            if info.query.query_type() == RecordType::DS {
                if let Some(parent) = self.ds.get(info.query.name()) {
                    return parent.handle_request::<R, T>(request, response_handle);
                }
            }
        }
        self.catalog.handle_request::<R, T>(request, response_handle)
    }
}

/// How [`DnsServer::write_trust_anchors`] writes each anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorFormat {
    /// The zone's key itself (`DNSKEY` records).
    Dnskey,
    /// A SHA-256 digest of the key (`DS` records), as a parent zone would publish it.
    Ds,
}

/// A running authoritative server on one loopback address, UDP and TCP on the same port.
pub struct DnsServer {
    addr: SocketAddr,
    anchors: Arc<TrustAnchors>,
    /// The same anchors as a list, in zone order, for [`DnsServer::write_trust_anchors`].
    anchor_keys: Vec<(Name, PublicKeyBuf)>,
    queries: Arc<AtomicU64>,
    server: Server<CountingHandler>,
}

impl DnsServer {
    /// Serve `zones` on `bind` (UDP and TCP). Port 0 picks a port free for both protocols.
    ///
    /// Fails with `InvalidInput` when a zone is malformed (bad name, record outside its zone)
    /// and with the socket error when the address cannot be bound.
    pub async fn start(zones: Vec<ZoneBuilder>, bind: SocketAddr) -> io::Result<DnsServer> {
        let mut zones = zones;
        let parents = delegate(&mut zones);
        let mut catalog = Catalog::new();
        let mut anchors = TrustAnchors::empty();
        let mut anchor_keys = Vec::new();
        let mut handlers: Vec<(LowerName, Arc<dyn ZoneHandler>)> = Vec::new();
        for zone in zones {
            let built = zone.build()?;
            if let Some(key) = &built.public_key {
                anchors.insert_with_name(key, built.origin.clone());
                anchor_keys.push((Name::from(&built.origin), key.clone()));
            }
            let handler: Arc<dyn ZoneHandler> = Arc::new(built.zone);
            handlers.push((built.origin.clone(), handler.clone()));
            catalog.upsert(built.origin, vec![handler]);
        }
        // DS at a child's apex is the parent's to answer (RFC 4035 §3.1.4.1).
        let mut ds = HashMap::new();
        for (child, parent) in parents {
            if let Some((origin, handler)) = handlers.iter().find(|(o, _)| *o == parent) {
                let mut c = Catalog::new();
                c.upsert(origin.clone(), vec![handler.clone()]);
                ds.insert(child, c);
            }
        }
        let (udp, tcp) = bind_pair(bind).await?;
        let addr = udp.local_addr()?;
        let queries = Arc::new(AtomicU64::new(0));
        let mut server = Server::new(CountingHandler { catalog, ds, queries: queries.clone() });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64);
        Ok(DnsServer { addr, anchors: Arc::new(anchors), anchor_keys, queries, server })
    }

    /// The address (UDP and TCP) the server answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The public keys of the signed zones ([`ZoneBuilder::dnssec`]), each bound to its zone
    /// and without the root keys: give it to a validating resolver
    /// (`ResolverConfig::trust_anchor`) so that answers from those zones are secure.
    pub fn trust_anchors(&self) -> Arc<TrustAnchors> {
        self.anchors.clone()
    }

    /// Write the anchors of [`DnsServer::trust_anchors`] to `path` as zone-file lines that
    /// [`crate::dnssec::load`] (`--trust-anchors`) and unbound's `trust-anchor-file` read:
    /// one `zone. 3600 IN DNSKEY 257 3 13 <base64>` per signed zone, or with
    /// [`AnchorFormat::Ds`] `zone. 3600 IN DS <tag> 13 2 <sha-256 hex>`.
    pub fn write_trust_anchors(&self, path: &std::path::Path, format: AnchorFormat) -> io::Result<()> {
        let mut out = String::from("; trust anchors of mxpipe's test DNS server\n");
        for (origin, key) in &self.anchor_keys {
            let dnskey = DNSKEY::from_key(key);
            match format {
                AnchorFormat::Dnskey => out.push_str(&format!("{origin} 3600 IN DNSKEY {dnskey}\n")),
                AnchorFormat::Ds => {
                    let ds = DS::from_key(key, origin, DigestType::SHA256).map_err(|e| dnssec_error(origin, e))?;
                    out.push_str(&format!("{origin} 3600 IN DS {ds}\n"));
                }
            }
        }
        std::fs::write(path, out)
    }

    /// How many DNS requests the server has answered (any type, either protocol).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Stop accepting requests and wait for the server's tasks to end.
    pub async fn shutdown(mut self) {
        // Errors here are about sockets that are being closed anyway.
        let _ = self.server.shutdown_gracefully().await;
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer").field("addr", &self.addr).field("queries", &self.queries()).finish()
    }
}

/// Ask for a 4 MiB UDP receive buffer (the kernel caps it at `net.core.rmem_max`). A burst
/// engine resolves hundreds of domains at once, four queries each; with the default buffer
/// (208 KiB, a few hundred datagrams) the kernel dropped queries whenever the server's thread
/// was busy (`UdpRcvbufErrors`), and each drop cost the sender its resolver timeout (5 s) on
/// that domain: one such drop made a 1.1 s benchmark burst take 5.3 s. Failure to grow the
/// buffer is not an error (the server still works, as before). `SO_RCVBUFFORCE` (root, or
/// CAP_NET_ADMIN) passes the cap; otherwise `SO_RCVBUF` gets what `rmem_max` allows.
fn grow_receive_buffer(udp: &UdpSocket) {
    use std::os::fd::AsRawFd;
    const SIZE: libc::c_int = 4 << 20;
    let set = |opt: libc::c_int| {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live constant; the fd is
        // the socket's own and outlives the call.
        unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SIZE as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(libc::SO_RCVBUFFORCE) {
        set(libc::SO_RCVBUF);
    }
}

/// Bind UDP, then TCP on the port UDP got. With port 0 the TCP port may be taken by
/// someone else; then start over with a fresh UDP port.
async fn bind_pair(bind: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(bind).await?;
        grow_receive_buffer(&udp);
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if bind.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnssec::{self, AnchorData};

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    #[tokio::test]
    async fn bogus_needs_a_signed_zone_and_an_existing_rrset() {
        let mut z = ZoneBuilder::new("plain.test.");
        z.a("a.plain.test", Ipv4Addr::LOCALHOST).bogus("a.plain.test", RecordType::A);
        let e = DnsServer::start(vec![z], loopback()).await.unwrap_err();
        assert!(e.to_string().contains("signed zone"), "{e}");
        let mut z = ZoneBuilder::new("signed.test.").dnssec();
        z.a("a.signed.test", Ipv4Addr::LOCALHOST).bogus("a.signed.test", RecordType::MX);
        let e = DnsServer::start(vec![z], loopback()).await.unwrap_err();
        assert!(e.to_string().contains("no such RRset"), "{e}");
    }

    #[tokio::test]
    async fn written_anchors_are_the_published_keys_in_both_formats() {
        let zones = vec![ZoneBuilder::new("one.test.").dnssec(), ZoneBuilder::new("plain.test."), ZoneBuilder::new("two.test.").dnssec()];
        let server = DnsServer::start(zones, loopback()).await.unwrap();
        let dir = std::env::temp_dir().join(format!("mxpipe-dnsserver-anchors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (keys, ds) = (dir.join("keys"), dir.join("ds"));
        server.write_trust_anchors(&keys, AnchorFormat::Dnskey).unwrap();
        server.write_trust_anchors(&ds, AnchorFormat::Ds).unwrap();
        let keys = dnssec::read(&keys).unwrap();
        let ds = dnssec::read(&ds).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let owners = |r: &[dnssec::AnchorRecord]| r.iter().map(|r| r.owner.to_string()).collect::<Vec<_>>();
        assert_eq!(owners(&keys), ["one.test.", "two.test."]);
        assert_eq!(owners(&ds), ["one.test.", "two.test."]);
        for (k, d) in keys.iter().zip(&ds) {
            let (AnchorData::Dnskey(k), AnchorData::Ds(d)) = (&k.data, &d.data) else { panic!("{k:?} {d:?}") };
            assert!(server.trust_anchors().contains_with_name(k.public_key(), &LowerName::new(&d_owner(&ds, d))));
            assert!(d.covers(&d_owner(&ds, d), k).unwrap(), "the DS line is the digest of the DNSKEY line");
        }
        server.shutdown().await;
    }

    /// A burst of queries that arrives while the server's thread is busy waits in the socket's
    /// buffer instead of being dropped: here the server cannot run at all (one-thread runtime)
    /// until 1,500 queries are in, and every one is answered. With the default buffer (208 KiB)
    /// about 300 were.
    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_queries_sent_while_the_server_is_busy_is_answered_whole() {
        const N: u16 = 1500;
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        // SAFETY: geteuid has no arguments and cannot fail.
        if rmem_max < 2 << 20 && unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: net.core.rmem_max is {rmem_max} and this is not root, so no UDP buffer can hold the burst");
            return;
        }
        let mut z = ZoneBuilder::new("t.test.");
        z.a("a.t.test", Ipv4Addr::LOCALHOST);
        let server = DnsServer::start(vec![z], loopback()).await.unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let reader = client.try_clone().unwrap();
        // Answers are read on their own thread as they come, so the client's buffer is not
        // what is tested.
        let answers = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 512];
            while seen.len() < N as usize {
                match reader.recv(&mut buf) {
                    Ok(n) if n >= 12 => {
                        seen.insert(u16::from_be_bytes([buf[0], buf[1]]));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            seen.len()
        });
        for id in 0..N {
            // Header (id, RD, one question), then a.t.test. A IN: written by hand, the
            // smallest well-formed query.
            let mut q = Vec::with_capacity(32);
            q.extend_from_slice(&id.to_be_bytes());
            q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
            for label in ["a", "t", "test"] {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            client.send_to(&q, server.addr()).unwrap();
        }
        // Now let the server run until it has answered them all (or the reader gives up).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !answers.is_finished() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answered = answers.join().unwrap();
        assert_eq!(answered, N as usize, "queries answered of {N} sent in one burst (server answered {})", server.queries());
        server.shutdown().await;
    }

    fn d_owner(all: &[dnssec::AnchorRecord], d: &DS) -> Name {
        all.iter().find(|r| matches!(&r.data, AnchorData::Ds(x) if x == d)).unwrap().owner.clone()
    }
}
