//! Marking notifications read, from any device or over HTTP: stored for the user, then
//! told to the user's other devices so every one shows the same.

use crate::auth::UserClaims;
use crate::error::HubError;
use crate::state::AppState;
use crate::store::{Read, ReadSelection};
use belfry_protocol::events::{self, ReadRequest};
use socketioxide::adapter::Adapter;
use socketioxide::socket::Sid;

/// Marks notifications read for `claims.sub` and tells the user's other devices (all of
/// them but `from`, the socket it came from). Answers how many changed.
pub async fn mark_read<A: Adapter>(
    state: &AppState<A>,
    claims: &UserClaims,
    request: ReadRequest,
    from: Option<Sid>,
) -> Result<u64, HubError> {
    request.validate()?;
    let selection = match &request {
        ReadRequest::Ids { ids } => ReadSelection::Ids(ids.clone()),
        ReadRequest::UpTo { up_to } => ReadSelection::UpTo(*up_to),
    };
    let viewer = state
        .store
        .viewer(&claims.sub, &claims.allowed_topics())
        .await?;
    let marked = state
        .store
        .writer()
        .submit(Read { viewer, selection })
        .await?;
    if marked > 0 {
        state
            .devices
            .emit(&claims.sub, from, events::READ, &request)
            .await;
    }
    Ok(marked)
}
