//! `belfry-bench`: load scenarios against the Belfry hub and the Node.js socket.io peer
//! (each started here, on loopback, fresh for every scenario) or a hub already running.
//!
//! `belfry-bench all` runs every scenario against both and writes docs/BENCHMARKS.md with
//! its charts; each scenario also runs alone (`belfry-bench fanout --against belfry,node`).
//! `--quick` shrinks every size for CI.

mod scenarios;

use anyhow::Context;
use belfry_bench::report::{self, Outcome, Results};
use belfry_bench::system::{Kind, System};
use belfry_testkit::{KEY, SECRET};
use clap::{Parser, Subcommand};
use scenarios::{Signer, parse_duration};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "belfry-bench", about = "Load scenarios for the Belfry hub")]
struct Cli {
    #[command(subcommand)]
    scenario: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every scenario against Belfry and the Node peer; writes the report.
    All {
        #[command(flatten)]
        common: Common,
        /// Where BENCHMARKS.md goes (its charts and results.json into `bench/` there).
        #[arg(long, default_value = "docs")]
        out: PathBuf,
    },
    /// Writes the report again from a run's results.json (after editing bench/NOTES.md).
    Report {
        /// The results of a run.
        #[arg(long, default_value = "docs/bench/results.json")]
        from: PathBuf,
        /// Where BENCHMARKS.md goes.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
    },
    /// Memory with idle connections held, at several counts; bytes per connection.
    Idle(Common),
    /// Full Socket.IO connects per second, all clients starting at once.
    Connect(Common),
    /// Publishes to everyone: time until the last subscriber has one; a stream's rate.
    Fanout(Common),
    /// Publishes to single users at fixed rates: latency percentiles; saturation.
    Targeted(Common),
    /// A device that missed many notifications: time until it holds them all.
    Catchup(Common),
    /// The system killed and restarted under many clients: time until all are back.
    Storm(Common),
    /// The tray app on a headless desktop beside an empty Tauri 2 tray app: memory, CPU,
    /// publish-to-popup latency, memory as the history grows (Belfry only).
    Desktop(Common),
    /// Connections held and steady publishing for a while; hub memory must stay flat.
    Soak(scenarios::soak::SoakArgs),
    /// More connections than one process may hold: several hub nodes, several
    /// load-generator processes; memory per connection, one publish to all.
    Held(Common),
    /// One load-generator process of `held` (started by it).
    #[command(hide = true)]
    HoldWorker(scenarios::held::WorkerArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Systems to start and measure, in order: belfry (one hub on SQLite), node (the
    /// Node.js peer), belfry-pg (one hub on PostgreSQL), belfry-xN (N hub nodes on one
    /// PostgreSQL and one Redis).
    #[arg(long, value_delimiter = ',', default_value = "belfry")]
    against: Vec<String>,
    /// A hub already running (`http://host:port`) instead of starting one.
    #[arg(long)]
    target: Option<String>,
    /// The running hub's publish key (with --target).
    #[arg(long, default_value = KEY)]
    key: String,
    /// The running hub's token secret (with --target).
    #[arg(long, default_value = SECRET)]
    secret: String,
    /// The running hub's process id, to read its memory and CPU (with --target).
    #[arg(long)]
    pid: Option<u32>,
    /// CI sizes.
    #[arg(long)]
    quick: bool,
    /// Connections (connect, fanout, targeted, storm, held).
    #[arg(long)]
    connections: Option<usize>,
    /// Connection counts to measure memory at (idle), ascending.
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<usize>>,
    /// Publish rates per second (targeted).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// How long each targeted rate lasts.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Missed notifications (catchup).
    #[arg(long)]
    count: Option<usize>,
    /// Publishers in flight at once at saturation (targeted).
    #[arg(long)]
    publishers: Option<usize>,
}

/// Every scenario's sizes.
struct Sizes {
    idle: scenarios::idle::Idle,
    connect: usize,
    fanout: scenarios::fanout::Fanout,
    targeted: scenarios::targeted::Targeted,
    /// The targeted rates on PostgreSQL and several nodes.
    shared_rates: Vec<u32>,
    catchup: usize,
    storm: usize,
    storm_limit: Duration,
    desktop: scenarios::desktop::DesktopSizes,
    held: scenarios::held::Held,
}

impl Sizes {
    fn from(c: &Common) -> Sizes {
        let mut s = if c.quick {
            Sizes {
                idle: scenarios::idle::Idle {
                    steps: vec![200, 500],
                    settle: Duration::from_secs(1),
                },
                connect: 500,
                fanout: scenarios::fanout::Fanout {
                    subscribers: 300,
                    singles: 2,
                    stream: 10,
                    rate: 10,
                },
                targeted: scenarios::targeted::Targeted {
                    subscribers: 300,
                    rates: vec![200],
                    duration: Duration::from_secs(2),
                    concurrency: 8,
                },
                shared_rates: vec![200],
                catchup: 500,
                storm: 300,
                storm_limit: Duration::from_secs(30),
                desktop: scenarios::desktop::DesktopSizes {
                    settle: Duration::from_secs(3),
                    window: Duration::from_secs(5),
                    popups: 10,
                    history: 400,
                },
                held: scenarios::held::Held {
                    connections: 2_000,
                    per_process: 1_000,
                    steps: 2,
                    settle: Duration::from_secs(1),
                    singles: 1,
                },
            }
        } else {
            Sizes {
                idle: scenarios::idle::Idle {
                    steps: vec![1_000, 5_000, 10_000, 50_000, 100_000],
                    settle: Duration::from_secs(5),
                },
                connect: 10_000,
                fanout: scenarios::fanout::Fanout {
                    subscribers: 10_000,
                    singles: 5,
                    stream: 100,
                    rate: 50,
                },
                targeted: scenarios::targeted::Targeted {
                    subscribers: 10_000,
                    rates: vec![1_000, 5_000],
                    duration: Duration::from_secs(20),
                    concurrency: 64,
                },
                shared_rates: vec![2_000],
                catchup: 10_000,
                storm: 10_000,
                storm_limit: Duration::from_secs(60),
                desktop: scenarios::desktop::DesktopSizes {
                    settle: Duration::from_secs(10),
                    window: Duration::from_secs(30),
                    popups: 100,
                    history: 10_000,
                },
                held: scenarios::held::Held::full(),
            }
        };
        if let Some(n) = c.connections {
            s.connect = n;
            s.fanout.subscribers = n;
            s.targeted.subscribers = n;
            s.storm = n;
            s.held.connections = n;
        }
        if let Some(steps) = &c.steps {
            s.idle.steps.clone_from(steps);
        }
        if let Some(rates) = &c.rates {
            s.targeted.rates.clone_from(rates);
            s.shared_rates.clone_from(rates);
        }
        if let Some(d) = c.duration {
            s.targeted.duration = d;
        }
        if let Some(n) = c.count {
            s.catchup = n;
        }
        if let Some(n) = c.publishers {
            s.targeted.concurrency = n.max(1);
        }
        s
    }
}

/// What `Common` says to run against.
fn kinds(c: &Common) -> anyhow::Result<Vec<Kind>> {
    if let Some(url) = &c.target {
        return Ok(vec![Kind::External {
            url: url.clone(),
            key: c.key.clone(),
        }]);
    }
    c.against
        .iter()
        .map(|a| match a.as_str() {
            "belfry" => Ok(Kind::Belfry),
            "belfry-pg" => Ok(Kind::BelfryPostgres),
            "node" => Ok(Kind::Node),
            other => match other.strip_prefix("belfry-x").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Ok(Kind::Cluster(n)),
                _ => anyhow::bail!(
                    "unknown system {other:?} (belfry, belfry-pg, belfry-xN for N nodes, node)"
                ),
            },
        })
        .collect()
}

/// Whether `scenario` is measured on `kind`: the tray app speaks to a Belfry hub only
/// (nothing to compare it with here); PostgreSQL and several nodes are measured where
/// they differ from one node on SQLite: publishing, fan-out, connects, catch-up; the
/// connections held beyond one process's limit need several nodes.
fn runs(kind: &Kind, scenario: &str) -> bool {
    match kind {
        Kind::Belfry => scenario != "held",
        Kind::Node | Kind::External { .. } => !matches!(scenario, "desktop" | "held"),
        Kind::BelfryPostgres => matches!(scenario, "connect" | "fanout" | "targeted" | "catchup"),
        Kind::Cluster(_) => {
            matches!(
                scenario,
                "connect" | "fanout" | "targeted" | "catchup" | "held"
            )
        }
    }
}

/// The system `scenario` runs on when asked for `kind`: `held` needs as many nodes as
/// its connections need processes, whatever number of nodes was asked for, and Belfry
/// asked for (the default, as in `belfry-bench held`) means Belfry on those nodes: one
/// hub cannot hold that many connections here.
fn kind_for(scenario: &str, kind: &Kind, sizes: &Sizes) -> Kind {
    match kind {
        Kind::Belfry | Kind::Cluster(_) if scenario == "held" => {
            Kind::Cluster(sizes.held.processes())
        }
        _ => kind.clone(),
    }
}

/// The scenarios, in report order.
const ALL: [&str; 8] = [
    "idle", "connect", "fanout", "targeted", "catchup", "held", "storm", "desktop",
];

async fn one(
    scenario: &str,
    kind: &Kind,
    c: &Common,
    sizes: &Sizes,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    if !runs(kind, scenario) {
        return Ok(());
    }
    let signer = Signer::new(&c.secret);
    let mut system = System::start(kind.clone(), c.pid).await?;
    println!("{scenario}: {} | started at {}", kind.name(), system.addr());
    let r = match scenario {
        "idle" => scenarios::idle::run(&system, &signer, &sizes.idle, out).await,
        "connect" => scenarios::connect::run(&system, &signer, sizes.connect, out).await,
        "fanout" => scenarios::fanout::run(&system, &signer, &sizes.fanout, out).await,
        "targeted" => {
            let mut targeted = sizes.targeted.clone();
            if matches!(kind, Kind::BelfryPostgres | Kind::Cluster(_)) {
                targeted.rates.clone_from(&sizes.shared_rates);
            }
            scenarios::targeted::run(&system, &signer, &targeted, out).await
        }
        "catchup" => scenarios::catchup::run(&system, &signer, sizes.catchup, out).await,
        "held" => scenarios::held::run(&system, &c.secret, &sizes.held, out).await,
        "storm" => {
            let (n, limit) = (sizes.storm, sizes.storm_limit);
            scenarios::storm::run(&mut system, &signer, n, limit, out).await
        }
        "desktop" => scenarios::desktop::run(&system, &sizes.desktop, out).await,
        other => Err(anyhow::anyhow!("unknown scenario {other}")),
    };
    system.stop().await;
    r.with_context(|| format!("{scenario} against {}", kind.name()))
}

/// Runs `scenarios` against every system in `c`; prints the side-by-side table. A
/// scenario that fails against one system is recorded and the rest still run; the
/// failures come back beside the results.
async fn run(scenarios: &[&str], c: &Common) -> anyhow::Result<(Results, Vec<String>)> {
    let sizes = Sizes::from(c);
    let mut failures = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut held = false;
    for asked in kinds(c)? {
        for scenario in scenarios {
            let kind = kind_for(scenario, &asked, &sizes);
            // `held` sizes its own cluster: once is enough.
            if *scenario == "held" && runs(&kind, scenario) && std::mem::replace(&mut held, true) {
                continue;
            }
            let name = kind.name();
            let at = match outcomes.iter().position(|o| o.system == name) {
                Some(at) => at,
                None => {
                    outcomes.push(Outcome::new(&name));
                    outcomes.len() - 1
                }
            };
            // One scenario failing against one system is reported; the rest still run.
            if let Err(e) = one(scenario, &kind, c, &sizes, &mut outcomes[at]).await {
                eprintln!("{scenario}: {name} | FAILED: {e:#}");
                outcomes[at].note(scenario, format!("failed: {e:#}"));
                failures.push(format!("{scenario} against {name}: {e:#}"));
            }
        }
    }
    let results = Results {
        date: command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        machine: machine(),
        command: std::env::args()
            .map(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map_or(a.clone(), |f| f.to_string_lossy().into_owned())
            })
            .take(1)
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        quick: c.quick,
        outcomes,
    };
    for scenario in scenarios {
        println!("\n{scenario}:\n{}", report::table(&results, scenario));
    }
    Ok((results, failures))
}

/// Fails when anything failed.
fn verdict(failures: &[String]) -> anyhow::Result<()> {
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("failed: {}", failures.join("; "))
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine in a few lines: CPU, cores, memory, kernel, the Node.js version.
fn machine() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let files = belfry_bench::procfs::raise_nofile(1_000_000);
    vec![
        format!("CPU: {model}, {} cores available", std::thread::available_parallelism().map_or(0, usize::from)),
        format!("Memory: {mem_gib:.1} GiB"),
        format!("Kernel: Linux {}", command_line("uname", &["-r"])),
        format!("Open files per process: at most {files} (hard limit)"),
        format!("Node.js {} for the peer", command_line("node", &["--version"])),
        "Belfry: the release build, its embedded SQLite store (WAL, synchronous=FULL) on this machine's disk".into(),
        format!(
            "Belfry on PostgreSQL: PostgreSQL {} started by the bench on loopback, with its durable defaults (fsync, synchronous_commit on); several nodes share it and one redis-server {} (TLS)",
            command_line("sh", &["-c", "ls /usr/lib/postgresql | sort -n | tail -1"]),
            command_line("sh", &["-c", "redis-server --version | sed 's/.*v=\\([^ ]*\\).*/\\1/'"]),
        ),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Command::All { mut common, out } => {
            if common.target.is_none() && common.against == ["belfry"] {
                common.against = ["belfry", "node", "belfry-pg", "belfry-x3"]
                    .map(String::from)
                    .to_vec();
            }
            let (results, failures) = run(&ALL, &common).await?;
            write_report(&results, &out)?;
            verdict(&failures)
        }
        Command::Report { from, out } => {
            let text = std::fs::read_to_string(&from)
                .with_context(|| format!("reading {}", from.display()))?;
            let results: Results = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a run's results", from.display()))?;
            write_report(&results, &out)
        }
        Command::Idle(c) => verdict(&run(&["idle"], &c).await?.1),
        Command::Connect(c) => verdict(&run(&["connect"], &c).await?.1),
        Command::Fanout(c) => verdict(&run(&["fanout"], &c).await?.1),
        Command::Targeted(c) => verdict(&run(&["targeted"], &c).await?.1),
        Command::Catchup(c) => verdict(&run(&["catchup"], &c).await?.1),
        Command::Storm(c) => verdict(&run(&["storm"], &c).await?.1),
        Command::Desktop(c) => verdict(&run(&["desktop"], &c).await?.1),
        Command::Soak(args) => scenarios::soak::run(args).await,
        Command::Held(c) => verdict(&run(&["held"], &c).await?.1),
        Command::HoldWorker(args) => scenarios::held::worker(args).await,
    }
}

/// BENCHMARKS.md in `out`, its charts and results.json in `out/bench`.
fn write_report(results: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    use belfry_bench::plot::Chart;
    use report::{ChartSpec, Section, Target};
    let sections = [
        Section {
            scenario: "idle",
            title: "1. Idle connections",
            about: "Connected, caught-up, idle Socket.IO clients (one per user, each with a token), added 1,000 at a time; the system's resident memory after each step settles. Bytes per connection come from the least-squares slope over all steps.",
        },
        Section {
            scenario: "connect",
            title: "2. Connect rate",
            about: "All clients start at once; each opens a WebSocket, does the Engine.IO and Socket.IO handshakes with its token and an empty cursor, and receives its empty catch-up. The rate is the number of clients over the time until the last one is up to date.",
        },
        Section {
            scenario: "fanout",
            title: "3. Fan-out",
            about: "Every subscriber connected; publishes to `all` over HTTP. Single publishes one after the other (the time until the last subscriber holds it), then a stream at a fixed rate, timed open loop from when each publish was due.",
        },
        Section {
            scenario: "targeted",
            title: "4. Targeted publish",
            about: "Every subscriber connected (one per user); publishes over HTTP, each to one random user, open loop at fixed rates (latency counted from when each publish was due, so falling behind shows), then as fast as 64 publishers in flight get answers. Belfry stores every publish durably before it answers; the Node peer stores nothing.",
        },
        Section {
            scenario: "catchup",
            title: "5. Catch-up",
            about: "Notifications published to a user while none of their devices is connected; then one device connects. The time from its connect until it holds all of them (checked: in order, none twice). Belfry reads them from its store; the Node peer from its in-memory offline queue, which a restart loses.",
        },
        Section {
            scenario: "held",
            title: "6. Connections held over several nodes",
            about: "More connections than one process may open files for: the hub as several nodes on one PostgreSQL (the bench's own, durable) and one Redis, the load generator as as many processes (`belfry-bench hold-worker`), each holding its share with its connections spread evenly over every node, each user with one token. Added in steps, each step waiting until every connection is up to date; the resident memory of all nodes together after each (bytes per connection from the least-squares slope). Then single publishes to `all` on the first node: the time until the last connection, in whichever process, holds it.",
        },
        Section {
            scenario: "storm",
            title: "7. Reconnect storm",
            about: "Every client connected and up to date; the system is killed (SIGKILL) and started again at once. Clients reconnect on their own with jittered backoff (100 ms doubling to 2 s) and catch up from their cursor.",
        },
        Section {
            scenario: "desktop",
            title: "8. Desktop tray app",
            about: "The tray app (`belfry-desktop`) and an empty Tauri 2 tray app (`bench/empty-tray`: a tray icon and a Quit item, built in the same cargo invocation and profile, so with the same Tauri features) on a headless desktop: Xvfb, a private D-Bus session and dunst as the notification daemon. Memory from /proc/<pid>/smaps_rollup (RSS counts the shared GTK and WebKit library pages; private memory is what the process alone holds); CPU at rest is the CPU time used over a window of quiet divided by the window. The app is first measured as autostart leaves it (connected, in the tray, window closed); then timed: notifications published to its user 4 per second, each timed from when it was due until dunst received the popup; then its history grows with do-not-disturb on (popups held back) and its private memory is read after each quarter; last, it restarts with the window open on that history, measured with its web processes. Belfry only: the Node peer has no desktop app.",
        },
    ];
    let charts = [
        ChartSpec {
            id: "idle-memory",
            chart: Chart {
                title: "Resident memory with idle connections",
                x_label: "connections",
                y_label: "MB",
            },
            scenario: "idle",
        },
        ChartSpec {
            id: "fanout-cdf",
            chart: Chart {
                title: "One publish to every subscriber: share holding it over time",
                x_label: "ms since the publish was sent",
                y_label: "% of subscribers",
            },
            scenario: "fanout",
        },
        ChartSpec {
            id: "targeted-1000",
            chart: Chart {
                title: "Targeted publish latency at 1,000/s",
                x_label: "percentile (nines: 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99)",
                y_label: "ms",
            },
            scenario: "targeted",
        },
        ChartSpec {
            id: "targeted-5000",
            chart: Chart {
                title: "Targeted publish latency at 5,000/s",
                x_label: "percentile (nines: 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99)",
                y_label: "ms",
            },
            scenario: "targeted",
        },
        ChartSpec {
            id: "held-memory",
            chart: Chart {
                title: "Resident memory of all nodes with the connections held",
                x_label: "connections",
                y_label: "MB",
            },
            scenario: "held",
        },
        ChartSpec {
            id: "held-cdf",
            chart: Chart {
                title: "One publish to every connection held: share holding it over time",
                x_label: "ms since the publish was sent",
                y_label: "% of connections",
            },
            scenario: "held",
        },
        ChartSpec {
            id: "storm",
            chart: Chart {
                title: "Reconnect storm: clients up to date after a kill",
                x_label: "s since the kill",
                y_label: "clients",
            },
            scenario: "storm",
        },
        ChartSpec {
            id: "desktop-history",
            chart: Chart {
                title: "Tray app private memory as its history grows (window closed)",
                x_label: "notifications in the history",
                y_label: "MiB",
            },
            scenario: "desktop",
        },
    ];
    const PG: &str = "Belfry on PostgreSQL";
    const X3: &str = "Belfry, 3 nodes";
    let targets = [
        Target::limit(
            "at most 8 KB of hub memory per idle connection, and at most half the peer's",
            "idle",
            "memory per idle connection (slope)",
            8.0,
        )
        .and_peer(0.5),
        Target::limit(
            "100,000 connections held",
            "held",
            "connections held, all nodes",
            100_000.0,
        ),
        Target::shown(
            "100,000 held: one publish to all, the time until the last has it",
            "held",
            "one publish: time until all 100000 have it (median of 3)",
        ),
        Target::shown(
            "100,000 held: hub memory per connection, all nodes",
            "held",
            "hub memory per connection, all nodes (slope)",
        ),
        Target::limit(
            "at least 5,000 connects per second, and twice the peer's",
            "connect",
            "connects per second (10000 at once)",
            5_000.0,
        )
        .and_peer(2.0),
        Target::versus_peer(
            "connects with one missed notification each: twice the peer's rate",
            "connect",
            "connects per second, 1 missed each (10000 at once)",
            2.0,
        ),
        Target::limit(
            "one publish to 10,000: all hold it in under 60 ms, and in half the peer's time",
            "fanout",
            "one publish: time until all 10000 have it (median of 5)",
            60.0,
        )
        .and_peer(0.5),
        Target::limit(
            "targeted p99 under 20 ms at 5,000 durable publishes/s, and half the peer's",
            "targeted",
            "5000/s: p99 latency",
            20.0,
        )
        .and_peer(0.5),
        Target::versus_peer(
            "targeted p99 at 1,000/s at most half the peer's",
            "targeted",
            "1000/s: p99 latency",
            0.5,
        ),
        Target::limit(
            "at least 15,000 durable publishes/s on SQLite at saturation",
            "targeted",
            "saturation: accepted publishes per second",
            15_000.0,
        ),
        Target::limit(
            "10,000 missed notifications caught up in under 1 s, and no slower than the peer",
            "catchup",
            "time until all 10000 missed are held",
            1_000.0,
        )
        .and_peer(1.0),
        Target::limit(
            "PostgreSQL, one node: at least 10,000 durable publishes/s",
            "targeted",
            "saturation: accepted publishes per second",
            10_000.0,
        )
        .on(PG),
        Target::limit(
            "PostgreSQL, one node: targeted p99 under 20 ms at 2,000/s",
            "targeted",
            "2000/s: p99 latency",
            20.0,
        )
        .on(PG),
        Target::shown(
            "one node on PostgreSQL: one publish to 10,000, the time until all have it",
            "fanout",
            "one publish: time until all 10000 have it (median of 5)",
        )
        .on(PG),
        Target::shown(
            "three nodes: one publish to 10,000 (sent to node 1, subscribers on all three), the time until all have it",
            "fanout",
            "one publish: time until all 10000 have it (median of 5)",
        )
        .on(X3),
        Target::shown(
            "three nodes: targeted p99 at 2,000/s, every delivery crossing nodes (one node: the PostgreSQL row above)",
            "targeted",
            "2000/s: p99 latency",
        )
        .on(X3),
        Target::shown(
            "three nodes: targeted saturation, every delivery crossing nodes",
            "targeted",
            "saturation: accepted publishes per second",
        )
        .on(X3),
        Target::limit(
            "all 10K clients back within 10 s of a restart",
            "storm",
            "time until all 10000 are back and caught up",
            10_000.0,
        ),
        Target::limit(
            "desktop tray app idle within 10 % of an empty Tauri 2 tray app",
            "desktop",
            "idle RSS over the empty tray app",
            10.0,
        ),
        Target::limit(
            "desktop tray app uses no CPU at rest, window closed (under 0.5 % of a core)",
            "desktop",
            "window closed: CPU at rest",
            0.5,
        ),
        // The history starts with the 100 timed notifications and the first one.
        Target::limit(
            "desktop tray app private memory flat as its history grows to 10,000 (under 5 %)",
            "desktop",
            "private memory growth, history 101 to 10000",
            5.0,
        ),
    ];
    let notes = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/NOTES.md"))
        .unwrap_or_default();
    let charts_dir = out.join("bench");
    let md = report::markdown(
        results,
        &sections,
        &charts,
        &targets,
        &notes,
        &charts_dir,
        "bench",
    )?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("BENCHMARKS.md"), md)?;
    std::fs::write(
        charts_dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    println!("report: {}", out.join("BENCHMARKS.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_runs_once_on_a_cluster_sized_for_it() {
        let cli = Cli::try_parse_from(["belfry-bench", "held", "--quick"]).expect("args");
        let Command::Held(c) = cli.scenario else {
            unreachable!("parsed as held")
        };
        let sizes = Sizes::from(&c);
        for kind in [Kind::Node, Kind::BelfryPostgres] {
            assert!(!runs(&kind_for("held", &kind, &sizes), "held"), "{kind:?}");
        }
        // `belfry-bench held` as it stands (Belfry, the default system) measures it too.
        assert_eq!(c.against, ["belfry"]);
        for kind in [Kind::Belfry, Kind::Cluster(3)] {
            let held = kind_for("held", &kind, &sizes);
            assert_eq!(held, Kind::Cluster(sizes.held.processes()));
            assert!(runs(&held, "held"));
        }
        assert_eq!(
            kind_for("fanout", &Kind::Cluster(3), &sizes),
            Kind::Cluster(3)
        );
    }
}
