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
    config.tls = Some(belfry_server::config::TlsFiles {
        cert: cert_path,
        key: key_path,
    });
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

    let tls = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client_builder(&url, "/", json!({"token": token("tls"), "cursor": 0}))
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
