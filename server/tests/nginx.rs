//! The hub behind nginx with the configuration in `deploy/nginx/`: the map, the upstream
//! and the proxy settings operators install (all but the TLS server blocks, which need a
//! certificate and the standard ports). A subscriber connects over WebSocket through
//! nginx, a publish goes through nginx, and the notification arrives live.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// nginx on a loopback port in front of `upstreams`, run from a scratch directory.
struct Nginx {
    _child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

/// The site of `deploy/nginx/belfry.conf` up to its first server block (the map and the
/// upstream), with the upstream's nodes replaced by `upstreams`.
fn site_head(upstreams: &[std::net::SocketAddr]) -> String {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx");
    let site = std::fs::read_to_string(deploy.join("belfry.conf")).unwrap();
    let head = &site[..site.find("\nserver {").expect("a server block")];
    let nodes: String = upstreams
        .iter()
        .map(|a| format!("    server {a} max_fails=1 fail_timeout=5s;\n"))
        .collect();
    let mut out = String::new();
    let mut replaced = false;
    for line in head.lines() {
        if line.trim_start().starts_with("server ") {
            if !replaced {
                out.push_str(&nodes);
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(replaced, "the upstream in belfry.conf names no node");
    out
}

/// Writes `nginx.conf` into `dir` with `http` in its http block, everything nginx writes
/// kept in `dir`; returns the command that runs nginx on it.
fn nginx_in(dir: &Path, http: &str) -> std::process::Command {
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         {http}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut command = std::process::Command::new("nginx");
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    command
}

impl Nginx {
    async fn start(upstreams: &[std::net::SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = belfry_testkit::free_port();
        let proxy = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/nginx/belfry-proxy.conf")
            .canonicalize()
            .unwrap();
        let http = format!(
            "{head}\n  server {{\n    listen 127.0.0.1:{port};\n    include {proxy};\n  }}",
            head = site_head(upstreams),
            proxy = proxy.display(),
        );
        let child = Command::from(nginx_in(dir.path(), &http))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx (apt install nginx; make setup-test installs it)");
        let addr = format!("127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nginx {
            _child: child,
            url: format!("http://{addr}"),
            _dir: dir,
        }
    }
}

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
