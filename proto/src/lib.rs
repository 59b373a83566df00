//! Generated code for the `chat.v1` gRPC contract. Never edit by hand: change
//! `proto/chat/v1/chat.proto` instead.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("chat.v1");
}

pub use v1::*;
