//! This device's Belfry: settings, the local store, the connection, the popup policy and
//! the native notifier, behind one handle the shell (tray, window, commands) calls.

use crate::connection::{self, ConnectionConfig, ConnectionHandle, RequestError};
use crate::events::{ClientEvent, ConnectionStatus};
use crate::notifier::Notifier;
use crate::policy;
use crate::settings::{Dnd, Settings};
use crate::store::{HistoryQuery, LocalStore, LocalStoreError};
use belfry_protocol::api::Subscriptions;
use belfry_protocol::events::{self as ev, ReadRequest};
use belfry_protocol::{ErrorResponse, Notification};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Settings given on the command line or in the environment; they win over saved ones.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--server` / `BELFRY_SERVER`.
    pub server_url: Option<String>,
    /// `--token` / `BELFRY_TOKEN`.
    pub token: Option<String>,
}

/// Why a device operation failed, in words for the person.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The local store failed.
    #[error("{0}")]
    Store(#[from] LocalStoreError),
    /// Invalid settings.
    #[error("{0}")]
    Settings(String),
    /// The hub could not be reached or refused.
    #[error("{0}")]
    Hub(String),
}

/// The running client core of this device.
#[derive(Debug, Clone)]
pub struct Device {
    store: LocalStore,
    settings: watch::Sender<Settings>,
    connection: ConnectionHandle,
    http: reqwest::Client,
    popups: Arc<AtomicBool>,
}

/// The `sub` of a token, read without verifying (only to notice a change of account).
fn token_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    // base64url, with or without padding (JWTs have none, but a pasted token might).
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let payload = token.trim().split('.').nth(1)?;
    let bytes = URL_SAFE.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_owned)
}

impl Device {
    /// Opens the store in `data_dir`, applies the overrides, starts the connection and
    /// the popup pump. The shell receives everything on the returned channel.
    pub async fn start(
        data_dir: &Path,
        overrides: Overrides,
        config: ConnectionConfig,
    ) -> Result<(Device, mpsc::Receiver<ClientEvent>), DeviceError> {
        let store = LocalStore::open(data_dir).await?;
        let saved = store.settings().await?.unwrap_or_default();
        let mut settings = saved.clone();
        if let Some(url) = overrides.server_url {
            settings.server_url = url;
        }
        if let Some(token) = overrides.token {
            settings.token = token;
        }
        settings.validate().map_err(DeviceError::Settings)?;
        if settings != saved {
            Self::forget_if_account_changed(&store, &saved, &settings).await?;
            store.save_settings(&settings).await?;
        }
        let (settings_tx, settings_rx) = watch::channel(settings);
        let (core_tx, mut core_rx) = mpsc::channel(256);
        let (shell_tx, shell_rx) = mpsc::channel(256);
        let connection =
            connection::spawn(store.clone(), settings_rx.clone(), core_tx.clone(), config);
        let notifier = Notifier::new(shell_tx.clone());
        let popups = Arc::new(AtomicBool::new(true));
        let popups_on = popups.clone();

        // The pump: decide popups for what arrived, and pass everything on to the shell.
        let pump_settings = settings_rx;
        tokio::spawn(async move {
            let mut catching_up: Vec<Notification> = Vec::new();
            while let Some(event) = core_rx.recv().await {
                let now = policy::now_local();
                let settings = pump_settings.borrow().clone();
                let show = popups_on.load(Ordering::Relaxed);
                match &event {
                    ClientEvent::Stored {
                        notifications,
                        catch_up: true,
                    } => catching_up.extend(notifications.iter().cloned()),
                    ClientEvent::Stored {
                        notifications,
                        catch_up: false,
                    } if show => {
                        for popup in policy::popups(&settings, notifications, false, now) {
                            notifier.show(&popup).await;
                        }
                    }
                    ClientEvent::CaughtUp { .. } => {
                        let arrived = std::mem::take(&mut catching_up);
                        if show {
                            for popup in policy::popups(&settings, &arrived, true, now) {
                                notifier.show(&popup).await;
                            }
                        }
                    }
                    _ => {}
                }
                if shell_tx.send(event).await.is_err() {
                    break;
                }
            }
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| DeviceError::Hub(e.to_string()))?;
        Ok((
            Device {
                store,
                settings: settings_tx,
                connection,
                http,
                popups,
            },
            shell_rx,
        ))
    }

    async fn forget_if_account_changed(
        store: &LocalStore,
        old: &Settings,
        new: &Settings,
    ) -> Result<(), DeviceError> {
        let same_server = old.server_url.trim() == new.server_url.trim();
        let same_user = token_subject(&old.token) == token_subject(&new.token);
        let account_changed = !(same_server && same_user);
        if !old.token.is_empty() && account_changed {
            // Another hub or another user: the cursor and history belong to the old one.
            store.reset().await?;
        }
        Ok(())
    }

    /// Stops native popups (a headless follower); history and events go on.
    pub fn disable_popups(&self) {
        self.popups.store(false, Ordering::Relaxed);
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.settings.borrow().clone()
    }

    /// Validates, saves and applies new settings (reconnecting if the server or token
    /// changed).
    pub async fn update_settings(&self, new: Settings) -> Result<(), DeviceError> {
        new.validate().map_err(DeviceError::Settings)?;
        let old = self.settings();
        if new == old {
            return Ok(());
        }
        Self::forget_if_account_changed(&self.store, &old, &new).await?;
        self.store.save_settings(&new).await?;
        self.settings.send_replace(new);
        Ok(())
    }

    /// Sets do-not-disturb.
    pub async fn set_dnd(&self, dnd: Dnd) -> Result<(), DeviceError> {
        let mut s = self.settings();
        s.dnd = dnd;
        self.update_settings(s).await
    }

    /// The connection status.
    pub fn status(&self) -> ConnectionStatus {
        self.connection.status()
    }

    /// Drops the connection and connects again at once.
    pub async fn reconnect_now(&self) {
        self.connection.reconnect_now().await;
    }

    /// The local history, newest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<Vec<Notification>, DeviceError> {
        Ok(self.store.history(query).await?)
    }

    /// How many are unread.
    pub async fn unread_count(&self) -> Result<u64, DeviceError> {
        Ok(self.store.unread_count().await?)
    }

    /// The topics seen in the history.
    pub async fn history_topics(&self) -> Result<Vec<String>, DeviceError> {
        Ok(self.store.history_topics().await?)
    }

    /// Marks notifications read here and on the hub (queued if offline). Returns how many
    /// changed locally.
    pub async fn mark_read(&self, request: ReadRequest) -> Result<u64, DeviceError> {
        let changed = self.store.mark_read(&request).await?;
        let data = serde_json::to_value(&request).unwrap_or_default();
        match self.connection.request(ev::READ, data).await {
            Ok(_) => {}
            Err(RequestError::Refused(why)) => tracing::warn!(%why, "the hub refused a read"),
            Err(_) => self.store.queue_read(&request).await?,
        }
        Ok(changed)
    }

    /// Marks everything held read.
    pub async fn mark_all_read(&self) -> Result<u64, DeviceError> {
        match self.store.newest_id().await? {
            Some(up_to) => self.mark_read(ReadRequest::UpTo { up_to }).await,
            None => Ok(0),
        }
    }

    fn api(&self, path: &str) -> (String, String) {
        let s = self.settings();
        (
            format!("{}/api/v1{path}", s.server_url.trim().trim_end_matches('/')),
            s.token.trim().to_owned(),
        )
    }

    async fn subscriptions_call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<Vec<String>, DeviceError> {
        let (url, token) = self.api(path);
        let response = self
            .http
            .request(method, &url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| DeviceError::Hub(format!("Cannot reach the hub: {e}")))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            serde_json::from_str::<Subscriptions>(&text)
                .map(|s| s.topics)
                .map_err(|e| DeviceError::Hub(format!("Unexpected answer from the hub: {e}")))
        } else {
            Err(DeviceError::Hub(
                serde_json::from_str::<ErrorResponse>(&text)
                    .map(|e| e.error.message)
                    .unwrap_or_else(|_| format!("The hub answered {status}")),
            ))
        }
    }

    /// The user's topic subscriptions (stored on the hub, shared by every device).
    pub async fn subscriptions(&self) -> Result<Vec<String>, DeviceError> {
        self.subscriptions_call(reqwest::Method::GET, "/subscriptions")
            .await
    }

    /// Subscribes to a topic.
    pub async fn subscribe(&self, topic: &str) -> Result<Vec<String>, DeviceError> {
        belfry_protocol::validate_topic(topic).map_err(DeviceError::Settings)?;
        self.subscriptions_call(reqwest::Method::PUT, &format!("/subscriptions/{topic}"))
            .await
    }

    /// Unsubscribes from a topic.
    pub async fn unsubscribe(&self, topic: &str) -> Result<Vec<String>, DeviceError> {
        belfry_protocol::validate_topic(topic).map_err(DeviceError::Settings)?;
        self.subscriptions_call(reqwest::Method::DELETE, &format!("/subscriptions/{topic}"))
            .await
    }

    /// Asks the hub for a catch-up from the persisted cursor again.
    pub async fn resync(&self) -> Result<(), DeviceError> {
        let cursor = self.store.cursor().await?;
        self.connection
            .request(ev::SYNC, json!({ "cursor": cursor }))
            .await
            .map(drop)
            .map_err(|e| DeviceError::Hub(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_read_from_any_jwt_shaped_token() {
        // {"alg":"HS256"} . {"sub":"alice","exp":1} . signature
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.c2ln";
        assert_eq!(token_subject(token).as_deref(), Some("alice"));
        // The same payload padded, as a person may paste it.
        let padded = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0=.c2ln";
        assert_eq!(token_subject(padded).as_deref(), Some("alice"));
        assert_eq!(token_subject("not-a-token"), None);
        assert_eq!(token_subject("a.!!!.c"), None);
    }
}
