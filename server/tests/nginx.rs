//! The hub behind nginx with the configuration in `deploy/nginx/`: the map, the upstream
//! and the proxy settings operators install (all but the TLS server blocks, which need a
//! certificate and the standard ports). A subscriber connects over WebSocket through
//! nginx, a publish goes through nginx, and the notification arrives live.
#![allow(clippy::unwrap_used)]

mod common;

use belfry_testkit::{Nginx, nginx_in};
use common::*;
use std::path::Path;

#[tokio::test]
async fn a_notification_published_through_nginx_arrives_live_through_nginx() {
    let hub = TestHub::start().await;
    let nginx = Nginx::start(&[hub.addr]).await;

    let mut nina = Subscriber::connect(&nginx.url, &token("nina"), Some(0)).await;
    let (caught, _, _) = nina.catch_up().await;
    assert!(caught.is_empty());

    let publisher = belfry_testkit::Publisher::new(&nginx.url, KEY);
    let id = publisher.publish_to("user:nina", "through nginx").await;
    let live = nina.live(1).await;
    assert_eq!(live[0].id, id);
    assert_eq!(live[0].title, "through nginx");

    // The connection carries the client's events the other way too: a read mark goes up
    // through nginx and the hub answers it.
    assert_eq!(
        nina.request("read", serde_json::json!({ "ids": [id] }))
            .await,
        serde_json::json!({"ok": true})
    );
    nina.close().await;
    hub.stop().await;
}

/// The whole site as shipped, TLS server blocks included, installed the way DEPLOY.md
/// says (the proxy settings under `snippets/`) with a certificate where the site expects
/// one: `nginx -t` accepts it.
#[test]
fn the_shipped_site_passes_nginx_t() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cert = rcgen::generate_simple_self_signed(vec!["notify.example.com".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let live = "/etc/letsencrypt/live/notify.example.com";
    let site = std::fs::read_to_string(deploy.join("belfry.conf"))
        .unwrap()
        .replace(&format!("{live}/fullchain.pem"), &format!("{d}/cert.pem"))
        .replace(&format!("{live}/privkey.pem"), &format!("{d}/key.pem"));
    for dir_name in ["conf.d", "snippets"] {
        std::fs::create_dir(dir.path().join(dir_name)).unwrap();
    }
    std::fs::write(dir.path().join("conf.d/belfry.conf"), site).unwrap();
    std::fs::copy(
        deploy.join("belfry-proxy.conf"),
        dir.path().join("snippets/belfry-proxy.conf"),
    )
    .unwrap();
    let out = nginx_in(dir.path(), "  include conf.d/*.conf;")
        .arg("-t")
        .output()
        .expect("nginx (apt install nginx; make setup-test installs it)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("test is successful"),
        "{said}"
    );
}

/// socket.io-notify's publishers send their key in `notification_secret`, a header nginx
/// drops by default (underscores): the shipped site keeps it, so `/send` works through
/// nginx. And `/metrics` answers only loopback and private networks through nginx.
#[tokio::test]
async fn send_passes_nginx_with_its_underscore_header_and_metrics_stay_local() {
    let hub = TestHub::start().await;
    let nginx = Nginx::start(&[hub.addr]).await;
    let olga = token("olga");
    let (status, _) = hub
        .call(reqwest::Method::PUT, "/subscriptions/ops", &olga, None)
        .await;
    assert_eq!(status, 200);
    let mut sub = synced_subscriber(&nginx.url, &olga, Some(0)).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/send", nginx.url))
        .header("notification_secret", KEY)
        .form(&[("notification", "Disk full"), ("channel", "ops")])
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 201, "{}", r.text().await.unwrap());
    assert_eq!(sub.live(1).await[0].title, "Disk full");

    let local = http
        .get(format!("{}/metrics", nginx.url))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);
    assert!(local.text().await.unwrap().contains("belfry_connections"));
    // Another address: 127.0.0.2 is loopback to the kernel, but not on the site's list.
    let outside = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let denied = outside
        .get(format!("{}/metrics", nginx.url))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let health = outside
        .get(format!("{}/healthz", nginx.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "only /metrics is kept local");
    sub.close().await;
    hub.stop().await;
}
