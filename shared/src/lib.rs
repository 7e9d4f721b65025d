//! Belfry's wire protocol: the types, event names and validation rules shared by the
//! hub and every client.
//!
//! Everything a client needs to talk to a Belfry hub is here, and nothing else: the
//! notification object ([`Notification`]), the publish request and its validation
//! ([`PublishRequest`], [`PublishRequest::validate`]), the Socket.IO event names
//! ([`events`]) and payloads, the HTTP response bodies ([`api`]) and the stable error
//! codes ([`ErrorCode`]). `docs/PROTOCOL.md` describes the same contract in prose.
#![warn(missing_docs)]

pub mod api;
mod error;
pub mod events;
mod notification;
mod publish;
mod target;
mod topic;

pub use error::{ErrorBody, ErrorCode, ErrorResponse};
pub use notification::{Action, Notification, Priority};
pub use publish::{
    DEFAULT_EVENT, PublishRequest, PublishResponse, ValidPublish, limits, validate_url,
};
pub use target::{Target, TargetError, validate_topic, validate_user_id};
pub use topic::TopicPatterns;
