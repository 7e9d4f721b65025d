//! Connections held: more than one process may open files for, so the hub runs as
//! several nodes on one PostgreSQL and one Redis, and the load generator as several
//! processes (this binary again: `belfry-bench hold-worker`, driven over its stdin and
//! stdout), each holding its share with its connections spread over every node.
//!
//! The connections are added in steps; after each, the resident memory of all the nodes
//! together (bytes per connection from the least-squares slope). Then single publishes
//! to `all` on the first node (the others read them from the store's feed): each worker records when each of its connections got it
//! and sends its record back, so the time until the last of all of them holds it is
//! measured across processes (one clock: they share this machine).

use super::{Fleet, Signer, most_connections, room_for, sources_from, wait_for};
use anyhow::{Context, bail};
use belfry_bench::latency::{self, Latencies, Summary};
use belfry_bench::pool::Pool;
use belfry_bench::procfs;
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Sizes.
pub struct Held {
    /// Connections in all.
    pub connections: usize,
    /// The most connections one process holds, hub node or load generator (the
    /// open-file limit, less room for the process's own files).
    pub per_process: usize,
    /// Steps to add them in (memory is read after each).
    pub steps: usize,
    /// How long to let the nodes settle before reading their memory.
    pub settle: Duration,
    /// Single publishes to all, one after the other.
    pub singles: usize,
}

impl Held {
    /// The full size: 100,000 connections, as many per process as the open-file limit
    /// lets this machine open.
    pub fn full() -> Held {
        Held {
            connections: 100_000,
            per_process: most_connections(),
            steps: 5,
            settle: Duration::from_secs(5),
            singles: 3,
        }
    }

    /// How many hub nodes, and as many load-generator processes, hold them (at least
    /// two: the scenario is about several).
    pub fn processes(&self) -> usize {
        self.connections.div_ceil(self.per_process.max(1)).max(2)
    }
}

const S: &str = "held";

/// Why the hub runs as several nodes, in the report.
fn why(sizes: &Held, nodes: usize) -> String {
    format!(
        "{} connections over {nodes} hub nodes on one PostgreSQL and one Redis, and {nodes} \
         load-generator processes: each process holds at most {} connections ({}). \
         Clients connect to the nodes directly, spread evenly (through nginx, every proxied \
         connection costs its worker two files). Publishes go to the first node; the \
         others read them from the shared store's feed.",
        sizes.connections,
        sizes.per_process,
        if sizes.per_process == most_connections() {
            "the open-file limit here, less room for a node's listener, store and Redis \
             connections"
        } else {
            "this run's size"
        },
    )
}

pub async fn run(
    system: &System,
    secret: &str,
    sizes: &Held,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let n = sizes.connections;
    let k = sizes.processes();
    let hubs = system.addrs().to_vec();
    if hubs.len() < k {
        bail!(
            "{n} connections need {k} nodes; the system has {}",
            hubs.len()
        );
    }
    let mut workers = Vec::with_capacity(k);
    for w in 0..k {
        let (first, end) = (w * n / k, (w + 1) * n / k);
        let len = end - first;
        workers.push(Worker::spawn(&hubs, secret, first, len, &sources(w, len))?);
    }
    let r = measure(system, sizes, &mut workers, out).await;
    let generator: u64 = workers
        .iter()
        .filter_map(|w| w.child.id().and_then(procfs::rss_kib))
        .sum();
    let stopped = futures_util::future::join_all(
        workers
            .iter_mut()
            .map(|w| w.ask("stop", "stopped", Duration::from_secs(60))),
    )
    .await;
    for mut w in workers {
        let _ = w.child.start_kill();
        let _ = w.child.wait().await;
    }
    r?;
    for s in stopped {
        s?;
    }
    out.note(S, why(sizes, k));
    out.note(
        S,
        format!(
            "the load generator's {k} processes: {generator} KiB resident together, holding \
             {n} connections ({:.1} KB each)",
            generator as f64 * 1.024 / n.max(1) as f64
        ),
    );
    Ok(())
}

async fn measure(
    system: &System,
    sizes: &Held,
    workers: &mut [Worker],
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let n = sizes.connections;
    let steps = sizes.steps.max(1);
    tokio::time::sleep(sizes.settle).await;
    let base = system.rss_kib().unwrap_or(0);
    let mut points = vec![(0_usize, base)];
    let mut ramp = Duration::ZERO;
    println!("{S}: connections | RSS KiB, all nodes | per connection");
    for step in 1..=steps {
        let started = Instant::now();
        let up = on_all(workers, Duration::from_secs(900), |w| {
            (format!("grow {}", w.len * step / steps), "up")
        })
        .await?;
        ramp += started.elapsed();
        let held: usize = up.iter().map(|u| u.parse::<usize>().unwrap_or(0)).sum();
        tokio::time::sleep(sizes.settle).await;
        let rss = system.rss_kib().unwrap_or(0);
        let per = rss.saturating_sub(base) as f64 * 1.024 / held.max(1) as f64;
        println!("{S}: {held:>11} | {rss:>18} | {per:>9.1} KB");
        points.push((held, rss));
    }
    let &(held, rss) = points.last().context("no step")?;
    if held != n {
        bail!("only {held} of {n} connections up to date");
    }
    out.figure(
        S,
        "connections held, all nodes",
        "connections",
        held as f64,
        Better::Higher,
    );
    out.figure(
        S,
        "hub memory per connection, all nodes (slope)",
        "KB",
        super::idle::slope(&points) * 1.024,
        Better::Lower,
    );
    out.figure(
        S,
        &format!("resident memory of all nodes with {n} connections"),
        "MB",
        super::idle::megabytes(rss),
        Better::Lower,
    );
    out.figure(
        S,
        "connects per second, adding them in steps",
        "1/s",
        n as f64 / ramp.as_secs_f64().max(1e-3),
        Better::Higher,
    );
    out.line("held-memory", super::idle::memory_line(&points));

    // Single publishes to all: the median of the times until the last connection has it.
    let publisher = system.publisher();
    let mut runs: Vec<(Summary, Vec<(f64, f64)>)> = Vec::new();
    for _ in 0..sizes.singles.max(1) {
        on_all(workers, Duration::from_secs(30), |_| {
            ("arm".into(), "armed")
        })
        .await?;
        let due = latency::now_micros();
        publisher
            .try_publish(json!({"to": ["all"], "title": latency::title(due), "body": "held"}))
            .await
            .map_err(|e| anyhow::anyhow!("publish refused: {e}"))?;
        let records = futures_util::future::try_join_all(
            workers
                .iter_mut()
                .map(|w| w.answer("held", Duration::from_secs(120))),
        )
        .await?;
        let all = Latencies::new();
        for record in records {
            for pair in record.split(',').filter(|p| !p.is_empty()) {
                let (micros, count) = pair.split_once(':').context("a latency record")?;
                all.add(micros.parse()?, count.parse()?);
            }
        }
        let summary = all.summary();
        if summary.count != n as u64 {
            bail!("{} of {n} connections got the publish", summary.count);
        }
        println!("{S}: one publish to {n}: {summary}");
        runs.push((summary, all.cdf(50)));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    runs.sort_by(|a, b| a.0.max_ms.total_cmp(&b.0.max_ms));
    let (median, cdf) = runs[runs.len() / 2].clone();
    out.figure(
        S,
        &format!(
            "one publish: time until all {n} have it (median of {})",
            runs.len()
        ),
        "ms",
        median.max_ms,
        Better::Lower,
    );
    out.figure(
        S,
        "one publish: median delivery",
        "ms",
        median.p50_ms,
        Better::Lower,
    );
    out.line(
        "held-cdf",
        cdf.into_iter().map(|(ms, q)| (ms, q * 100.0)).collect(),
    );
    Ok(())
}

/// The loopback addresses worker `w` connects `len` connections from (its own, so that
/// no two processes share the ports of one address).
fn sources(w: usize, len: usize) -> Vec<IpAddr> {
    sources_from(Ipv4Addr::new(127, 1, w as u8, 1), len)
}

/// One load-generator process, as the scenario drives it.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// The connections it holds when fully grown.
    len: usize,
}

impl Worker {
    /// `belfry-bench hold-worker` for connections `first..first + len`, from `sources`.
    fn spawn(
        hubs: &[SocketAddr],
        secret: &str,
        first: usize,
        len: usize,
        sources: &[IpAddr],
    ) -> anyhow::Result<Worker> {
        let hubs: Vec<String> = hubs.iter().map(SocketAddr::to_string).collect();
        let sources: Vec<String> = sources.iter().map(IpAddr::to_string).collect();
        let mut child = Command::new(std::env::current_exe().context("this binary")?)
            .arg("hold-worker")
            .args(["--hubs", &hubs.join(",")])
            .args(["--secret", secret])
            .args(["--first", &first.to_string()])
            .args(["--count", &len.to_string()])
            .args(["--sources", &sources.join(",")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a load-generator process")?;
        Ok(Worker {
            stdin: child.stdin.take().context("its stdin")?,
            lines: BufReader::new(child.stdout.take().context("its stdout")?).lines(),
            child,
            len,
        })
    }

    /// Sends `command`, then waits for its answer starting with `word`.
    async fn ask(&mut self, command: &str, word: &str, limit: Duration) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        self.answer(word, limit).await
    }

    /// The next line, which must start with `word`: the rest of it.
    async fn answer(&mut self, word: &str, limit: Duration) -> anyhow::Result<String> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .with_context(|| format!("no {word:?} from a load-generator process in {limit:?}"))??
            .context("a load-generator process ended")?;
        match line.split_once(' ').unwrap_or((&line, "")) {
            (w, rest) if w == word => Ok(rest.to_owned()),
            _ => bail!("a load-generator process said {line:?} (expected {word:?})"),
        }
    }
}

/// Asks every worker at once; each answer's rest, in order.
async fn on_all(
    workers: &mut [Worker],
    limit: Duration,
    command: impl Fn(&Worker) -> (String, &'static str),
) -> anyhow::Result<Vec<String>> {
    futures_util::future::try_join_all(workers.iter_mut().map(|w| {
        let (command, word) = command(w);
        async move { w.ask(&command, word, limit).await }
    }))
    .await
}

/// A load-generator process's arguments (`belfry-bench hold-worker`).
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Every node, in order: connection `i` goes to node `i % nodes`.
    #[arg(long, value_delimiter = ',', required = true)]
    hubs: Vec<SocketAddr>,
    /// The token secret.
    #[arg(long)]
    secret: String,
    /// The first connection's index (its user is `held{index}`).
    #[arg(long)]
    first: usize,
    /// How many connections, at most.
    #[arg(long)]
    count: usize,
    /// The loopback addresses to connect from, in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    sources: Vec<IpAddr>,
}

/// The load-generator process: reads commands on stdin, one per line, and answers each
/// on stdout: `grow N` (hold N connections, each up to date: `up N`), `arm` (`armed`,
/// then, once every connection got one timed notification, `held` and the latencies as
/// `micros:count` pairs), `stop` (`stopped`, and it exits).
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    room_for(args.count)?;
    let signer = Signer::new(&args.secret);
    let mut hubs = args.hubs.clone();
    let turn = args.first % hubs.len();
    hubs.rotate_left(turn);
    let users = (args.first..args.first + args.count).map(|i| format!("held{i}"));
    let fleet = Fleet::over(hubs, &signer, users, 1, args.sources);
    let latencies = Arc::new(Latencies::new());
    let mut pool = Pool::measuring(latencies.clone());
    // Commands come from a thread of their own (the runtime is built without tokio's
    // stdio); answers are a line each, written at once.
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let answer = match line.split_once(' ').unwrap_or((&line, "")) {
            ("grow", to) => {
                let to = to.parse::<usize>()?.min(args.count);
                fleet
                    .grow(&mut pool, to, 1_000)
                    .await
                    .map(|()| format!("up {}", pool.up_to_date()))
            }
            ("arm", _) => {
                latencies.reset();
                say("armed")?;
                let expected = pool.len() as u64;
                wait_for(
                    "every connection to hold it",
                    Duration::from_secs(110),
                    || latencies.count() >= expected,
                )
                .await
                .map(|()| {
                    let pairs: Vec<String> = latencies
                        .recorded()
                        .iter()
                        .map(|(micros, count)| format!("{micros}:{count}"))
                        .collect();
                    format!("held {}", pairs.join(","))
                })
            }
            ("stop", _) => break,
            _ => Err(anyhow::anyhow!("unknown command {line:?}")),
        };
        match answer {
            Ok(answer) => say(&answer)?,
            Err(e) => say(&format!("error {e:#}"))?,
        }
    }
    pool.stop().await;
    say("stopped")
}

fn say(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connections_need_a_node_and_a_worker_per_process_limit() {
        let mut held = Held::full();
        held.per_process = 19_000;
        assert_eq!(held.processes(), 6);
        held.connections = 2_000;
        held.per_process = 1_000;
        assert_eq!(held.processes(), 2);
        held.connections = 500;
        assert_eq!(held.processes(), 2, "always several");
    }
}
