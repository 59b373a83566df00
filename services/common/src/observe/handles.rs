//! What a gRPC call's span and metrics need of its method, made once per method.
//!
//! `counter!` and `histogram!` with labels build the key (three label strings), hash it
//! and look it up in the recorder on every call, and the span's name and labels were
//! formatted from the path each time: a gateway chat makes seven calls, and the metric
//! registrations alone were 2.6 % of its instructions. They are the same every time for
//! a given method and status code, so each is made once and kept here, found by path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::code_name;

/// The number of gRPC status codes (`OK` = 0 … `UNAUTHENTICATED` = 16).
const CODES: usize = 17;

/// A call's count and duration, for one method and status code.
#[derive(Clone)]
pub(super) struct CallHandles {
    pub(super) requests: Counter,
    pub(super) duration: Histogram,
}

/// The metric names of one side of a call.
#[derive(Clone, Copy)]
pub(super) struct Names {
    pub(super) requests: &'static str,
    pub(super) duration: &'static str,
}

/// One method as its calls are labelled, with its handles by status code, made on
/// first use.
pub(super) struct Method {
    pub(super) service: Box<str>,
    pub(super) method: Box<str>,
    /// `service/method`: the span's name.
    pub(super) name: Box<str>,
    names: Names,
    by_code: [OnceLock<CallHandles>; CODES],
    /// `rpc_server_active_requests` of the service (servers only).
    active: OnceLock<Gauge>,
}

impl Method {
    fn new(names: Names, path: &str) -> Self {
        let (service, method) = super::service_and_method(path);
        Self {
            name: format!("{service}/{method}").into(),
            service: service.into(),
            method: method.into(),
            names,
            by_code: std::array::from_fn(|_| OnceLock::new()),
            active: OnceLock::new(),
        }
    }

    /// The server's gauge of its calls in flight, labelled by service.
    pub(super) fn active(&self) -> Gauge {
        self.active
            .get_or_init(
                || gauge!("rpc_server_active_requests", "service" => self.service.to_string()),
            )
            .clone()
    }

    /// The handles of a call of this method that ended with `code`.
    pub(super) fn handles(&self, code: tonic::Code) -> CallHandles {
        let slot = usize::try_from(code as i32).map_or(CODES - 1, |slot| slot.min(CODES - 1));
        self.by_code[slot]
            .get_or_init(|| register(self.names, &self.service, &self.method, code))
            .clone()
    }
}

/// Handles made for one call only: for labels that are not kept.
pub(super) fn register(
    names: Names,
    service: &str,
    method: &str,
    code: tonic::Code,
) -> CallHandles {
    let labels = [
        ("service", service.to_owned()),
        ("method", method.to_owned()),
        ("code", code_name(code).to_owned()),
    ];
    CallHandles {
        requests: counter!(names.requests, &labels),
        duration: histogram!(names.duration, &labels),
    }
}

type ByPath = HashMap<Box<str>, Arc<Method>, foldhash::fast::RandomState>;

/// The methods of one side (client or server) called so far, by path. Only paths whose
/// labels are bounded may be added: the client's own calls, and a server's calls of a
/// method it has (a caller could otherwise grow it without end).
pub(super) struct Methods {
    names: Names,
    by_path: Mutex<Option<ByPath>>,
}

impl Methods {
    pub(super) const fn new(requests: &'static str, duration: &'static str) -> Self {
        Self {
            names: Names { requests, duration },
            by_path: Mutex::new(None),
        }
    }

    pub(super) fn names(&self) -> Names {
        self.names
    }

    /// The method of `path` (`/chat.v1.FilterService/Filter`) if it was added.
    pub(super) fn find(&self, path: &str) -> Option<Arc<Method>> {
        let by_path = self.by_path.lock().unwrap_or_else(PoisonError::into_inner);
        by_path.as_ref()?.get(path).cloned()
    }

    /// The method of `path`, added if it was not.
    pub(super) fn get_or_add(&self, path: &str) -> Arc<Method> {
        let mut by_path = self.by_path.lock().unwrap_or_else(PoisonError::into_inner);
        let by_path = by_path.get_or_insert_with(HashMap::default);
        if let Some(method) = by_path.get(path) {
            return Arc::clone(method);
        }
        let method = Arc::new(Method::new(self.names, path));
        by_path.insert(path.into(), Arc::clone(&method));
        method
    }
}

/// `db_client_operation_duration_seconds` of one system's operation, registered once.
pub(super) fn db_duration(system: &'static str, operation: &'static str) -> Histogram {
    type ByOperation =
        HashMap<(&'static str, &'static str), Histogram, foldhash::fast::RandomState>;
    static KEPT: Mutex<Option<ByOperation>> = Mutex::new(None);
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    kept.get_or_insert_with(HashMap::default)
        .entry((system, operation))
        .or_insert_with(|| {
            histogram!(
                "db_client_operation_duration_seconds",
                "system" => system,
                "operation" => operation
            )
        })
        .clone()
}
