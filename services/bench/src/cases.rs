//! The benchmark's cases, in the order they run and are reported: the bare provider,
//! one gateway (beside it the one-client chats in trust mode, without the limiter and
//! without retrieval), the load cases, the scale-out and the overload.

use std::collections::BTreeMap;

use crate::load::{self, Callers, Target};
use crate::{NO_LIMITER_CASE, NO_RETRIEVAL_CASE, Options, TRUST_CASE, overload_cap};

/// One measured case, accumulated over the rounds.
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) target: Target,
    pub(crate) callers: Callers,
    pub(crate) concurrency: usize,
    pub(crate) gateways: usize,
    /// Streams at concurrency 1 read the provider's marks.
    pub(crate) marks: bool,
    pub(crate) sample: load::Sample,
    /// CPU seconds of the service processes while this case ran.
    pub(crate) cpu: BTreeMap<String, f64>,
}

impl Case {
    /// A case not yet measured; it reads no marks.
    fn new(
        name: String,
        target: Target,
        concurrency: usize,
        gateways: usize,
        callers: &Callers,
    ) -> Self {
        Self {
            name,
            target,
            callers: callers.clone(),
            concurrency,
            gateways,
            marks: false,
            sample: load::Sample::default(),
            cpu: BTreeMap::new(),
        }
    }

    /// The same case, reading the provider's marks.
    fn with_marks(mut self) -> Self {
        self.marks = true;
        self
    }
}

/// The cases, in the order they run and are reported: the bare provider, one gateway
/// (and the one chat in trust mode beside it), then the scale-out over `gateways`.
/// Every case but the trust one sends `keys`; that one names `users`.
pub(crate) fn cases(
    options: &Options,
    upstream: &str,
    gateways: &[String],
    trust: &[String],
    keys: &Callers,
    users: &Callers,
) -> Vec<Case> {
    let mut cases = one_client_cases(upstream, &gateways[..1], trust, keys, users);
    for &concurrency in &options.concurrency {
        cases.extend(load_cases(upstream, &gateways[..1], concurrency, keys));
    }
    for &count in &options.gateways {
        let concurrency = options.scale_concurrency;
        cases.push(Case::new(
            format!("chat c={concurrency} x{count} gateways"),
            Target::Chat(gateways[..count].to_vec()),
            concurrency,
            count,
            keys,
        ));
    }
    cases
}

/// One client each: the bare provider, then every route through `one` gateway, and the
/// chat through the `trust` gateway.
fn one_client_cases(
    upstream: &str,
    one: &[String],
    trust: &[String],
    keys: &Callers,
    users: &Callers,
) -> Vec<Case> {
    let one = one.to_vec();
    vec![
        Case::new(
            "upstream c=1".into(),
            Target::Upstream(upstream.to_owned()),
            1,
            0,
            keys,
        ),
        Case::new("chat c=1".into(), Target::Chat(one.clone()), 1, 1, keys),
        Case::new(TRUST_CASE.into(), Target::Chat(trust.to_vec()), 1, 1, users),
        Case::new("stream c=1".into(), Target::Stream(one.clone()), 1, 1, keys).with_marks(),
        // The OpenAI-compatible API beside /chat: the same path, OpenAI's shapes.
        Case::new("v1 c=1".into(), Target::V1(one.clone()), 1, 1, keys),
        Case::new("v1 stream c=1".into(), Target::V1Stream(one), 1, 1, keys).with_marks(),
    ]
}

/// `concurrency` clients each: the bare provider, then every route through `one`
/// gateway.
fn load_cases(upstream: &str, one: &[String], concurrency: usize, keys: &Callers) -> Vec<Case> {
    let name = |target: &str| format!("{target} c={concurrency}");
    let one = one.to_vec();
    vec![
        Case::new(
            name("upstream"),
            Target::Upstream(upstream.to_owned()),
            concurrency,
            0,
            keys,
        ),
        Case::new(
            name("chat"),
            Target::Chat(one.clone()),
            concurrency,
            1,
            keys,
        ),
        Case::new(
            name("stream"),
            Target::Stream(one.clone()),
            concurrency,
            1,
            keys,
        ),
        Case::new(name("v1"), Target::V1(one.clone()), concurrency, 1, keys),
        Case::new(
            name("v1 stream"),
            Target::V1Stream(one),
            concurrency,
            1,
            keys,
        ),
    ]
}

/// The limiter's cost (one client, every limit off) and the overload: the overload
/// gateway at its cap, then at four times it.
pub(crate) fn add_limit_cases(
    cases: &mut Vec<Case>,
    options: &Options,
    no_limiter: &[String],
    overload: &[String],
    keys: &Callers,
) {
    let case = |name: String, gateways: &[String], concurrency: usize| {
        Case::new(name, Target::Chat(gateways.to_vec()), concurrency, 1, keys)
    };
    // Beside the other one-client cases, so that drift hits them alike.
    let at = after(cases, TRUST_CASE);
    cases.insert(at, case(NO_LIMITER_CASE.to_owned(), no_limiter, 1));
    let cap = overload_cap(options);
    cases.push(case(overload_case(cap, 1), overload, cap));
    cases.push(case(overload_case(cap, 4), overload, 4 * cap));
}

/// The one-client chat through the gateway without retrieval, beside the other
/// one-client cases so that drift hits them alike.
pub(crate) fn add_no_retrieval_case(cases: &mut Vec<Case>, gateway: &[String], keys: &Callers) {
    let at = after(cases, NO_LIMITER_CASE);
    let case = Case::new(
        NO_RETRIEVAL_CASE.to_owned(),
        Target::Chat(gateway.to_vec()),
        1,
        1,
        keys,
    );
    cases.insert(at, case);
}

/// The position just after the case named `name`, or the end.
fn after(cases: &[Case], name: &str) -> usize {
    cases
        .iter()
        .position(|case| case.name == name)
        .map_or(cases.len(), |index| index + 1)
}

/// The name of the overload gateway's case at `times` its cap.
pub fn overload_case(cap: usize, times: usize) -> String {
    format!("chat c={} cap={cap} ({times}x)", times * cap)
}
