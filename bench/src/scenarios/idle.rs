//! Idle connections: the system's resident memory with 0, then more and more connected,
//! caught-up, idle sockets; bytes per connection from the least-squares slope.

use super::{Fleet, Signer, most_connections, room_for};
use belfry_bench::pool::Pool;
use belfry_bench::procfs;
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use std::time::{Duration, Instant};

/// Sizes.
pub struct Idle {
    /// Connection counts, ascending.
    pub steps: Vec<usize>,
    /// How long to let the system settle at each step before reading its memory.
    pub settle: Duration,
}

const S: &str = "idle";

pub async fn run(
    system: &System,
    signer: &Signer,
    sizes: &Idle,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let most_here = most_connections();
    let (steps, beyond): (Vec<usize>, Vec<usize>) =
        sizes.steps.iter().partition(|&&s| s <= most_here);
    let mut steps = steps;
    if !beyond.is_empty() {
        if steps.last().is_none_or(|&l| l < most_here) {
            steps.push(most_here / 1_000 * 1_000);
        }
        out.note(
            S,
            format!(
                "{beyond:?} connections not measurable on this machine: one process may open \
                 at most {} files (hard limit), so {} was the largest step",
                most_here + 1_000,
                steps.last().copied().unwrap_or(0)
            ),
        );
    }
    let most = steps.iter().copied().max().unwrap_or(0);
    room_for(most)?;
    tokio::time::sleep(sizes.settle).await;
    let base = system.rss_kib().unwrap_or(0);
    let fleet = Fleet::new(system, signer, "idle", most, 1, most);
    let mut pool = Pool::empty();
    let me = std::process::id();
    let mut points = vec![(0_usize, base)];
    println!("{S}: connections | RSS KiB | per connection | load generator RSS KiB");
    for &step in &steps {
        let started = Instant::now();
        fleet.grow(&mut pool, step, 1_000).await?;
        let ramp = started.elapsed();
        tokio::time::sleep(sizes.settle).await;
        let rss = system.rss_kib().unwrap_or(0);
        let per = rss.saturating_sub(base) as f64 * 1.024 / step as f64;
        println!(
            "{S}: {step:>11} | {rss:>7} | {per:>11.1} KB | {:>10}   (up to date {}, ramp {:.1} s)",
            procfs::rss_kib(me).unwrap_or(0),
            pool.up_to_date(),
            ramp.as_secs_f64()
        );
        if step == 5_000 {
            out.figure(
                S,
                "memory per idle connection at 5,000",
                "KB",
                per,
                Better::Lower,
            );
        }
        if step == 10_000 {
            out.figure(
                S,
                "resident memory at 10,000 connections",
                "MB",
                megabytes(rss),
                Better::Lower,
            );
        }
        points.push((step, rss));
    }
    let held = pool.up_to_date() as usize;
    let generator = procfs::rss_kib(me).unwrap_or(0);
    pool.stop().await;
    out.figure(
        S,
        "resident memory with no connection",
        "MB",
        megabytes(base),
        Better::Lower,
    );
    out.figure(
        S,
        "memory per idle connection (slope)",
        "KB",
        slope(&points) * 1.024,
        Better::Lower,
    );
    out.figure(
        S,
        "connections held",
        "connections",
        held as f64,
        Better::Higher,
    );
    out.note(
        S,
        format!(
            "load generator: {generator} KiB resident holding {most} connections ({:.1} KB each)",
            generator as f64 * 1.024 / most.max(1) as f64
        ),
    );
    out.line("idle-memory", memory_line(&points));
    if held != most {
        anyhow::bail!("only {held} of {most} connections held");
    }
    Ok(())
}

/// KiB as MB (10^6 bytes), as the reports give memory.
pub(super) fn megabytes(kib: u64) -> f64 {
    kib as f64 * 1.024 / 1000.0
}

/// Memory readings `(connections, KiB)` as a chart line of MB over connections.
pub(super) fn memory_line(points: &[(usize, u64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|&(c, kib)| (c as f64, megabytes(kib)))
        .collect()
}

/// Least-squares slope of `y` (KiB) over `x` (connections).
pub(super) fn slope(points: &[(usize, u64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(sx, sy), &(x, y)| {
        (sx + x as f64, sy + y as f64)
    });
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
        let dx = x as f64 - mx;
        (num + dx * (y as f64 - my), den + dx * dx)
    });
    if den == 0.0 { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slope_is_the_cost_of_one_more_connection() {
        let points = [(0, 1000), (1000, 31_000), (2000, 61_000)];
        assert!((super::slope(&points) - 30.0).abs() < 1e-9);
        assert_eq!(super::slope(&[(5, 7)]), 0.0);
    }
}
