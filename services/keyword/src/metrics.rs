//! Every series the keyword service records itself. The Grafana dashboard and the
//! Prometheus rules in `deploy/` query these names: rename nothing here without them.
//! MySQL calls are timed by `chat_common::observe::db` under `system="mysql"`.

use ::metrics::{counter, gauge, histogram};

const INDEXED: &str = "keyword_indexed_messages_total";
const INDEX_ERRORS: &str = "keyword_index_errors_total";
const INDEX_LEADER: &str = "keyword_index_leader";
const SWEPT: &str = "keyword_swept_messages_total";
const SEARCH_HITS: &str = "keyword_search_hits";

/// The `system` label of this service's `db_client_*` series.
pub const MYSQL: &str = "mysql";

/// Every series at zero, so dashboards and alerts see them before the first event.
pub fn register() {
    counter!(INDEXED).absolute(0);
    counter!(INDEX_ERRORS).absolute(0);
    counter!(SWEPT).absolute(0);
    gauge!(INDEX_LEADER).set(0.0);
}

pub fn indexed(messages: usize) {
    counter!(INDEXED).increment(messages as u64);
}

pub fn index_failed() {
    counter!(INDEX_ERRORS).increment(1);
}

/// Whether this replica holds the indexer lock (exactly one should).
pub fn leader(held: bool) {
    gauge!(INDEX_LEADER).set(if held { 1.0 } else { 0.0 });
}

pub fn swept(messages: usize) {
    counter!(SWEPT).increment(messages as u64);
}

pub fn search_hits(hits: usize) {
    histogram!(SEARCH_HITS).record(hits as f64);
}
