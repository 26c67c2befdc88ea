//! DANE verification over real TLS handshakes on loopback: a tokio-rustls server presents a
//! generated chain (root → intermediate → leaf for mx1.example.test, or variations), and the
//! client uses `tls::dane::client_config`. Each test states which RFC 7672 rule it proves.

use std::net::SocketAddr;
use std::sync::Arc;

use mxpipe::tls::dane::{self, DaneAuth, DaneError, DaneMatch, Tlsa};
use mxpipe::tls::{self, GeneratedChain, Kx, TicketStore};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MX: &str = "mx1.example.test";
const NEXTHOP: &str = "example.test";
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A private PKI: root → intermediate, and a leaf for `name` under the intermediate.
fn pki(name: &str, expired: bool) -> GeneratedChain {
    tls::certs::generate_chain(&[name.to_string()], expired).unwrap()
}

/// Another leaf for `name` under `p`'s intermediate, and its key.
fn leaf(name: &str, p: &GeneratedChain, expired: bool) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    p.issue_leaf(&[name.to_string()], expired).unwrap()
}

fn rec(cert: &CertificateDer<'_>, usage: u8, selector: u8, matching: u8) -> Tlsa {
    Tlsa::for_cert(cert, usage, selector, matching).unwrap()
}

/// Serves a fixed certificate and key without checking that they belong together, so a
/// server can present the right certificate while signing with another key
/// (`with_single_cert` refuses such a pair).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A TLS server on 127.0.0.1 that completes handshakes, writes "ok" and closes, until dropped.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
) -> Server {
    let prov = tls::provider(Kx::Default);
    let signer = prov.key_provider.load_private_key(key.clone_key()).unwrap();
    let certified = Arc::new(CertifiedKey::new(chain, signer));
    let mut cfg = ServerConfig::builder_with_provider(prov)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(certified)));
    cfg.send_tls13_tickets = 2;
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(sock).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    Server { addr, task }
}

/// What the client saw: the handshake's error, or what `verify_session` says afterwards and
/// whether the session was resumed.
#[derive(Debug)]
struct Outcome {
    matched: Result<DaneMatch, DaneError>,
    resumed: bool,
}

async fn connect(addr: SocketAddr, auth: Arc<DaneAuth>, store: Option<Arc<TicketStore>>) -> Result<Outcome, std::io::Error> {
    connect_with(addr, &auth, dane::client_config(auth.clone(), Kx::X25519, store).unwrap()).await
}

async fn connect_with(addr: SocketAddr, auth: &DaneAuth, cfg: Arc<rustls::ClientConfig>) -> Result<Outcome, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let sock = TcpStream::connect(addr).await?;
    // SNI is the TLSA base domain (RFC 7672 §8.1); the engine does the same.
    let name = ServerName::try_from(auth.tlsa_base().to_string()).unwrap();
    let mut tls = connector.connect(name, sock).await?;
    let mut buf = Vec::new();
    // Reading to the end also takes in the server's session tickets.
    tls.read_to_end(&mut buf).await?;
    assert_eq!(buf, b"ok");
    let conn = tls.get_ref().1;
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok(Outcome { matched: dane::verify_session(auth, conn, UnixTime::now()), resumed })
}

fn auth(records: &[Tlsa]) -> Arc<DaneAuth> {
    Arc::new(DaneAuth::new(records, MX, Some(NEXTHOP)).expect("usable records"))
}

/// Handshake against a server presenting `chain` with `key`; the DANE match or the DaneError.
async fn run(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
    records: &[Tlsa],
) -> Result<String, DaneError> {
    let server = serve(chain, key, versions).await;
    match connect(server.addr, auth(records), None).await {
        Ok(out) => Ok(out.matched.expect("a session that verified still matches").to_string()),
        Err(e) => {
            let rustls_err = tls::rustls_error(&e).unwrap_or_else(|| panic!("not a TLS error: {e}"));
            Err(dane::dane_error_of(rustls_err).unwrap_or_else(|| panic!("not a DANE error: {rustls_err}")).clone())
        }
    }
}

#[tokio::test]
async fn dane_ee_records_match_by_each_selector_and_matching_type() {
    let p = pki(MX, false);
    for (s, m) in [(1, 1), (0, 1), (1, 2), (0, 0)] {
        let got = run(p.chain(), &p.leaf_key, TLS13, &[rec(&p.leaf, 3, s, m)]).await;
        assert_eq!(got, Ok(format!("dane-ee 3 {s} {m}")));
    }
    // TLS 1.2 too (its handshake signature path is separate).
    assert_eq!(run(p.chain(), &p.leaf_key, TLS12, &[rec(&p.leaf, 3, 1, 1)]).await, Ok("dane-ee 3 1 1".into()));
}

#[tokio::test]
async fn dane_ee_mismatch_fails() {
    let p = pki(MX, false);
    let other = pki(MX, false);
    let err = run(p.chain(), &p.leaf_key, TLS13, &[rec(&other.leaf, 3, 1, 1)]).await.unwrap_err();
    assert!(matches!(err, DaneError::NoMatch { ee: 1, ta: 0, certs: 2 }), "{err:?}");
    assert_eq!(err.result_type(), "validation-failure");
}

#[tokio::test]
async fn dane_ee_ignores_a_wrong_name_and_expiry() {
    let p = pki("wrong.example.org", true);
    assert_eq!(run(p.chain(), &p.leaf_key, TLS13, &[rec(&p.leaf, 3, 1, 1)]).await, Ok("dane-ee 3 1 1".into()));
}

#[tokio::test]
async fn dane_ta_on_the_intermediate() {
    let p = pki(MX, false);
    let ta = [rec(&p.intermediate, 2, 0, 1)];
    assert_eq!(run(p.chain(), &p.leaf_key, TLS13, &ta).await, Ok("dane-ta 2 0 1 depth 1".into()));
    assert_eq!(run(p.chain(), &p.leaf_key, TLS12, &ta).await, Ok("dane-ta 2 0 1 depth 1".into()));

    // Wrong name under the TA.
    let (wrong, wrong_key) = leaf("other.example.org", &p, false);
    let err = run(vec![wrong, p.intermediate.clone()], &wrong_key, TLS13, &ta).await.unwrap_err();
    assert_eq!(err.result_type(), "certificate-host-mismatch", "{err:?}");

    // The nexthop (recipient) domain is accepted as well.
    let (nh, nh_key) = leaf(NEXTHOP, &p, false);
    assert_eq!(run(vec![nh, p.intermediate.clone()], &nh_key, TLS13, &ta).await, Ok("dane-ta 2 0 1 depth 1".into()));

    // A chain not containing the TA.
    let other = pki(MX, false);
    let err = run(other.full_chain(), &other.leaf_key, TLS13, &ta).await.unwrap_err();
    assert_eq!(err, DaneError::NoMatch { ee: 0, ta: 1, certs: 3 });
    assert_eq!(err.result_type(), "validation-failure");

    // An expired leaf under the TA.
    let (old, old_key) = leaf(MX, &p, true);
    let err = run(vec![old, p.intermediate.clone()], &old_key, TLS13, &ta).await.unwrap_err();
    assert_eq!(err, DaneError::Expired { depth: 1 });
    assert_eq!(err.result_type(), "certificate-expired");
}

#[tokio::test]
async fn dane_ta_on_a_private_root_needs_no_webpki_root() {
    let p = pki(MX, false);
    let got = run(p.full_chain(), &p.leaf_key, TLS13, &[rec(&p.root, 2, 1, 1)]).await;
    assert_eq!(got, Ok("dane-ta 2 1 1 depth 2".into()));
    // A 2 1 0 record with the root's key, the root not presented.
    let got = run(p.chain(), &p.leaf_key, TLS13, &[rec(&p.root, 2, 1, 0)]).await;
    assert_eq!(got, Ok("dane-ta 2 1 0 depth 2".into()));
}

#[tokio::test]
async fn one_matching_record_of_either_kind_suffices() {
    let p = pki(MX, false);
    let other = pki(MX, false);
    let ee_bad_ta_good = [rec(&other.leaf, 3, 1, 1), rec(&p.intermediate, 2, 0, 1)];
    assert_eq!(run(p.chain(), &p.leaf_key, TLS13, &ee_bad_ta_good).await, Ok("dane-ta 2 0 1 depth 1".into()));
    let ee_good_ta_bad = [rec(&p.leaf, 3, 1, 1), rec(&other.intermediate, 2, 0, 1)];
    assert_eq!(run(p.chain(), &p.leaf_key, TLS13, &ee_good_ta_bad).await, Ok("dane-ee 3 1 1".into()));
}

#[test]
fn only_unusable_records_give_no_dane_auth() {
    let p = pki(MX, false);
    let mut spki = rec(&p.leaf, 3, 1, 1);
    let unusable = [
        Tlsa { usage: 0, ..spki.clone() },
        Tlsa { usage: 1, ..spki.clone() },
        Tlsa { selector: 2, ..spki.clone() },
        Tlsa { matching: 3, ..spki.clone() },
        Tlsa { matching: 2, ..spki.clone() },
    ];
    assert!(DaneAuth::new(&unusable, MX, Some(NEXTHOP)).is_none());
    spki.data.pop();
    assert!(DaneAuth::new(&[spki], MX, Some(NEXTHOP)).is_none(), "a 31-byte SHA2-256 digest");
}

#[tokio::test]
async fn digest_agility_ignores_a_matching_weaker_digest() {
    let p = pki(MX, false);
    let other = pki(MX, false);
    let records = [rec(&p.leaf, 3, 1, 1), rec(&other.leaf, 3, 1, 2)];
    let err = run(p.chain(), &p.leaf_key, TLS13, &records).await.unwrap_err();
    assert!(matches!(err, DaneError::NoMatch { ee: 1, .. }), "{err:?}");
}

#[tokio::test]
async fn the_handshake_signature_is_checked() {
    let p = pki(MX, false);
    // Another chain's leaf key: a fresh key unrelated to p's leaf.
    let impostor_key = pki(MX, false).leaf_key;
    let records = [rec(&p.leaf, 3, 1, 1)];
    for versions in [TLS13, TLS12] {
        // The right certificate, signed for with another key: the record matches, the
        // handshake must still fail.
        let server = serve(p.chain(), &impostor_key, versions).await;
        let err = connect(server.addr, auth(&records), None).await.unwrap_err();
        let rustls_err = tls::rustls_error(&err).expect("a TLS error");
        assert!(dane::dane_error_of(rustls_err).is_none(), "not a DANE failure: {rustls_err}");
        assert!(
            matches!(rustls_err, rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)),
            "{versions:?}: {rustls_err:?}"
        );
        // Control: the same server with the right key succeeds.
        let server = serve(p.chain(), &p.leaf_key, versions).await;
        assert!(connect(server.addr, auth(&records), None).await.is_ok());
    }
}

#[tokio::test]
async fn resumption_needs_the_same_config_and_keeps_the_match() {
    let p = pki(MX, false);
    let server = serve(p.chain(), &p.leaf_key, TLS13).await;
    let store = Arc::new(TicketStore::new(16, 4, 1));
    let good = auth(&[rec(&p.leaf, 3, 1, 1)]);
    let cfg = dane::client_config(good.clone(), Kx::X25519, Some(store.clone())).unwrap();
    let first = connect_with(server.addr, &good, cfg.clone()).await.unwrap();
    assert!(!first.resumed);
    let second = connect_with(server.addr, &good, cfg).await.unwrap();
    assert!(second.resumed, "the same config resumes: {:?}", store.stats());
    // A resumed session keeps the peer's chain, so the outcome record still says what matched.
    assert_eq!(second.matched.unwrap().to_string(), "dane-ee 3 1 1");
    // Records changed (a rollover gone wrong): a new config, sharing the store, does not
    // resume (rustls resumes only under the same verifier) and the full handshake fails.
    let other = pki(MX, false);
    let changed = auth(&[rec(&other.leaf, 3, 1, 1)]);
    let err = connect(server.addr, changed, Some(store)).await.unwrap_err();
    let rustls_err = tls::rustls_error(&err).expect("a TLS error");
    assert!(matches!(dane::dane_error_of(rustls_err), Some(DaneError::NoMatch { .. })), "{rustls_err}");
}
