//! Filter service (:50052): cleans a text and decides whether it may reach the model.
//!
//! Cleaning: Unicode NFKC, control and invisible formatting characters dropped,
//! whitespace collapsed (paragraph breaks kept), trimmed. Blocking: a configurable list
//! of words and phrases matched as whole words, case-insensitively, so `foo` blocks
//! "foo bar" but not "food"; Chinese and Japanese entries match inside running text,
//! since those scripts do not separate words with spaces.

mod blocklist;
mod clean;

use std::future::Future;

use chat_proto::filter_service_server::{FilterService, FilterServiceServer};
use chat_proto::{FilterRequest, FilterResponse};
use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

pub use blocklist::Blocklist;
pub use clean::clean;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server binds (`FILTER_LISTEN`).
    pub filter_listen: String,
    /// Address of the Prometheus metrics endpoint, `GET /metrics`
    /// (`FILTER_METRICS_LISTEN`; empty turns it off).
    pub filter_metrics_listen: String,
    /// Words and phrases that block a text (`BLOCKED_WORDS`, comma-separated). The
    /// default keeps the original's demo entry so a blocked text can be tried at once.
    #[serde(deserialize_with = "chat_common::settings::comma_list")]
    pub blocked_words: Vec<String>,
    /// Longest text accepted, in characters after cleaning (`MAX_TEXT_CHARS`).
    pub max_text_chars: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            filter_listen: "0.0.0.0:50052".to_owned(),
            filter_metrics_listen: "0.0.0.0:9052".to_owned(),
            blocked_words: vec!["foo".to_owned()],
            max_text_chars: 8000,
        }
    }
}

/// The gRPC service.
pub struct Filter {
    blocklist: Blocklist,
    max_text_chars: usize,
}

impl Filter {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            blocklist: Blocklist::new(&settings.blocked_words)?,
            max_text_chars: settings.max_text_chars,
        })
    }

    /// The verdict on one text; `Err` for texts that are not acceptable input at all.
    pub fn check(&self, text: &str) -> Result<FilterResponse, Status> {
        let cleaned = clean(text);
        if cleaned.is_empty() {
            return Err(Status::invalid_argument("text is empty"));
        }
        let chars = cleaned.chars().count();
        if chars > self.max_text_chars {
            return Err(Status::invalid_argument(format!(
                "text is {chars} characters long; the limit is {}",
                self.max_text_chars
            )));
        }
        Ok(match self.blocklist.find(&cleaned) {
            Some(matched) => FilterResponse {
                reason: format!("contains the blocked phrase \"{matched}\""),
                matched: matched.to_owned(),
                blocked: true,
                cleaned,
            },
            None => FilterResponse {
                cleaned,
                ..FilterResponse::default()
            },
        })
    }
}

#[tonic::async_trait]
impl FilterService for Filter {
    async fn filter(
        &self,
        request: Request<FilterRequest>,
    ) -> Result<Response<FilterResponse>, Status> {
        let verdict = self.check(&request.get_ref().text)?;
        if verdict.blocked {
            tracing::info!(matched = %verdict.matched, "text blocked");
        }
        Ok(Response::new(verdict))
    }
}

/// Serves the filter on `listener` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.filter_metrics_listen).await?;
    let filter = Filter::new(&settings)?;
    tracing::info!(
        blocked_words = settings.blocked_words.len(),
        max_text_chars = settings.max_text_chars,
        "filter ready"
    );
    let (reporter, health) = chat_common::grpc::health();
    reporter.set_serving::<FilterServiceServer<Filter>>().await;
    let router = chat_common::grpc::server()
        .add_service(health)
        .add_service(FilterServiceServer::new(filter));
    chat_common::grpc::serve(router, listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(words: &[&str]) -> anyhow::Result<Filter> {
        Filter::new(&Settings {
            blocked_words: words.iter().map(|word| (*word).to_owned()).collect(),
            max_text_chars: 20,
            ..Settings::default()
        })
    }

    #[test]
    fn the_original_example_is_cleaned() -> anyhow::Result<()> {
        let verdict = filter(&[])?.check("  Hello   world   from   Go!  ")?;
        assert_eq!(verdict.cleaned, "Hello world from Go!");
        assert!(!verdict.blocked);
        Ok(())
    }

    #[test]
    fn blocked_texts_say_why() -> anyhow::Result<()> {
        let verdict = filter(&["foo"])?.check("foo bar")?;
        assert!(verdict.blocked);
        assert_eq!(verdict.matched, "foo");
        assert!(verdict.reason.contains("\"foo\""), "{}", verdict.reason);
        assert!(!filter(&["foo"])?.check("food")?.blocked);
        Ok(())
    }

    #[test]
    fn empty_and_overlong_texts_are_invalid() -> anyhow::Result<()> {
        let filter = filter(&[])?;
        let empty = filter
            .check(" \t\n\u{0} ")
            .err()
            .map(|status| status.code());
        assert_eq!(empty, Some(tonic::Code::InvalidArgument));
        let long = filter
            .check(&"x".repeat(21))
            .err()
            .map(|status| status.code());
        assert_eq!(long, Some(tonic::Code::InvalidArgument));
        assert!(filter.check(&"字".repeat(20)).is_ok());
        Ok(())
    }
}
