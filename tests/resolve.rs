//! MX resolution against a real authoritative DNS server on loopback
//! (`mxpipe::dnsserver::DnsServer`): ordering, null MX, NXDOMAIN, implicit MX, missing
//! addresses, temporary failures, caching, TTL expiry, single flight and volume.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::resolve::{Destination, MxResolver, ResolveError, ResolverConfig, RouteKind, TrustAnchors};

const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Every test body runs under this bound.
async fn bounded<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body).await.expect("test timed out");
}

fn config(server: &DnsServer) -> ResolverConfig {
    ResolverConfig { nameserver: Some(server.addr()), timeout: Duration::from_secs(2), attempts: 1, ..ResolverConfig::default() }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// The zone most tests use.
fn test_zone() -> ZoneBuilder {
    let mut z = ZoneBuilder::new("test.");
    z.mx("ordered.test", 20, "mx20.ordered.test")
        .mx("ordered.test", 10, "starttls-mx10.ordered.test")
        .mx("ordered.test", 30, "mx30.ordered.test")
        .a("mx20.ordered.test", Ipv4Addr::new(127, 0, 0, 20))
        .a("starttls-mx10.ordered.test", Ipv4Addr::new(127, 0, 0, 10))
        .aaaa("starttls-mx10.ordered.test", Ipv6Addr::LOCALHOST)
        .a("starttls-mx10.ordered.test", Ipv4Addr::new(127, 0, 0, 11))
        .a("mx30.ordered.test", Ipv4Addr::new(127, 0, 0, 30));
    z.mx("equal.test", 10, "a.equal.test")
        .mx("equal.test", 10, "b.equal.test")
        .mx("equal.test", 5, "first.equal.test")
        .a("a.equal.test", Ipv4Addr::new(127, 0, 1, 1))
        .a("b.equal.test", Ipv4Addr::new(127, 0, 1, 2))
        .a("first.equal.test", Ipv4Addr::new(127, 0, 1, 3));
    z.null_mx("nullmx.test");
    z.null_mx("mixednull.test").mx("mixednull.test", 10, "a.equal.test");
    z.a("implicit.test", Ipv4Addr::new(127, 0, 2, 1)).aaaa("implicit.test", "::2".parse().unwrap());
    z.mx("halfaddr.test", 10, "noaddr.halfaddr.test")
        .mx("halfaddr.test", 20, "ok.halfaddr.test")
        .a("ok.halfaddr.test", Ipv4Addr::new(127, 0, 3, 1));
    z.mx("noaddr.test", 10, "ghost1.noaddr.test").mx("noaddr.test", 20, "ghost2.noaddr.test");
    // bare.test exists only as the parent of child.bare.test: NOERROR, no records at all.
    z.a("child.bare.test", Ipv4Addr::new(127, 0, 4, 1));
    z.mx("single.test", 10, "mx.single.test").a("mx.single.test", Ipv4Addr::new(127, 0, 5, 1));
    z
}

async fn start(zones: Vec<ZoneBuilder>) -> DnsServer {
    DnsServer::start(zones, LOOPBACK).await.expect("DNS server starts")
}

fn names(d: &Destination) -> Vec<&str> {
    d.hosts.iter().map(|h| h.name.as_str()).collect()
}

#[tokio::test]
async fn mx_hosts_come_in_preference_order_with_addresses() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let d = r.resolve("Ordered.Test.").await.expect("resolves");
        assert_eq!(d.domain, "ordered.test");
        assert_eq!(d.kind, RouteKind::Mx);
        assert!(!d.from_cache && !d.dnssec);
        assert_eq!(names(&d), ["starttls-mx10.ordered.test", "mx20.ordered.test", "mx30.ordered.test"]);
        assert_eq!(d.hosts.iter().map(|h| h.preference).collect::<Vec<_>>(), [10, 20, 30]);
        // v4 first (both of them), then v6.
        let first = &d.hosts[0].addrs;
        assert_eq!(first.len(), 3);
        assert_eq!(first[..2].iter().copied().collect::<HashSet<_>>(), HashSet::from([v4(127, 0, 0, 10), v4(127, 0, 0, 11)]));
        assert_eq!(first[2], IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(d.hosts[1].addrs, [v4(127, 0, 0, 20)]);
        // One MX query and an A and AAAA query per host.
        assert_eq!(server.queries(), 1 + 3 * 2);
        assert_eq!(r.stats().queries, 7);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn equal_preferences_are_shuffled_on_every_call() {
    bounded(20, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let mut orders = HashSet::new();
        for _ in 0..50 {
            let d = r.resolve("equal.test").await.unwrap();
            assert_eq!(d.hosts[0].name, "first.equal.test", "lower preference always first");
            orders.insert(names(&d)[1..].join(","));
        }
        assert_eq!(orders, HashSet::from(["a.equal.test,b.equal.test".into(), "b.equal.test,a.equal.test".into()]));
        // Only the first call went to DNS; the shuffling happened on cached copies.
        let s = r.stats();
        assert_eq!((s.lookups, s.cache_hits), (50, 49));
    })
    .await;
}

#[tokio::test]
async fn null_mx_is_permanent() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let e = r.resolve("nullmx.test").await.unwrap_err();
        assert_eq!(e, ResolveError::NullMx);
        assert!(e.is_permanent());
        assert_eq!(e.enhanced_code(), "5.1.10");
        // A "." among other MX records is treated as null as well.
        assert_eq!(r.resolve("mixednull.test").await.unwrap_err(), ResolveError::NullMx);
        // Null MX needs no address lookups.
        assert_eq!(server.queries(), 2);
    })
    .await;
}

#[tokio::test]
async fn nxdomain_is_no_such_domain() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let e = r.resolve("does-not-exist.test").await.unwrap_err();
        assert_eq!(e, ResolveError::NoSuchDomain);
        assert!(e.is_permanent());
        assert_eq!(e.enhanced_code(), "5.1.2");
        // Cached as a negative answer.
        assert_eq!(r.resolve("does-not-exist.test").await.unwrap_err(), ResolveError::NoSuchDomain);
        assert_eq!(server.queries(), 1);
        assert_eq!(r.stats().cache_hits, 1);
    })
    .await;
}

#[tokio::test]
async fn domain_without_mx_uses_its_own_addresses() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let d = r.resolve("implicit.test").await.unwrap();
        assert_eq!(d.kind, RouteKind::ImplicitMx);
        assert_eq!(d.hosts.len(), 1);
        assert_eq!(d.hosts[0].name, "implicit.test");
        assert_eq!(d.hosts[0].preference, 0);
        assert_eq!(d.hosts[0].addrs, [v4(127, 0, 2, 1), "::2".parse::<IpAddr>().unwrap()]);
    })
    .await;
}

#[tokio::test]
async fn host_without_address_is_kept_with_no_addrs() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let d = r.resolve("halfaddr.test").await.unwrap();
        assert_eq!(names(&d), ["noaddr.halfaddr.test", "ok.halfaddr.test"]);
        assert!(d.hosts[0].addrs.is_empty());
        assert_eq!(d.hosts[1].addrs, [v4(127, 0, 3, 1)]);
    })
    .await;
}

#[tokio::test]
async fn no_address_anywhere_is_no_address() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let e = r.resolve("noaddr.test").await.unwrap_err();
        assert_eq!(e, ResolveError::NoAddress);
        assert!(!e.is_permanent());
        assert_eq!(e.enhanced_code(), "4.4.3");
        // An existing name (it has a child) with neither MX nor address: implicit MX fails.
        assert_eq!(r.resolve("bare.test").await.unwrap_err(), ResolveError::NoAddress);
    })
    .await;
}

#[tokio::test]
async fn refused_is_temporary_and_cached_briefly() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let e = r.resolve("elsewhere.example").await.unwrap_err();
        assert!(matches!(e, ResolveError::Temporary(_)), "{e:?}");
        assert!(!e.is_permanent());
        assert_eq!(e.enhanced_code(), "4.4.3");
        let before = server.queries();
        assert!(matches!(r.resolve("elsewhere.example").await, Err(ResolveError::Temporary(_))));
        assert_eq!(server.queries(), before, "temporary failure is cached for temp_fail_ttl");
    })
    .await;
}

#[tokio::test]
async fn temporary_failure_expires_after_temp_fail_ttl() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let cfg = ResolverConfig { temp_fail_ttl: Duration::from_millis(300), ..config(&server) };
        let r = MxResolver::new(cfg).unwrap();
        assert!(r.resolve("elsewhere.example").await.is_err());
        let before = server.queries();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(r.resolve("elsewhere.example").await.is_err());
        assert!(server.queries() > before, "expired failure is retried");
    })
    .await;
}

#[tokio::test]
async fn silent_nameserver_times_out_within_the_bound() {
    bounded(10, async {
        // Bound but never read: queries vanish, as with a dead server.
        let silent = std::net::UdpSocket::bind(LOOPBACK).unwrap();
        let cfg = ResolverConfig {
            nameserver: Some(silent.local_addr().unwrap()),
            timeout: Duration::from_millis(300),
            attempts: 2,
            ..ResolverConfig::default()
        };
        let r = MxResolver::new(cfg).unwrap();
        let started = Instant::now();
        let e = r.resolve("anything.test").await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, ResolveError::Temporary(_)), "{e:?}");
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    })
    .await;
}

#[tokio::test]
async fn closed_port_is_temporary() {
    bounded(10, async {
        // Bind and close to get a port nobody listens on (ICMP port unreachable).
        let addr = std::net::UdpSocket::bind(LOOPBACK).unwrap().local_addr().unwrap();
        let cfg = ResolverConfig { nameserver: Some(addr), timeout: Duration::from_millis(300), attempts: 2, ..ResolverConfig::default() };
        let r = MxResolver::new(cfg).unwrap();
        let started = Instant::now();
        let e = r.resolve("anything.test").await.unwrap_err();
        assert!(matches!(e, ResolveError::Temporary(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    })
    .await;
}

#[tokio::test]
async fn invalid_domains_are_rejected_without_queries() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        for bad in ["", ".", "a..b", "-lead.test", "sp ace.test", "[127.0.0.1]", &"x".repeat(64)] {
            let e = r.resolve(bad).await.unwrap_err();
            assert!(matches!(e, ResolveError::InvalidDomain(_)), "{bad:?} gave {e:?}");
            assert!(e.is_permanent());
            assert_eq!(e.enhanced_code(), "5.1.2");
        }
        assert_eq!(server.queries(), 0);
    })
    .await;
}

#[tokio::test]
async fn second_resolve_comes_from_cache() {
    bounded(10, async {
        let server = start(vec![test_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let first = r.resolve("ordered.test").await.unwrap();
        assert!(!first.from_cache);
        let sent = server.queries();
        let second = r.resolve("ORDERED.test").await.unwrap();
        assert!(second.from_cache);
        assert_eq!(second.hosts, first.hosts);
        assert_eq!(server.queries(), sent, "no new queries");
        let s = r.stats();
        assert_eq!((s.lookups, s.cache_hits, s.coalesced, s.queries), (2, 1, 0, sent));
    })
    .await;
}

#[tokio::test]
async fn cache_entry_expires_with_the_ttl() {
    bounded(10, async {
        let mut z = ZoneBuilder::new("test.").ttl(1);
        z.mx("short.test", 10, "mx.short.test").a("mx.short.test", Ipv4Addr::new(127, 0, 6, 1));
        // The shortest TTL of MX and address records wins: the MX has 3600, its A 1.
        z.mx_with_ttl("mixed.test", 10, "mx.mixed.test", 3600).a_with_ttl("mx.mixed.test", Ipv4Addr::new(127, 0, 6, 2), 1);
        let server = start(vec![z]).await;
        let cfg = ResolverConfig { min_ttl: Duration::from_secs(1), ..config(&server) };
        let r = MxResolver::new(cfg).unwrap();
        for domain in ["short.test", "mixed.test"] {
            r.resolve(domain).await.unwrap();
        }
        let sent = server.queries();
        assert!(r.resolve("short.test").await.unwrap().from_cache);
        assert!(r.resolve("mixed.test").await.unwrap().from_cache);
        assert_eq!(server.queries(), sent);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let d = r.resolve("short.test").await.unwrap();
        assert!(!d.from_cache);
        assert_eq!(server.queries(), sent + 3, "MX, A and AAAA asked again");
        assert!(!r.resolve("mixed.test").await.unwrap().from_cache);
        assert_eq!(server.queries(), sent + 6);
    })
    .await;
}

#[tokio::test]
async fn min_ttl_holds_short_records_longer() {
    bounded(10, async {
        let mut z = ZoneBuilder::new("test.").ttl(1);
        z.mx("short.test", 10, "mx.short.test").a("mx.short.test", Ipv4Addr::new(127, 0, 6, 1));
        let server = start(vec![z]).await;
        let cfg = ResolverConfig { min_ttl: Duration::from_secs(5), ..config(&server) };
        let r = MxResolver::new(cfg).unwrap();
        r.resolve("short.test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(r.resolve("short.test").await.unwrap().from_cache);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_send_one_set_of_queries() {
    bounded(20, async {
        let server = start(vec![test_zone()]).await;
        let r = Arc::new(MxResolver::new(config(&server)).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        for _ in 0..100 {
            let r = r.clone();
            let barrier = barrier.clone();
            tasks.spawn(async move {
                barrier.wait().await;
                r.resolve("ordered.test").await
            });
        }
        let mut fresh = 0;
        while let Some(done) = tasks.join_next().await {
            let d = done.unwrap().expect("resolves");
            assert_eq!(d.hosts.len(), 3);
            fresh += usize::from(!d.from_cache);
        }
        // One MX query plus A and AAAA for each of the three hosts.
        assert_eq!(server.queries(), 7);
        let s = r.stats();
        assert_eq!(s.lookups, 100);
        assert_eq!(s.queries, 7);
        assert_eq!(s.coalesced + s.cache_hits, 99, "{s:?}");
        assert_eq!(fresh as u64, 1 + s.coalesced);
    })
    .await;
}

#[tokio::test]
async fn concurrent_misses_on_one_thread_all_coalesce() {
    bounded(20, async {
        let server = start(vec![test_zone()]).await;
        let r = Arc::new(MxResolver::new(config(&server)).unwrap());
        let results = resolve_many(&r, "ordered.test", 100).await;
        assert!(results.iter().all(|d| d.as_ref().is_ok_and(|d| d.hosts.len() == 3)));
        assert_eq!(server.queries(), 7);
        let s = r.stats();
        assert_eq!((s.lookups, s.coalesced, s.cache_hits, s.queries), (100, 99, 0, 7));
    })
    .await;
}

#[tokio::test]
async fn coalesced_callers_share_failures_too() {
    bounded(20, async {
        let server = start(vec![test_zone()]).await;
        let r = Arc::new(MxResolver::new(config(&server)).unwrap());
        let results = resolve_many(&r, "gone.test", 20).await;
        assert!(results.iter().all(|e| e == &Err(ResolveError::NoSuchDomain)));
        assert_eq!(server.queries(), 1);
        assert_eq!(r.stats().coalesced, 19);
    })
    .await;
}

#[tokio::test]
async fn cancelled_leader_does_not_strand_waiters() {
    bounded(20, async {
        // A silent server keeps the first lookup in flight; cancel it while others wait.
        let silent = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
        let cfg = ResolverConfig {
            nameserver: Some(silent.local_addr().unwrap()),
            timeout: Duration::from_millis(400),
            attempts: 1,
            ..ResolverConfig::default()
        };
        let r = Arc::new(MxResolver::new(cfg).unwrap());
        let leader = {
            let r = r.clone();
            tokio::spawn(async move { r.resolve("slow.test").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.resolve("slow.test").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        // The waiter takes over the lookup and gets its own (temporary) answer.
        let e = waiter.await.unwrap().unwrap_err();
        assert!(matches!(e, ResolveError::Temporary(_)), "{e:?}");
        assert_eq!(r.stats().coalesced, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_destinations_resolve() {
    bounded(60, async {
        let mut z = ZoneBuilder::new("bulk.test.");
        for i in 0..500u32 {
            let (y, w) = ((i / 250) as u8, (i % 250) as u8 + 1);
            let host = format!("mx.d{i}.bulk.test");
            z.mx(&format!("d{i}.bulk.test"), 10, &host).a(&host, Ipv4Addr::new(127, 1, y, w));
        }
        let server = start(vec![z]).await;
        let r = Arc::new(MxResolver::new(config(&server)).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        // 50 at a time, like a queue runner would.
        let limit = Arc::new(tokio::sync::Semaphore::new(50));
        for i in 0..500u32 {
            let r = r.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                (i, r.resolve(&format!("d{i}.bulk.test")).await)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, d) = done.unwrap();
            let d = d.unwrap_or_else(|e| panic!("d{i}: {e}"));
            let (y, w) = ((i / 250) as u8, (i % 250) as u8 + 1);
            assert_eq!(d.hosts.len(), 1);
            assert_eq!(d.hosts[0].name, format!("mx.d{i}.bulk.test"));
            assert_eq!(d.hosts[0].addrs, [v4(127, 1, y, w)]);
        }
        assert_eq!(server.queries(), 1500);
        assert_eq!(r.stats().queries, 1500);
    })
    .await;
}

#[tokio::test]
async fn cache_is_bounded() {
    bounded(30, async {
        let mut z = ZoneBuilder::new("test.");
        for i in 0..20 {
            let host = format!("mx.d{i}.test");
            z.mx(&format!("d{i}.test"), 10, &host).a(&host, Ipv4Addr::new(127, 2, 0, i as u8 + 1));
        }
        let server = start(vec![z]).await;
        let cfg = ResolverConfig { max_entries: 5, ..config(&server) };
        let r = MxResolver::new(cfg).unwrap();
        for i in 0..20 {
            r.resolve(&format!("d{i}.test")).await.unwrap();
        }
        // The most recent ones are still cached; the earliest were evicted.
        assert!(r.resolve("d19.test").await.unwrap().from_cache);
        assert!(!r.resolve("d0.test").await.unwrap().from_cache);
    })
    .await;
}

#[tokio::test]
async fn zone_errors_are_reported() {
    bounded(10, async {
        let mut outside = ZoneBuilder::new("test.");
        outside.a("host.other", Ipv4Addr::LOCALHOST);
        let e = DnsServer::start(vec![outside], LOOPBACK).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("outside zone"), "{e}");
        let mut bad = ZoneBuilder::new("test.");
        bad.mx("x.test", 10, "bad..name");
        assert!(DnsServer::start(vec![bad], LOOPBACK).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn server_answers_on_tcp_too() {
    bounded(10, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = start(vec![test_zone()]).await;
        // A hand-made query for single.test MX over TCP (2-byte length prefix).
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["single", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 15, 0, 1]);
        let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&q).await.unwrap();
        let len = s.read_u16().await.unwrap() as usize;
        let mut resp = vec![0; len];
        s.read_exact(&mut resp).await.unwrap();
        assert_eq!(&resp[..2], &[0x12, 0x34]);
        assert_eq!(resp[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([resp[6], resp[7]]), 1, "one answer");
        assert_eq!(server.queries(), 1);
    })
    .await;
}

fn signed_zone() -> ZoneBuilder {
    let mut z = ZoneBuilder::new("signed.example.").dnssec();
    z.mx("signed.example", 10, "starttls-mx.signed.example").a("starttls-mx.signed.example", Ipv4Addr::new(127, 0, 9, 1));
    z.a("implicit.signed.example", Ipv4Addr::new(127, 0, 9, 2));
    z.null_mx("null.signed.example");
    z
}

fn validating(server: &DnsServer, anchor: Arc<TrustAnchors>) -> MxResolver {
    MxResolver::new(ResolverConfig { validate_dnssec: true, trust_anchor: Some(anchor), ..config(server) }).unwrap()
}

#[tokio::test]
async fn signed_zone_answers_are_authenticated() {
    bounded(10, async {
        let server = start(vec![signed_zone()]).await;
        let r = validating(&server, server.trust_anchors());
        let d = r.resolve("signed.example").await.unwrap();
        assert!(d.dnssec, "MX answer validated against the zone key");
        assert_eq!(d.hosts[0].name, "starttls-mx.signed.example");
        assert_eq!(d.hosts[0].addrs, [v4(127, 0, 9, 1)]);
        // Implicit MX: the NSEC proof that no MX exists is what was authenticated.
        let d = r.resolve("implicit.signed.example").await.unwrap();
        assert_eq!((d.kind, d.dnssec), (RouteKind::ImplicitMx, true));
        assert_eq!(r.resolve("nx.signed.example").await.unwrap_err(), ResolveError::NoSuchDomain);
        assert_eq!(r.resolve("null.signed.example").await.unwrap_err(), ResolveError::NullMx);
        // The cached copy keeps the flag.
        let d = r.resolve("signed.example").await.unwrap();
        assert!(d.from_cache && d.dnssec);
    })
    .await;
}

#[tokio::test]
async fn signatures_from_an_untrusted_key_are_a_temporary_failure() {
    bounded(10, async {
        let server = start(vec![signed_zone()]).await;
        // Same zone, other key: what a spoofer without the private key could serve.
        let impostor = start(vec![signed_zone()]).await;
        let r = validating(&impostor, server.trust_anchors());
        let e = r.resolve("signed.example").await.unwrap_err();
        assert!(matches!(&e, ResolveError::Temporary(why) if why.contains("DNSSEC")), "{e:?}");
    })
    .await;
}

#[tokio::test]
async fn without_validation_nothing_is_authenticated() {
    bounded(10, async {
        let server = start(vec![signed_zone()]).await;
        let r = MxResolver::new(config(&server)).unwrap();
        let d = r.resolve("signed.example").await.unwrap();
        assert!(!d.dnssec);
        assert_eq!(d.hosts[0].addrs, [v4(127, 0, 9, 1)]);
    })
    .await;
}

/// Resolve `domain` from `n` tasks at once. On the default current-thread test runtime the
/// tasks run in turn until each awaits I/O, so every call misses the cache before the first
/// answer arrives: all but one must coalesce.
async fn resolve_many(r: &Arc<MxResolver>, domain: &str, n: usize) -> Vec<Result<Destination, ResolveError>> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let r = r.clone();
            let domain = domain.to_owned();
            tokio::spawn(async move { r.resolve(&domain).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("task completes"));
    }
    out
}

/// A signed zone with one bogus RRset of each kind MX resolution reads: an MX RRset, and the
/// A RRset of an MX host.
fn zone_with_bogus_rrsets() -> ZoneBuilder {
    let mut z = signed_zone();
    z.mx("bogus-mx.signed.example", 10, "starttls-mx.signed.example");
    z.mx("bogus-host.signed.example", 10, "badaddr.signed.example").a("badaddr.signed.example", Ipv4Addr::new(127, 0, 9, 3));
    z.bogus("bogus-mx.signed.example", RecordType::MX).bogus("badaddr.signed.example", RecordType::A);
    z
}

#[tokio::test]
async fn a_bogus_rrset_is_a_temporary_failure_and_the_rest_of_the_zone_stays_secure() {
    bounded(20, async {
        let server = start(vec![zone_with_bogus_rrsets()]).await;
        let r = validating(&server, server.trust_anchors());
        let e = r.resolve("bogus-mx.signed.example").await.unwrap_err();
        assert!(matches!(&e, ResolveError::Temporary(why) if why.to_lowercase().contains("bogus")), "{e:?}");
        // The only MX host's addresses are bogus: no address to use, and not a permanent failure.
        let e = r.resolve("bogus-host.signed.example").await.unwrap_err();
        assert!(matches!(&e, ResolveError::Temporary(_)), "{e:?}");
        // Same zone, same key, intact signatures: secure.
        let d = r.resolve("signed.example").await.unwrap();
        assert!(d.dnssec, "the intact MX RRset beside the bogus ones is secure");
        assert_eq!(d.hosts[0].addrs, [v4(127, 0, 9, 1)]);
        let d = r.resolve("implicit.signed.example").await.unwrap();
        assert_eq!((d.kind, d.dnssec), (RouteKind::ImplicitMx, true));
        // Without validation the corrupted signatures are not looked at: the data is served.
        let plain = MxResolver::new(config(&server)).unwrap();
        let d = plain.resolve("bogus-mx.signed.example").await.unwrap();
        assert!(!d.dnssec);
        assert_eq!(d.hosts[0].name, "starttls-mx.signed.example");
        let d = plain.resolve("bogus-host.signed.example").await.unwrap();
        assert_eq!(d.hosts[0].addrs, [v4(127, 0, 9, 3)]);
    })
    .await;
}

#[tokio::test]
async fn an_unanchored_zone_is_bogus_throughout_while_an_anchored_one_beside_it_is_secure() {
    bounded(20, async {
        let mut other = ZoneBuilder::new("rolled.example.").dnssec_unanchored();
        other.mx("rolled.example", 10, "mx.rolled.example").a("mx.rolled.example", Ipv4Addr::new(127, 0, 8, 1));
        other.a("implicit.rolled.example", Ipv4Addr::new(127, 0, 8, 2));
        let server = start(vec![signed_zone(), other]).await;
        let r = validating(&server, server.trust_anchors());
        for name in ["rolled.example", "implicit.rolled.example"] {
            let e = r.resolve(name).await.unwrap_err();
            assert!(
                matches!(&e, ResolveError::Temporary(why) if why.contains("DNSSEC") || why.to_lowercase().contains("bogus")),
                "{name}: {e:?}"
            );
        }
        assert!(r.resolve("signed.example").await.unwrap().dnssec);
        // The zone is signed all the same: without validation it answers.
        let plain = MxResolver::new(config(&server)).unwrap();
        assert_eq!(plain.resolve("rolled.example").await.unwrap().hosts[0].addrs, [v4(127, 0, 8, 1)]);
    })
    .await;
}

/// A fresh directory for files a test writes.
fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mxpipe-resolve-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn anchors_from_a_file_of_dnskey_or_ds_records_validate_the_zone() {
    use mxpipe::dnsserver::AnchorFormat;
    bounded(20, async {
        let server = start(vec![signed_zone()]).await;
        let dir = temp_dir("anchor-file");
        for format in [AnchorFormat::Dnskey, AnchorFormat::Ds] {
            let path = dir.join(format!("{format:?}"));
            server.write_trust_anchors(&path, format).unwrap();
            let mut cfg = config(&server);
            mxpipe::dnssec::configure(&mut cfg, std::slice::from_ref(&path)).await.unwrap();
            assert!(cfg.validate_dnssec, "anchors switch validation on");
            let r = MxResolver::new(cfg).unwrap();
            assert!(r.resolve("signed.example").await.unwrap().dnssec, "{format:?}");
        }
        // Another server's anchors for the same zone: every answer is bogus.
        let impostor = start(vec![signed_zone()]).await;
        let path = dir.join("impostor");
        impostor.write_trust_anchors(&path, AnchorFormat::Dnskey).unwrap();
        let mut cfg = config(&server);
        mxpipe::dnssec::configure(&mut cfg, &[path]).await.unwrap();
        let e = MxResolver::new(cfg).unwrap().resolve("signed.example").await.unwrap_err();
        assert!(matches!(e, ResolveError::Temporary(_)), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_ds_anchor_that_matches_no_served_key_fails_at_load_naming_file_line_and_owner() {
    use mxpipe::dnsserver::AnchorFormat;
    bounded(30, async {
        let server = start(vec![signed_zone()]).await;
        let impostor = start(vec![signed_zone()]).await;
        let dir = temp_dir("ds-mismatch");
        let path = dir.join("ds");
        impostor.write_trust_anchors(&path, AnchorFormat::Ds).unwrap();
        let e = mxpipe::dnssec::load(std::slice::from_ref(&path), Some(server.addr())).await.err().expect("load fails").to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("line 2") && e.contains("signed.example."), "{e}");
        assert!(e.contains("matches"), "{e}");
        // A DS for a zone the nameserver does not serve (REFUSED): the DNSKEY cannot be fetched.
        std::fs::write(&path, "; one\nelsewhere.example. IN DS 1 13 2 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
            .unwrap();
        let e = mxpipe::dnssec::load(std::slice::from_ref(&path), Some(server.addr())).await.err().expect("load fails").to_string();
        assert!(e.contains("line 2") && e.contains("elsewhere.example.") && e.contains("DNSKEY"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await;
}
