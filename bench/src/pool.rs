//! Many subscribers in one process, each reconnecting on its own (with jittered,
//! growing delays, resuming from its cursor) until the pool stops.

use crate::client::{Counters, Ended, Subscriber, Target};
use crate::latency::Latencies;
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the pool's subscribers behave.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Longest wait to connect: TCP and WebSocket, then each step of the Engine.IO and
    /// Socket.IO handshake.
    pub connect_timeout: Duration,
    /// First delay before a reconnect; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay before a reconnect.
    pub reconnect_max: Duration,
    /// Keep every id held (exact repeat counting, for tests).
    pub keep_ids: bool,
    /// Reconnect after a refused handshake too.
    pub retry_refused: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            keep_ids: false,
            retry_refused: false,
        }
    }
}

/// Running subscribers.
#[derive(Debug)]
pub struct Pool {
    /// Summed over every subscriber, live.
    pub counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Subscriber>>,
}

impl Pool {
    /// Starts one subscriber per target, each from its cursor.
    pub fn spawn(targets: Vec<(Target, Option<u64>)>, config: &PoolConfig) -> Pool {
        let mut pool = Pool::empty();
        pool.add(targets, config);
        pool
    }

    /// A pool with no subscribers yet.
    pub fn empty() -> Pool {
        Pool::with_counters(Counters::default())
    }

    /// A pool with no subscribers yet whose subscribers record the latency of timed
    /// notifications into `latency`.
    pub fn measuring(latency: Arc<Latencies>) -> Pool {
        Pool::with_counters(Counters::measuring(latency))
    }

    fn with_counters(counters: Counters) -> Pool {
        Pool {
            counters: Arc::new(counters),
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Starts more subscribers (to ramp up in steps).
    pub fn add(&mut self, targets: Vec<(Target, Option<u64>)>, config: &PoolConfig) {
        for (target, cursor) in targets {
            let mut sub = Subscriber::new(target, cursor, config.keep_ids);
            sub.counters = self.counters.clone();
            let stopped = self.stop.subscribe();
            self.tasks
                .push(tokio::spawn(run(sub, config.clone(), stopped)));
        }
    }

    /// How many subscribers the pool runs.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the pool runs none.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// How many subscribers are connected now.
    pub fn connected(&self) -> u64 {
        self.counters.connected.load(Relaxed)
    }

    /// How many subscribers are connected and caught up now.
    pub fn up_to_date(&self) -> u64 {
        self.counters.up_to_date.load(Relaxed)
    }

    /// Distinct notifications held, summed.
    pub fn distinct(&self) -> u64 {
        self.counters.distinct.load(Relaxed)
    }

    /// Stops every subscriber (each closes its connection) and returns them.
    pub async fn stop(self) -> Vec<Subscriber> {
        self.stop.send_replace(true);
        let mut subs = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            subs.push(t.await.expect("subscriber task"));
        }
        subs
    }
}

async fn run(
    mut sub: Subscriber,
    config: PoolConfig,
    mut stopped: watch::Receiver<bool>,
) -> Subscriber {
    let mut delay = config.reconnect_min;
    loop {
        if *stopped.borrow() {
            return sub;
        }
        let connects = sub.tally.connects;
        let stop = {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let ended = sub.run_once(config.connect_timeout, stop).await;
        if let Ended::Refused(why) | Ended::Closed(why) = &ended {
            sub.counters.ended(why);
        }
        match ended {
            Ended::Stopped => return sub,
            Ended::Refused(_) if !config.retry_refused => return sub,
            Ended::Refused(_) | Ended::Closed(_) => {}
        }
        if sub.tally.connects > connects {
            delay = config.reconnect_min;
        }
        // Equal jitter: half the delay fixed, half random.
        let half = delay / 2;
        let wait = half + rand::thread_rng().gen_range(Duration::ZERO..=half);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|s| *s) => return sub,
        }
        delay = (delay * 2).min(config.reconnect_max);
    }
}
