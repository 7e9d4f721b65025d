//! HTTPS and WSS with `--tls-cert` / `--tls-key`: publish over HTTPS and receive over WSS,
//! trusting a self-signed certificate made for the test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::FutureExt;
use rust_socketio::Payload;
use rust_socketio::asynchronous::Client;
use serde_json::json;

#[tokio::test]
async fn publishes_over_https_and_delivers_over_wss() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let cert_path = files.path().join("cert.pem");
    let key_path = files.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let hub_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(hub_dir.path());
    config.tls_cert = Some(cert_path);
    config.tls_key = Some(key_path);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(belfry_server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let url = format!("https://localhost:{port}");

    let pem = cert.cert.pem();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no HTTPS");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Plain HTTP to the TLS port is refused.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );

    let (client, mut rx) = wss_subscriber(&url, &pem, &token("tls")).await;
    // Publish until the freshly connected socket receives one (it joins its rooms right
    // after the handshake).
    let title = loop {
        let r = http
            .post(format!("{url}/api/v1/notifications"))
            .bearer_auth(KEY)
            .json(&json!({"to": ["user:tls"], "title": "over tls"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        if let Ok(Some(t)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv()).await
        {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing over WSS");
    };
    assert_eq!(title, "over tls");
    let _ = client.disconnect().await;
    let _ = stop.send(());
    tokio::time::timeout(WAIT, hub)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A subscriber over WSS that trusts only `pem`, connected with cursor 0, and the titles
/// of the notifications it receives.
async fn wss_subscriber(
    url: &str,
    pem: &str,
    token: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let tls = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client_builder(url, "/", json!({"token": token, "cursor": 0}))
        .tls_config(tls)
        .on("notification", move |p: Payload, _c: Client| {
            let tx = tx.clone();
            async move {
                if let Payload::Text(v) = p {
                    let _ = tx.send(v[0]["title"].as_str().unwrap_or_default().to_owned());
                }
            }
            .boxed()
        })
        .connect()
        .await
        .unwrap();
    (client, rx)
}

/// An HTTPS client that trusts only `pem`, with no pooled connections (each request
/// makes a new TLS handshake, so it sees the certificate served now).
fn trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// A renewed certificate: the files are replaced and the hub gets SIGHUP. New
/// connections get the new certificate; sockets connected before stay connected.
#[tokio::test]
async fn a_renewed_certificate_is_served_after_sighup_without_dropping_sockets() {
    use belfry_testkit::{KEY as BIN_KEY, SECRET as BIN_SECRET, free_port, server_bin};
    let old = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let new = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (old_pem, new_pem) = (old.cert.pem(), new.cert.pem());
    let files = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert_path, &old_pem).unwrap();
    std::fs::write(&key_path, old.key_pair.serialize_pem()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut hub = tokio::process::Command::new(server_bin())
        .args([
            "serve",
            "--jwt-secret",
            BIN_SECRET,
            "--publish-key",
            BIN_KEY,
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("https://localhost:{port}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while trusting(&old_pem)
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "no HTTPS");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A socket connected with the old certificate.
    let user_token = belfry_testkit::token("renewal");
    let (client, mut rx) = wss_subscriber(&url, &old_pem, &user_token).await;
    let publish = |http: reqwest::Client, title: &'static str| {
        let url = url.clone();
        async move {
            let r = http
                .post(format!("{url}/api/v1/notifications"))
                .bearer_auth(BIN_KEY)
                .json(&json!({"to": ["user:renewal"], "title": title}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    };
    // Until the socket has joined its rooms and gets one.
    loop {
        publish(trusting(&old_pem), "before").await;
        if let Ok(Some(t)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv()).await
        {
            assert_eq!(t, "before");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing over WSS");
    }

    // Renewal: new files, then SIGHUP.
    std::fs::write(&cert_path, &new_pem).unwrap();
    std::fs::write(&key_path, new.key_pair.serialize_pem()).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &hub.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = tokio::time::Instant::now() + WAIT;
    while trusting(&new_pem)
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate is never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        trusting(&old_pem)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err(),
        "the old certificate is still served"
    );
    assert!(hub.try_wait().unwrap().is_none(), "SIGHUP ended the hub");
    // The socket from before is still there and still gets notifications.
    publish(trusting(&new_pem), "after").await;
    let t = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t, "after");
    let _ = client.disconnect().await;
    let _ = hub.start_kill();
}
