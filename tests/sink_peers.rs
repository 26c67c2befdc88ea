//! The sink records which client delivered what: per (client address, EHLO name) message
//! counts in its stats, and a `Received:` trace field in each `--mail-dir` file. The egress
//! tests read both to see which source address and EHLO name a message left from.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::daemon::{sink_on, tmpdir};
use common::Client;

async fn send_from(addr: std::net::SocketAddr, from: Ipv4Addr, helo: &str, subject: &str) {
    let mut c = Client::connect_from(addr, IpAddr::V4(from)).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd(&format!("EHLO {helo}")).await, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@src.test>").await, 250);
    assert_eq!(c.cmd("RCPT TO:<b@dst.test>").await, 250);
    assert_eq!(c.cmd("DATA").await, 354);
    c.send(format!("Subject: {subject}\r\n\r\nx\r\n.\r\n")).await;
    assert_eq!(c.reply().await.code, 250);
    let _ = c.cmd("QUIT").await;
}

#[tokio::test]
async fn each_message_is_recorded_with_its_client_address_and_ehlo_name() {
    let dir = tmpdir("sink-peers");
    let ip = Ipv4Addr::new(127, 6, 0, 1);
    let port = common::daemon::free_port("127.6.0.1");
    let sink = sink_on(ip, port, &dir, |_| {}).await;
    let addr = std::net::SocketAddr::from((ip, port));
    send_from(addr, Ipv4Addr::new(127, 0, 0, 2), "out-a.esp.test", "one").await;
    send_from(addr, Ipv4Addr::new(127, 0, 0, 3), "out-b.esp.test", "two").await;
    send_from(addr, Ipv4Addr::new(127, 0, 0, 3), "out-b.esp.test", "three").await;

    let t = sink.peers();
    assert_eq!(t.messages_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))), 1, "{t:?}");
    assert_eq!(t.messages_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))), 2, "{t:?}");
    assert_eq!(t.peers[0].helo, "out-b.esp.test");
    assert_eq!(t.overflow, 0);

    let mut received = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let subject = text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap().to_string();
        let trace = text.lines().find(|l| l.starts_with("Received: ")).unwrap().to_string();
        received.push((subject, trace));
    }
    received.sort();
    assert_eq!(received.len(), 3);
    assert!(received[0].1.starts_with("Received: from out-a.esp.test ([127.0.0.2]) by mxpipe-sink with ESMTP id"), "{received:?}");
    assert!(received[2].1.starts_with("Received: from out-b.esp.test ([127.0.0.3])"), "{received:?}");
    sink.shutdown(std::time::Duration::from_secs(2)).await;
}
