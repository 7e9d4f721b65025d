//! nginx on a loopback port with the configuration in `deploy/nginx/`: the map, the
//! upstream and the proxy settings operators install (all but the TLS server blocks, which
//! need a certificate and the standard ports), with the upstream's nodes replaced by the
//! test's hubs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// `deploy/nginx/` of the workspace.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx")
}

/// nginx on a loopback port in front of `upstreams`, run from a scratch directory.
#[derive(Debug)]
pub struct Nginx {
    _child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// The site of `deploy/nginx/belfry.conf` up to its first server block (the map and the
/// upstream), with the upstream's nodes replaced by `upstreams`.
pub fn site_head(upstreams: &[std::net::SocketAddr]) -> String {
    let deploy = deploy_dir();
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
pub fn nginx_in(dir: &Path, http: &str) -> std::process::Command {
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
    /// Starts nginx on a free port in front of `upstreams`.
    pub async fn start(upstreams: &[std::net::SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let proxy = deploy_dir()
            .join("belfry-proxy.conf")
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
