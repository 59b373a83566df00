//! Rate limits shared by every gateway replica: a GCRA bucket per caller in Redis, one
//! atomic script per check (`scripts/gcra.lua`), one round trip. The original queued
//! every caller behind one per-process bucket, so one client blocked all users and N
//! gateways allowed N times the limit.
//!
//! [`enforce`] is one middleware over every route of the router: it finds the route's
//! [`Class`] from its matched path, the subject from the request (the authenticated user;
//! the client address for a request without a valid credential, for the login and for
//! everything in `AUTH_MODE=none`), checks the bucket, and answers 429 with `Retry-After`
//! at once, or lets the request through; both carry `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
//!
//! How a route opts in: it need do nothing. Any route added to the router before its
//! `.layer(... rate_limit::enforce)` (directly, merged or nested) is limited as
//! [`Class::Read`]; one that calls the model is listed in [`class::MODEL_ROUTES`] to spend the
//! stricter model allowance; only the exempt routes (`class.rs`) are not limited. Handlers then
//! authenticate as before (a cache hit by then).
//!
//! When Redis fails or is slower than `RATE_LIMIT_REDIS_TIMEOUT_MS`, the gateway keeps
//! limiting with governor buckets of its own (per subject, bounded memory), logs the
//! outage once, sets `gateway_rate_limiter_fallback` to 1, probes Redis every second and
//! goes back to the shared buckets when it answers. Meanwhile each replica limits on its
//! own: N replicas allow up to N times the limit.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use redis::Script;

use crate::auth::Caller;
use crate::routes::AppState;
use crate::settings::AuthMode;
use crate::{ApiError, Settings};

mod class;
mod client_addr;
mod connection;

pub use class::{Class, class_of};
pub use client_addr::{ClientAddr, TrustedProxies};
use connection::Redis;

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/gcra.lua")));

/// A pace: so many requests a minute, so many at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    /// `None` (not limited) when `per_minute` is 0; a `burst` of 0 is one minute's worth.
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        let per_minute = NonZeroU32::new(per_minute)?;
        Some(Self {
            per_minute,
            burst: NonZeroU32::new(burst).unwrap_or(per_minute),
        })
    }

    fn interval_micros(self) -> u64 {
        60_000_000 / u64::from(self.per_minute.get())
    }
}

/// What the limiter answered for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rate: Rate,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Until the burst is whole again.
    pub reset: Duration,
    /// Until the next request is allowed (zero when this one was).
    pub retry_after: Duration,
}

impl Decision {
    fn write_headers(&self, headers: &mut HeaderMap) {
        let seconds = |wait: Duration| wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(
            "x-ratelimit-limit",
            HeaderValue::from(self.rate.per_minute.get()),
        );
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(seconds(self.reset)));
    }
}

/// The rates of each class, from the settings.
#[derive(Debug, Clone, Copy)]
struct Rates {
    model: Option<Rate>,
    read: Option<Rate>,
    address: Option<Rate>,
}

/// A governor bucket of this process, for while Redis is away.
type LocalBucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Subjects remembered by the fallback at most; beyond, the least recently used are dropped.
const FALLBACK_CAPACITY: u64 = 100_000;
/// A fallback bucket unused this long is dropped: whole again by then unless its burst
/// takes longer to refill, in which case its subject starts afresh.
const FALLBACK_IDLE: Duration = Duration::from_secs(300);
/// How often Redis is probed during an outage.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The shared limiter, and this process's fallback.
pub struct Limiter {
    rates: Rates,
    redis: Redis,
    prefix: String,
    timeout: Duration,
    mode: AuthMode,
    proxies: TrustedProxies,
    /// Redis failed and is not yet back: every check is answered locally.
    degraded: Arc<AtomicBool>,
    fallback: moka::sync::Cache<(String, Rate), Arc<LocalBucket>>,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.redis_key_prefix.contains(['{', '}']),
            "REDIS_KEY_PREFIX must not contain braces: they would change the keys' hash slots"
        );
        let timeout = Duration::from_millis(settings.rate_limit_redis_timeout_ms.max(1));
        Ok(Self {
            rates: Rates {
                model: Rate::new(settings.rate_limit_per_minute, settings.rate_limit_burst),
                read: Rate::new(settings.read_rate_limit_per_minute, 0),
                address: Rate::new(settings.address_rate_limit_per_minute, 0),
            },
            redis: Redis::new(&settings.redis_addr)?,
            prefix: settings.redis_key_prefix.clone(),
            timeout,
            mode: settings.auth_mode,
            proxies: TrustedProxies::from_setting(&settings.trusted_proxies)?,
            degraded: Arc::new(AtomicBool::new(false)),
            fallback: moka::sync::Cache::builder()
                .max_capacity(FALLBACK_CAPACITY)
                .time_to_idle(FALLBACK_IDLE)
                .build(),
            clock: DefaultClock::default(),
        })
    }

    /// Who a request of `class` is counted against, in which bucket, at what pace;
    /// `None` when that class is not limited.
    async fn subject(
        &self,
        state: &AppState,
        class: Class,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Option<(String, Class, Rate)> {
        let address = format!("addr:{client}");
        // Everything without a credential from one address shares one bucket.
        let anonymous = || {
            self.rates
                .address
                .map(|rate| (address.clone(), Class::Login, rate))
        };
        if class == Class::Login {
            return anonymous();
        }
        let class_rate = |caller: Option<&Caller>| match class {
            Class::Model => caller
                .and_then(|caller| caller.rate_limit_per_minute)
                .and_then(|own| Rate::new(own, 0))
                .or(self.rates.model),
            _ => self.rates.read,
        };
        if self.mode == AuthMode::None {
            // Anyone may name any user: the address is the only subject to trust.
            return class_rate(None).map(|rate| (address.clone(), class, rate));
        }
        match state.auth.caller(headers).await {
            Ok(Some(caller)) => class_rate(Some(&caller))
                .map(|rate| (format!("user:{}", caller.user_id), class, rate)),
            // No valid credential: the handler refuses it; meanwhile its address pays.
            _ => anonymous(),
        }
    }

    /// Counts one request of `subject` in `class`: in Redis, or locally while Redis is away.
    pub async fn check(&self, subject: &str, class: Class, rate: Rate) -> Decision {
        if !self.degraded.load(Ordering::Relaxed) {
            let key = format!("{}ratelimit:{{{subject}}}:{}", self.prefix, class.label());
            match self.check_shared(&key, rate).await {
                Ok(decision) => return decision,
                Err(error) => self.enter_fallback(&error),
            }
        }
        self.check_local(subject, class, rate)
    }

    async fn check_shared(&self, key: &str, rate: Rate) -> Result<Decision, String> {
        let call = async {
            let mut connection = self.redis.connection().await?;
            let mut invocation = GCRA.key(key);
            invocation.arg(rate.interval_micros()).arg(rate.burst.get());
            let answer = invocation
                .invoke_async::<(i64, i64, i64, i64)>(&mut connection)
                .await;
            if answer.is_err() {
                self.redis.forget();
            }
            answer.map_err(|error| error.to_string())
        };
        let timed = async {
            match tokio::time::timeout(self.timeout, call).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // A hung connection: the next check, or the probe, makes a new one.
                    self.redis.forget();
                    Err(format!("no answer within {} ms", self.timeout.as_millis()))
                }
            }
        };
        let (allowed, remaining, reset, retry_after) =
            chat_common::observe::db("redis", "rate_limit", timed).await?;
        let micros = |value: i64| Duration::from_micros(value.max(0).unsigned_abs());
        Ok(Decision {
            allowed: allowed == 1,
            rate,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset: micros(reset),
            retry_after: micros(retry_after),
        })
    }

    fn check_local(&self, subject: &str, class: Class, rate: Rate) -> Decision {
        let key = (format!("{}:{subject}", class.label()), rate);
        let bucket = self.fallback.get_with(key, || {
            let quota = Quota::with_period(Duration::from_micros(rate.interval_micros()))
                .unwrap_or_else(|| Quota::per_minute(rate.per_minute))
                .allow_burst(rate.burst);
            Arc::new(RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>())
        });
        let interval = Duration::from_micros(rate.interval_micros());
        match bucket.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    rate,
                    remaining,
                    reset: interval * (rate.burst.get().saturating_sub(remaining)),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    rate,
                    remaining: 0,
                    reset: wait + interval * (rate.burst.get().saturating_sub(1)),
                    retry_after: wait,
                }
            }
        }
    }

    /// The first failure of an outage: said once, and a probe that ends it.
    fn enter_fallback(&self, error: &str) {
        if self.degraded.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            %error,
            "rate limiter: redis failed, limiting in this process until it is back (each replica allows the full limit meanwhile)"
        );
        crate::metrics::rate_limiter_fallback(true);
        let degraded = Arc::clone(&self.degraded);
        let redis = self.redis.clone();
        let timeout = self.timeout.max(Duration::from_millis(500));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if Arc::strong_count(&degraded) == 1 {
                    return;
                }
                if redis.ping(timeout).await {
                    degraded.store(false, Ordering::Relaxed);
                    crate::metrics::rate_limiter_fallback(false);
                    tracing::info!(
                        outage_seconds = started.elapsed().as_secs(),
                        "rate limiter: redis is back, limits are shared again"
                    );
                    return;
                }
            }
        });
    }
}

/// The middleware: every matched, non-exempt route is limited (see the module's doc).
pub async fn enforce(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = ClientAddr::of(&state.limiter.proxies, &request);
    request.extensions_mut().insert(client);
    let class = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|route| class_of(request.method(), route.as_str()));
    let Some(class) = class else {
        return next.run(request).await;
    };
    let limiter = &state.limiter;
    let Some((subject, bucket, rate)) = limiter
        .subject(&state, class, request.headers(), client.0)
        .await
    else {
        return next.run(request).await;
    };
    let decision = limiter.check(&subject, bucket, rate).await;
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        crate::metrics::rate_limited();
        ApiError::RateLimited(decision.retry_after).into_response()
    };
    decision.write_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests;
