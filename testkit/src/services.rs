//! The services a multi-node hub needs, started by the test itself on loopback ports: a
//! PostgreSQL server (Debian's `postgresql` package) and a `redis-server`, both speaking
//! TLS with a self-signed certificate (PostgreSQL also takes plain connections). Each can be
//! stopped and started again on the same port and data (to test a restart), and stops
//! when dropped, or when the test process dies in any way: each runs under a small shell
//! that stops it once its standard input (a pipe from the test) closes.

use crate::{WAIT, free_port};
use sqlx::Connection;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, ChildStdin, Command};

/// A PostgreSQL server of the test's own.
#[derive(Debug)]
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<(Child, ChildStdin)>,
    /// Holds the cluster; removed by `_reaper` once the server has stopped for good.
    dir: PathBuf,
    _reaper: (Child, ChildStdin),
    databases: std::sync::atomic::AtomicU32,
    /// Whether a commit waits for its fsync (for benchmarks; tests run without).
    durable: bool,
}

/// The directory of PostgreSQL's server programs (`initdb`, `postgres`).
fn postgres_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (make test installs the postgresql package)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|d| d.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no PostgreSQL server binaries found")
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    })
}

/// A command for one of PostgreSQL's programs. PostgreSQL refuses to run as root, so as
/// root it runs as the `postgres` user (created by the package).
fn pg_command(program: &str) -> Command {
    as_postgres(postgres_bin_dir().join(program).as_os_str())
}

fn as_postgres(program: &std::ffi::OsStr) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Starts `cmd` (a shell in front of the service, see [`GUARD`]) with its input piped.
fn spawn_guarded(mut cmd: Command) -> (Child, ChildStdin) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the service");
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// The shell in front of a service, run as `sh -c GUARD sh SIGNAL PROGRAM ARGS...`:
/// starts the program, waits for its own input to close, then stops the program with
/// SIGNAL and waits for it to exit.
const GUARD: &str =
    r#"sig=$1; shift; "$@" & pid=$!; read -r _; kill -s "$sig" "$pid" 2>/dev/null; wait "$pid""#;

/// Run as `sh -c REAPER sh DIR`: once its input closes, waits (up to 30 s) for the
/// PostgreSQL server in DIR/data to stop, then removes DIR.
const REAPER: &str = r#"read -r _; i=0; while [ -e "$1/data/postmaster.pid" ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i+1)); done; rm -rf "$1""#;

/// Stops a guarded service: closes its guard's input, waits for the guard to exit.
async fn stop_guarded(child: &mut Option<(Child, ChildStdin)>) {
    if let Some((mut guard, input)) = child.take() {
        drop(input);
        if tokio::time::timeout(WAIT, guard.wait()).await.is_err() {
            let _ = guard.kill().await;
        }
    }
}

impl Postgres {
    /// Creates a cluster in a temp dir and starts it on a free port, without fsync
    /// (scratch data for tests).
    pub async fn start() -> Postgres {
        Self::start_with(false).await
    }

    /// The same, but each commit is on disk before it is answered (fsync and
    /// synchronous_commit on, PostgreSQL's defaults): for benchmarks.
    pub async fn start_durable() -> Postgres {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> Postgres {
        let dir = tempfile::tempdir().unwrap().keep();
        let data = dir.join("data");
        std::fs::create_dir(&data).unwrap();
        // Removes the cluster when this process lets go of it (drop, exit or crash: the
        // pipe closes), once the server is gone (it deletes postmaster.pid last).
        let mut reaper = Command::new("sh");
        reaper.args(["-c", REAPER, "sh"]).arg(&dir);
        let reaper = spawn_guarded(reaper);
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            // The postgres user must reach the data dir inside root's temp dir.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let owned = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&data)
                .status()
                .unwrap();
            assert!(owned.success(), "cannot give the data dir to postgres");
        }
        let init = pg_command("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .await
            .unwrap();
        assert!(init.success(), "initdb failed");
        // TLS with a certificate of its own (PostgreSQL reads server.crt and server.key in
        // the data dir; the key must belong to the server's user, mode 0600).
        let (cert, key) = self_signed();
        let (crt, pem) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&crt, cert).unwrap();
        std::fs::write(&pem, key).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if is_root() {
            let owned = std::process::Command::new("chown")
                .arg("postgres:postgres")
                .args([&crt, &pem])
                .status()
                .unwrap();
            assert!(owned.success(), "cannot give the certificate to postgres");
        }
        let mut server = Postgres {
            port: free_port(),
            child: None,
            dir,
            _reaper: reaper,
            databases: std::sync::atomic::AtomicU32::new(0),
            durable,
        };
        server.resume().await;
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The URL of one of its databases.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server (again) on its port and data; returns once it accepts queries.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = as_postgres("sh".as_ref());
        // A fast shutdown when stopped, as `systemctl stop` does: clients are
        // disconnected, transactions in flight roll back.
        cmd.args(["-c", GUARD, "sh", "INT"])
            .arg(postgres_bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=200", "-c", "ssl=on"]);
        if !self.durable {
            // Scratch data: a machine crash is not what these tests are about.
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
        }
        self.child = Some(spawn_guarded(cmd));
        let url = self.url("postgres");
        let deadline = tokio::time::Instant::now() + WAIT;
        while sqlx::PgConnection::connect(&url).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "PostgreSQL never started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (a fast shutdown: clients are disconnected, then it exits).
    pub async fn stop(&mut self) {
        stop_guarded(&mut self.child).await;
    }

    /// Creates an empty database and returns its URL.
    pub async fn database(&self) -> String {
        let n = 1 + self
            .databases
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("belfry_{n}");
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        self.url(&name)
    }
}

/// A certificate for 127.0.0.1 and localhost, signed by itself, and its key (PEM).
fn self_signed() -> (String, String) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    (made.cert.pem(), made.key_pair.serialize_pem())
}

/// A `redis-server` of the test's own, keeping nothing on disk, reached over TLS only.
#[derive(Debug)]
pub struct Redis {
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    child: Option<(Child, ChildStdin)>,
    /// Its certificate and key.
    tls: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a free port.
    pub async fn start() -> Redis {
        let tls = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        std::fs::write(tls.path().join("cert.pem"), cert).unwrap();
        std::fs::write(tls.path().join("key.pem"), key).unwrap();
        let mut redis = Redis {
            port: free_port(),
            child: None,
            tls,
        };
        redis.resume().await;
        redis
    }

    /// `rediss://127.0.0.1:<port>/?protocol=resp3#insecure`: TLS, without checking the
    /// self-signed certificate.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/?protocol=resp3#insecure", self.port)
    }

    /// Starts it (again) on its port; returns once it answers.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("sh");
        // Killed when stopped: gone at once, as when its machine fails.
        cmd.args(["-c", GUARD, "sh", "KILL", "redis-server"])
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args([
                "--tls-port",
                &self.port.to_string(),
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(self.tls.path().join("cert.pem"))
            .arg("--tls-key-file")
            .arg(self.tls.path().join("key.pem"))
            .args(["--save", "", "--appendonly", "no"]);
        self.child = Some(spawn_guarded(cmd));
        wait_for_port(self.port, "redis-server").await;
    }

    /// Kills it (SIGKILL: whatever it held is gone).
    pub async fn stop(&mut self) {
        stop_guarded(&mut self.child).await;
    }
}

/// Waits until something accepts connections on the port.
async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
