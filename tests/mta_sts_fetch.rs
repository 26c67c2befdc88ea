//! MTA-STS over real loopback sockets: policies fetched by `mxpipe::policy::mta_sts::fetch`
//! from an HTTPS server built here (axum behind tokio-rustls, certificates from a generated
//! CA), and `_mta-sts` TXT records served by `mxpipe::dnsserver` and read with
//! `MxResolver::txt`. Each test names the check it covers; each fails if that check is removed.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_TYPE, HOST, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Frame;
use mxpipe::dnsserver::{DnsServer, ZoneBuilder};
use mxpipe::policy::mta_sts::fetch::{fetch_policy, FetchConfig, FetchError};
use mxpipe::policy::mta_sts::{parse_txt, Mode, StsError, StsPolicy, StsTxt};
use mxpipe::resolve::{MxResolver, ResolverConfig};
use mxpipe::tls::{self, ClientOptions, ClientResumption, GeneratedPki, Identity, Kx, Verify};
use tokio::net::TcpListener;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DOMAIN: &str = "good.test";
const POLICY_HOST: &str = "mta-sts.good.test";
const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.good.test\r\nmx: *.backup.good.test\r\nmax_age: 86400\r\n";

/// How long a test's HTTPS server runs at most.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);

/// Every test body runs under this bound, so a fetch that does not end fails the test.
async fn bounded<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body).await.expect("test timed out");
}

/// A CA and a certificate for `names`, signed by it.
fn pki(names: &[&str]) -> GeneratedPki {
    tls::certs::generate(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
}

/// What the engine will pass: the WebPKI roots plus the test CA.
fn fetch_config(trusted: &GeneratedPki, port: u16) -> FetchConfig {
    let opts = ClientOptions {
        verify: Verify::webpki_plus(std::slice::from_ref(&trusted.ca_der)).unwrap(),
        kx: Kx::X25519,
        resumption: ClientResumption::Off,
        tls12_only: false,
    };
    let mut cfg = FetchConfig::new(tls::client_config(&opts, None).unwrap());
    cfg.port = port;
    cfg.timeout = Duration::from_secs(5);
    cfg
}

/// Serve `app` over HTTPS with `identity` on 127.0.0.1 until the test ends (every test is
/// bounded well within [`SERVER_LIFETIME`]). Handshake failures are what some tests are
/// about; the client reports them.
async fn serve_https(identity: Identity, app: Router) -> SocketAddr {
    common::https::serve_https((LOCALHOST, 0).into(), identity, app, SERVER_LIFETIME).await.0
}

/// An app answering the policy path with `respond`, for any Host.
fn policy_app<F>(respond: F) -> Router
where
    F: Fn(HeaderMap) -> Response + Clone + Send + Sync + 'static,
{
    Router::new().route("/.well-known/mta-sts.txt", get(move |headers: HeaderMap| async move { respond(headers) }))
}

fn text_plain(body: impl Into<Body>) -> Response {
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

/// A server for `mta-sts.good.test`, trusted by the returned config, that answers `respond`.
async fn policy_server<F>(respond: F) -> (SocketAddr, FetchConfig)
where
    F: Fn(HeaderMap) -> Response + Clone + Send + Sync + 'static,
{
    let pki = pki(&[POLICY_HOST]);
    let addr = serve_https(pki.identity.clone(), policy_app(respond)).await;
    (addr, fetch_config(&pki, addr.port()))
}

fn expected_policy() -> StsPolicy {
    StsPolicy { mode: Mode::Enforce, mx: vec!["mx1.good.test".into(), "*.backup.good.test".into()], max_age: 86_400 }
}

/// The whole path the engine will take: TXT record and policy host address from DNS, then the
/// policy over verified HTTPS. The server answers only for the right Host header, so the test
/// also covers `Host`; an address with nothing listening comes first, so it covers trying the
/// addresses in order.
#[tokio::test]
async fn good_policy_is_fetched_and_parsed() {
    bounded(20, async {
        let (_, cfg) = policy_server(|headers| match headers.get(HOST).and_then(|h| h.to_str().ok()) {
            Some(POLICY_HOST) => text_plain(POLICY),
            other => (StatusCode::MISDIRECTED_REQUEST, format!("wrong Host {other:?}")).into_response(),
        })
        .await;
        let mut zone = ZoneBuilder::new("test.");
        zone.txt("_mta-sts.good.test", "v=STSv1; id=20260101T000000").a(POLICY_HOST, Ipv4Addr::LOCALHOST);
        let dns = DnsServer::start(vec![zone], SocketAddr::new(LOCALHOST, 0)).await.unwrap();
        let resolver = resolver(&dns);

        let txt = parse_txt(&resolver.txt("_mta-sts.good.test").await.unwrap()).unwrap();
        assert_eq!(txt, Some(StsTxt { id: "20260101T000000".into() }));
        let addrs = resolver.host_addrs(POLICY_HOST).await.unwrap();
        assert_eq!(addrs, vec![LOCALHOST]);

        // 127.0.0.2 has nothing on that port (the server is bound to 127.0.0.1 only).
        let addrs = [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), addrs[0]];
        let policy = fetch_policy(DOMAIN, &addrs, &cfg).await.expect("policy fetched");
        assert_eq!(policy, expected_policy());
        assert!(policy.matches("MX1.good.test.") && policy.matches("b.backup.good.test") && !policy.matches("good.test"));
        // Content-Type is case-insensitive and its parameters are ignored.
        let (_, cfg) = policy_server(|_| ([(CONTENT_TYPE, "Text/Plain ; format=flowed")], POLICY).into_response()).await;
        let addr = SocketAddr::from((LOCALHOST, cfg.port));
        assert_eq!(fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap(), expected_policy());
    })
    .await;
}

/// The body goes through `parse_policy`: one without `mx` in enforce mode is refused.
#[tokio::test]
async fn malformed_policy_is_invalid() {
    bounded(20, async {
        let (addr, cfg) = policy_server(|_| text_plain("version: STSv1\nmode: enforce\nmax_age: 86400\n")).await;
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(&err, FetchError::Invalid { source: StsError::Missing { field: "mx", .. }, .. }), "{err}");
        assert_eq!(err.kind(), "sts-policy-invalid");
        let msg = err.to_string();
        assert!(msg.contains(POLICY_HOST) && msg.contains(&addr.to_string()) && msg.contains("mx"), "{msg}");
    })
    .await;
}

/// A valid policy padded with an unknown field to exactly `len` bytes.
fn padded_policy(len: usize) -> String {
    let head = format!("{POLICY}x-pad: ");
    let mut body = head.clone();
    body.push_str(&"p".repeat(len - head.len() - 1));
    body.push('\n');
    assert_eq!(body.len(), len);
    body
}

/// The size limit: a body at the limit is accepted, one byte more is refused (the body is a
/// valid policy either way, so without the limit both would be accepted).
#[tokio::test]
async fn body_over_the_limit_is_refused() {
    bounded(20, async {
        let (addr, mut cfg) = policy_server(|_| text_plain(padded_policy(1000))).await;
        cfg.max_bytes = 1000;
        assert_eq!(fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap(), expected_policy());
        cfg.max_bytes = 999;
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { limit: 999, .. }), "{err}");
        assert_eq!(err.kind(), "sts-policy-fetch-error");
    })
    .await;
}

/// A body without a length that never ends: the limit is enforced while reading, so the fetch
/// ends at the limit, long before the timeout (without that check it would read until the
/// timeout and end in `Timeout`).
#[tokio::test]
async fn endless_body_stops_at_the_limit() {
    bounded(20, async {
        let (addr, mut cfg) = policy_server(|_| ([(CONTENT_TYPE, "text/plain")], Body::new(Endless)).into_response()).await;
        cfg.timeout = Duration::from_secs(15);
        let start = Instant::now();
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { limit: 65_536, .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    })
    .await;
}

/// An HTTP body of endless `x-pad: ...` lines, 16 KiB at a time, with no length.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from("x-pad: endless\n".repeat(1092))))))
    }
}

/// Redirects are not followed: a 301 whose body is a valid text/plain policy is still refused,
/// and reported as a redirect (not as a generic status).
#[tokio::test]
async fn redirect_is_refused() {
    bounded(20, async {
        let (addr, cfg) = policy_server(|_| {
            (StatusCode::MOVED_PERMANENTLY, [(LOCATION, "https://elsewhere.test/policy.txt"), (CONTENT_TYPE, "text/plain")], POLICY)
                .into_response()
        })
        .await;
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        match &err {
            FetchError::Redirect { status: 301, location: Some(l), .. } => assert_eq!(l, "https://elsewhere.test/policy.txt"),
            other => panic!("expected a redirect error, got {other}"),
        }
        assert!(err.to_string().contains("redirects are not followed"), "{err}");
        assert_eq!(err.kind(), "sts-policy-fetch-error");
    })
    .await;
}

/// Only 200 is accepted: a 404 carrying a valid policy is refused and names the status.
#[tokio::test]
async fn not_found_is_refused() {
    bounded(20, async {
        let (addr, cfg) = policy_server(|_| (StatusCode::NOT_FOUND, [(CONTENT_TYPE, "text/plain")], POLICY).into_response()).await;
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(err, FetchError::Status { status: 404, .. }), "{err}");
        assert!(err.to_string().contains("404"), "{err}");
    })
    .await;
}

/// Content-Type must be text/plain: a valid policy served as text/html, or with no type, is
/// refused.
#[tokio::test]
async fn wrong_content_type_is_refused() {
    bounded(20, async {
        let (addr, cfg) = policy_server(|_| ([(CONTENT_TYPE, "text/html")], POLICY).into_response()).await;
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(&err, FetchError::ContentType { content_type: Some(t), .. } if t == "text/html"), "{err}");

        let (addr, cfg) = policy_server(|_| {
            let mut r = Response::new(Body::from(POLICY));
            r.headers_mut().remove(CONTENT_TYPE);
            r
        })
        .await;
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(err, FetchError::ContentType { content_type: None, .. }), "{err}");
    })
    .await;
}

/// The certificate must be valid for `mta-sts.<domain>`: one from a trusted CA for another
/// name is refused as a WebPKI failure.
#[tokio::test]
async fn certificate_for_another_name_is_refused() {
    bounded(20, async {
        let other = pki(&["mta-sts.other.test", "good.test"]);
        let addr = serve_https(other.identity.clone(), policy_app(|_| text_plain(POLICY))).await;
        let cfg = fetch_config(&other, addr.port());
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(err, FetchError::Tls { certificate: true, .. }), "{err}");
        assert_eq!(err.kind(), "sts-webpki-invalid");
        assert!(err.to_string().contains(POLICY_HOST), "{err}");
    })
    .await;
}

/// The certificate must chain to a trusted root: the right name from an unknown CA is refused.
#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_refused() {
    bounded(20, async {
        let server = pki(&[POLICY_HOST]);
        let trusted = pki(&[POLICY_HOST]);
        let addr = serve_https(server.identity.clone(), policy_app(|_| text_plain(POLICY))).await;
        let cfg = fetch_config(&trusted, addr.port());
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        assert!(matches!(err, FetchError::Tls { certificate: true, .. }), "{err}");
        assert_eq!(err.kind(), "sts-webpki-invalid");
    })
    .await;
}

/// A server that accepts TCP and never says anything: the fetch ends at `cfg.timeout` and says
/// which address it was waiting for.
#[tokio::test]
async fn silent_server_ends_at_the_timeout() {
    bounded(20, async {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let mut cfg = fetch_config(&pki(&[POLICY_HOST]), addr.port());
        cfg.timeout = Duration::from_millis(400);
        let start = Instant::now();
        let err = fetch_policy(DOMAIN, &[addr.ip()], &cfg).await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, FetchError::Timeout { addr: Some(a), .. } if a == addr), "{err}");
        assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "took {took:?}");
        assert_eq!(err.kind(), "sts-policy-fetch-error");
    })
    .await;
}

fn resolver(dns: &DnsServer) -> MxResolver {
    MxResolver::new(ResolverConfig { nameserver: Some(dns.addr()), timeout: Duration::from_secs(2), attempts: 1, ..Default::default() })
        .unwrap()
}

/// The zone the TXT tests query: `_mta-sts` records for one.test (a valid STS record longer
/// than one 255-byte character-string, beside an SPF record), other.test (only SPF), two.test
/// (two STS records), badid.test (an invalid id); none.test has no `_mta-sts` name at all.
async fn txt_zone() -> (DnsServer, MxResolver) {
    let mut zone = ZoneBuilder::new("test.");
    zone.txt("_mta-sts.one.test", &long_sts_record()).txt("_mta-sts.one.test", "v=spf1 -all");
    zone.txt("_mta-sts.other.test", "v=spf1 -all");
    zone.txt("_mta-sts.two.test", "v=STSv1; id=first").txt("_mta-sts.two.test", "v=STSv1; id=second");
    zone.txt("_mta-sts.badid.test", "v=STSv1; id=not-alnum");
    zone.a("mx.none.test", Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(vec![zone], SocketAddr::new(LOCALHOST, 0)).await.unwrap();
    let r = resolver(&dns);
    (dns, r)
}

fn long_sts_record() -> String {
    format!("v=STSv1; id=abc123; ext={}", "e".repeat(300))
}

/// No `_mta-sts` name (NXDOMAIN), or only other TXT records there: no policy, not an error;
/// and a policy host that does not exist has no addresses.
#[tokio::test]
async fn txt_none() {
    bounded(20, async {
        let (_dns, r) = txt_zone().await;
        assert_eq!(r.txt("_mta-sts.none.test").await.unwrap(), Vec::<String>::new());
        assert_eq!(parse_txt(&r.txt("_mta-sts.none.test").await.unwrap()), Ok(None));
        assert_eq!(parse_txt(&r.txt("_mta-sts.other.test").await.unwrap()), Ok(None));
        assert_eq!(r.host_addrs("mta-sts.none.test").await.unwrap(), Vec::<IpAddr>::new());
        assert_eq!(r.host_addrs("mx.none.test").await.unwrap(), vec![LOCALHOST]);
    })
    .await;
}

/// One valid STS record beside an SPF record: found, its character-strings joined without
/// separators, its id read.
#[tokio::test]
async fn txt_one_valid() {
    bounded(20, async {
        let (_dns, r) = txt_zone().await;
        let one = r.txt("_mta-sts.one.test").await.unwrap();
        assert_eq!(one.len(), 2);
        assert!(one.contains(&long_sts_record()), "character-strings joined: {one:?}");
        assert_eq!(parse_txt(&one), Ok(Some(StsTxt { id: "abc123".into() })));
    })
    .await;
}

/// Two STS records: RFC 8461 §3.1 says there is then no usable policy.
#[tokio::test]
async fn txt_two_valid_is_no_policy() {
    bounded(20, async {
        let (_dns, r) = txt_zone().await;
        assert_eq!(parse_txt(&r.txt("_mta-sts.two.test").await.unwrap()), Err(StsError::MultipleTxt(2)));
    })
    .await;
}

/// An id that is not 1 to 32 letters and digits makes the record invalid.
#[tokio::test]
async fn txt_invalid_id() {
    bounded(20, async {
        let (_dns, r) = txt_zone().await;
        let err = parse_txt(&r.txt("_mta-sts.badid.test").await.unwrap()).unwrap_err();
        assert!(matches!(&err, StsError::InvalidTxt { reason, .. } if reason.contains("id")), "{err}");
        assert!(err.to_string().contains("not-alnum"), "{err}");
    })
    .await;
}
