//! Fixture for the client core's tests: the real hub (belfry-testkit: the built binary,
//! killable and restartable) and a started `Device` that records what it reported.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use belfry_client::{ClientEvent, ConnectionConfig, ConnectionState, Device, Overrides};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

pub use belfry_testkit::{Hub, KEY, SECRET, WAIT, free_port, token};

pub fn fast_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_secs(3),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        auth_retry: Duration::from_secs(60),
    }
}

/// Drains every device until `done` holds (checked every 50 ms), for at most [`WAIT`].
pub async fn settle(devices: &mut [TestDevice], what: &str, done: impl Fn(&[TestDevice]) -> bool) {
    settle_within(devices, what, WAIT, done).await;
}

/// [`settle`] for at most `limit`.
pub async fn settle_within(
    devices: &mut [TestDevice],
    what: &str,
    limit: Duration,
    done: impl Fn(&[TestDevice]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        devices.iter_mut().for_each(TestDevice::drain);
        if done(devices) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A device and everything it reported.
pub struct TestDevice {
    pub device: Device,
    pub events: mpsc::Receiver<ClientEvent>,
    /// Every id reported as newly stored, in order (a repeat would be a bug).
    pub stored: Vec<u64>,
}

impl TestDevice {
    pub async fn start(dir: &Path, url: &str, token: &str) -> TestDevice {
        let (device, events) = Device::start(
            dir,
            Overrides {
                server_url: Some(url.to_owned()),
                token: Some(token.to_owned()),
            },
            fast_config(),
        )
        .await
        .unwrap();
        device.disable_popups();
        TestDevice {
            device,
            events,
            stored: Vec::new(),
        }
    }

    pub async fn next(&mut self) -> ClientEvent {
        let ev = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("events open");
        self.record(&ev);
        ev
    }

    fn record(&mut self, ev: &ClientEvent) {
        if let ClientEvent::Stored { notifications, .. } = ev {
            self.stored.extend(notifications.iter().map(|n| n.id));
        }
    }

    /// Takes every event already reported, without waiting (a device whose events are
    /// never taken stalls once its channel is full).
    pub fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.record(&ev);
        }
    }

    /// Every id the device's store holds, paging back through its history.
    pub async fn held(&self) -> BTreeSet<u64> {
        let mut held = BTreeSet::new();
        let mut offset = 0;
        loop {
            let query = belfry_client::HistoryQuery {
                limit: Some(1000),
                offset: Some(offset),
                ..Default::default()
            };
            let page = self.device.history(&query).await.unwrap();
            if page.is_empty() {
                return held;
            }
            offset += u32::try_from(page.len()).unwrap();
            held.extend(page.iter().map(|n| n.id));
        }
    }

    /// Waits until the given state.
    pub async fn until_state(&mut self, state: ConnectionState) -> String {
        if self.device.status().state == state {
            return self.device.status().detail;
        }
        loop {
            if let ClientEvent::Status(s) = self.next().await
                && s.state == state
            {
                return s.detail;
            }
        }
    }

    /// Waits until every id in `ids` was reported stored.
    pub async fn until_stored(&mut self, ids: &BTreeSet<u64>) {
        while !ids.iter().all(|id| self.stored.contains(id)) {
            self.next().await;
        }
    }

    /// Asserts no id was reported twice.
    pub fn assert_no_repeats(&self) {
        let unique: BTreeSet<_> = self.stored.iter().collect();
        assert_eq!(
            unique.len(),
            self.stored.len(),
            "an id was reported twice: {:?}",
            self.stored
        );
    }
}
