//! Connection floods do not keep a registered supplier waiting (issue 11 item 4): 3,000
//! idle TLS connections of an unregistered (but CA-chained) certificate, and 400 silent
//! TCP sockets, both from another address, while supplier-a pushes a batch.
//!
//! What makes it hold: `limits.max_connections_per_certificate` (64) and
//! `limits.max_handshakes_per_address` (32), see README "Connection limits".
//! The floods come from 127.0.0.2 (Linux routes all of 127/8 to lo), the supplier from
//! 127.0.0.1. Real gateway, real TLS, real store.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use schakel::proto::intake_client::IntakeClient;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// How long the supplier's connect + batch may take while a flood is open.
const SERVED_WITHIN: Duration = Duration::from_secs(2);

/// A TCP connection to `addr` from [`FLOOD_SOURCE`].
async fn connect_from_flood_source(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(FLOOD_SOURCE, 0))?;
    socket.connect(addr).await
}

/// A rustls client trusting the test CA, authenticating as `name`.
fn tls_client(
    server: &TestServer,
    name: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let certs = server.certs();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap())
        .unwrap();
    let chain = CertificateDer::pem_file_iter(certs.join(format!("{name}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{name}.key"))).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// supplier-a connects afresh and pushes one batch; returns how long it took.
async fn supplier_batch(server: &TestServer, id: &str) -> Duration {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(30), supplier_batch_now(server, id)).await {
        Ok(()) => started.elapsed(),
        Err(_) => panic!("supplier-a not served within 30 s"),
    }
}

async fn supplier_batch_now(server: &TestServer, id: &str) {
    let channel = schakel::client::connect(&server.url(), &server.files(SUPPLIER_A))
        .await
        .unwrap();
    let receipt = IntakeClient::new(channel)
        .submit_batch(batch(id, vec![record(id)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.accepted, 1);
}

/// The value of `schakel_tls_handshakes_total{outcome="..."}`.
async fn handshakes(server: &TestServer, outcome: &str) -> u64 {
    let (status, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    let start = format!("schakel_tls_handshakes_total{{outcome=\"{outcome}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&start))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_idle_tls_connections_of_an_unregistered_certificate_do_not_delay_a_supplier(
) {
    const FLOOD: usize = 3000;
    let server = TestServer::start().await;
    // TLS 1.2 with session resumption (the first connection makes the session, the
    // others resume it): the cheapest way to hold many authenticated connections, as a
    // flooder would, and it keeps the test short. The server still knows the client
    // certificate of a resumed session.
    let config = tls_client(&server, STRANGER, &[&rustls::version::TLS12]);
    // Kept open to the end, like the rest of the flood.
    let tcp = connect_from_flood_source(server.addr).await.unwrap();
    let first = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let addr = server.addr;
    // 32 handshakes at a time: the flood is as fast as the machine allows, and no single
    // attempt runs into the per-address handshake cap by its own concurrency.
    let slots = Arc::new(Semaphore::new(32));
    let mut opening = JoinSet::new();
    for _ in 0..FLOOD {
        let (config, slots) = (config.clone(), slots.clone());
        opening.spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let tcp = connect_from_flood_source(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
        });
    }
    // Every flood connection is kept open on the client side for the rest of the test.
    let mut flood = Vec::with_capacity(FLOOD);
    let started = Instant::now();
    let server = Arc::new(server);
    let mut midway = None;
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        let done = tokio::select! {
            done = opening.join_next() => done,
            () = &mut deadline => panic!(
                "{} of {FLOOD} flood connections still pending after 30 s: the gateway \
                 stopped accepting",
                FLOOD - flood.len()
            ),
        };
        let Some(done) = done else { break };
        flood.push(done.unwrap());
        if flood.len() == FLOOD / 2 {
            // A batch while the flood is still being opened (handshakes compete for CPU).
            let server = Arc::clone(&server);
            midway = Some(tokio::spawn(async move {
                supplier_batch(&server, "while-tls-flood-opens").await
            }));
        }
    }
    let opened = started.elapsed();
    assert_eq!(flood.len(), FLOOD);
    let took = midway.unwrap().await.unwrap();
    assert!(
        took < SERVED_WITHIN,
        "supplier-a waited {took:?} while {FLOOD} TLS connections were opened"
    );

    let took = supplier_batch(&server, "during-tls-flood").await;
    assert!(
        took < SERVED_WITHIN,
        "supplier-a waited {took:?} with {FLOOD} idle TLS connections open (opened in {opened:?})"
    );
    // Of the first connection and the flood, `max_connections_per_certificate` stay open;
    // every other flood connection was closed by a cap.
    let kept_of_flood = server.config.limits.max_connections_per_certificate - 1;
    // (The server may still be finishing the last handshakes the clients saw complete.)
    let expected = (FLOOD - kept_of_flood) as u64;
    let mut limited = handshakes(&server, "limited").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while limited < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        limited = handshakes(&server, "limited").await;
    }
    assert_eq!(limited, expected);
    drop((first, flood));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_silent_tcp_sockets_do_not_delay_a_supplier() {
    const FLOOD: usize = 400;
    let server = TestServer::start().await;
    // Connected all at once, as a flooder would (a SYN the kernel drops while the accept
    // queue is full is retried by the client's kernel in parallel, not one by one).
    let addr = server.addr;
    let mut connecting = JoinSet::new();
    for _ in 0..FLOOD {
        connecting.spawn(connect_from_flood_source(addr));
    }
    let mut silent = Vec::with_capacity(FLOOD);
    while let Some(done) = connecting.join_next().await {
        silent.push(done.unwrap().unwrap());
    }

    let took = supplier_batch(&server, "during-tcp-flood").await;
    assert!(
        took < SERVED_WITHIN,
        "supplier-a waited {took:?} with {FLOOD} silent sockets open"
    );
    // The silent sockets the server accepted beyond `max_handshakes_per_address` were
    // closed at once (not all 400 need be accepted yet: the kernel retries SYNs it
    // dropped while the accept queue was full), none timed out while the supplier was
    // served, and the supplier's was the only handshake.
    let limited = handshakes(&server, "limited").await;
    let cap = server.config.limits.max_handshakes_per_address;
    assert!(
        (1..=(FLOOD - cap) as u64).contains(&limited),
        "limited {limited}"
    );
    assert_eq!(handshakes(&server, "ok").await, 1);
    assert_eq!(handshakes(&server, "timeout").await, 0);
    drop(silent);
}

#[tokio::test]
async fn a_connection_without_calls_is_closed_after_the_idle_timeout_and_a_busy_one_is_kept() {
    let server = TestServer::start_with(|c| c.limits.idle_timeout_secs = 1).await;
    // Idle: a TLS connection that never opens a call.
    let tcp = connect_from_flood_source(server.addr).await.unwrap();
    let started = Instant::now();
    let mut idle =
        tokio_rustls::TlsConnector::from(tls_client(&server, STRANGER, &[&rustls::version::TLS13]))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
    // Busy: one channel with a call every 200 ms for 2.5 s, longer than the timeout.
    let channel = schakel::client::connect(&server.url(), &server.files(SUPPLIER_A))
        .await
        .unwrap();
    let mut intake = IntakeClient::new(channel);
    for n in 0..12 {
        let id = format!("busy-{n}");
        let receipt = intake
            .submit_batch(batch(&id, vec![record(&id)]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(receipt.accepted, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The idle one was closed (EOF or reset), not before the timeout.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        loop {
            // TLS 1.3 session tickets may come first.
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the idle connection was not closed");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The busy channel kept its one connection: two handshakes in all.
    assert_eq!(handshakes(&server, "ok").await, 2);
}
