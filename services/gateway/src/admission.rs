//! Admission of streams: a stream holds a model call for its whole length, so besides
//! `MAX_CONCURRENT_REQUESTS` (which counts a request only until its headers are sent) a
//! gateway relays at most `MAX_CONCURRENT_STREAMS` at once (beyond, 503
//! `streams_overloaded`) and one user at most `MAX_STREAMS_PER_USER` (beyond, 429
//! `too_many_streams`), both answered at once with `Retry-After`, never queued.
//!
//! The per-user count is this gateway's own: with N replicas a user may hold up to N
//! times the cap, one set on each.
//!
//! A streaming handler takes a permit before it starts the model call and lets the
//! response body carry it:
//!
//! ```ignore
//! let permit = state.admission.open_stream(&caller.user_id)?;
//! // ... start the stream ...
//! Ok(admission::holding(permit, sse.into_response()))
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::{self, Shed};
use crate::{ApiError, Settings};

/// Open streams by user; a user with none has no entry.
type OpenByUser = Arc<Mutex<HashMap<String, u32>>>;

pub struct Admission {
    /// `None`: no cap of its own (`MAX_CONCURRENT_STREAMS=0`).
    streams: Option<Arc<Semaphore>>,
    max_per_user: u32,
    /// As large as the number of users streaming now.
    per_user: OpenByUser,
}

impl Admission {
    pub fn new(settings: &Settings) -> Self {
        Self {
            streams: (settings.max_concurrent_streams > 0)
                .then(|| Arc::new(Semaphore::new(settings.max_concurrent_streams))),
            max_per_user: settings.max_streams_per_user,
            per_user: Arc::default(),
        }
    }

    /// A place for one more stream of `user_id`, or the refusal to answer at once.
    pub fn open_stream(&self, user_id: &str) -> Result<StreamPermit, ApiError> {
        let global = match &self.streams {
            Some(streams) => Some(Arc::clone(streams).try_acquire_owned().map_err(|_| {
                metrics::shed(Shed::Streams);
                ApiError::StreamsOverloaded
            })?),
            None => None,
        };
        let user = if self.max_per_user > 0 {
            let mut open = self
                .per_user
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = open.entry(user_id.to_owned()).or_insert(0);
            if *count >= self.max_per_user {
                metrics::shed(Shed::UserStreams);
                return Err(ApiError::TooManyStreams(self.max_per_user));
            }
            *count += 1;
            Some((Arc::clone(&self.per_user), user_id.to_owned()))
        } else {
            None
        };
        metrics::streams_open(1.0);
        Ok(StreamPermit {
            _global: global,
            user,
        })
    }
}

/// One open stream; dropping it frees its place.
pub struct StreamPermit {
    _global: Option<OwnedSemaphorePermit>,
    user: Option<(OpenByUser, String)>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        metrics::streams_open(-1.0);
        let Some((per_user, user_id)) = self.user.take() else {
            return;
        };
        let mut open = per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&user_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&user_id);
            }
        }
    }
}

/// The events of `events` as server-sent events (each made by `to_sse`, with
/// keep-alives), `permit` held until the stream ends or the client goes away.
pub fn sse_holding<E: Send + 'static>(
    permit: StreamPermit,
    events: mpsc::Receiver<E>,
    to_sse: fn(E) -> SseEvent,
) -> Response {
    let events = ReceiverStream::new(events).map(move |event| Ok::<_, Infallible>(to_sse(event)));
    let response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    holding(permit, response)
}

/// `response` with `permit` held until its body ends or the client goes away.
pub fn holding(permit: StreamPermit, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let admission = Admission::new(&Settings {
            max_concurrent_streams: 3,
            max_streams_per_user: 2,
            ..Settings::default()
        });
        let a1 = admission.open_stream("a");
        let a2 = admission.open_stream("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert!(matches!(
            admission.open_stream("a"),
            Err(ApiError::TooManyStreams(2))
        ));
        let b1 = admission.open_stream("b");
        assert!(b1.is_ok());
        assert!(matches!(
            admission.open_stream("c"),
            Err(ApiError::StreamsOverloaded)
        ));
        drop(a1);
        assert!(admission.open_stream("a").is_ok(), "a place came back");
        drop((a2, b1));
        assert!(
            admission
                .per_user
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty(),
            "no entry is kept for a user with no stream"
        );
    }
}
