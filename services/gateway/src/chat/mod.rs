//! The request path of one chat, start to end:
//!
//! ```text
//! prepare:  validate → filter (clean, block) ‖ history (earlier turns, as context)
//!           ‖ keyword (earlier messages relevant to the text: retrieval)
//!           → prompt → token (reserve an estimate)
//! model:    llm, whole (unary) or relayed as generated (stream)
//! close:    token (settle to the real usage, or refund) ‖ history (save both messages)
//! ```
//!
//! A step before the model (authentication's user, retrieval, a limiter) goes in
//! [`prepare`]; what happens to a finished turn goes in [`Turn::close`].
//!
//! The route handlers run every chat in a task of its own, so a client that hangs up
//! mid-chat cannot leave a reservation unsettled or a reply unsaved: a stream whose
//! client left is cancelled upstream at once, charged for what was generated, and saved
//! marked incomplete. A [`reservation::Reservation`] is settled exactly once by
//! construction: settling or refunding consumes it.

mod prepare;
mod prompt;
mod reservation;
mod retrieval;
mod stream;
mod types;
mod unary;

use prepare::{Turn, prepare};
pub use stream::{StreamEvent, StreamHead, chat_stream};
pub use types::{ChatRequest, ChatResponse, Policy, UsageBody};
pub use unary::chat;
// The /v1 API settles its own chats with the same exactly-once reservation.
pub(crate) use reservation::{Charge, Estimate, Reservation};
