//! Taking tokens: a reservation sized by the model's calibration, granted or refused by
//! one script, and kept alive by extending its deadline.

use std::sync::LazyLock;

use chat_common::redis::Connection;
use chat_proto::{ExtendRequest, ExtendResponse, ReserveRequest, ReserveResponse};
use jiff::Timestamp;
use redis::Script;

use super::{Day, Quota, check_ids, state};
use crate::error::QuotaError;
use crate::metrics;

static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/reserve.lua")));
static EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/extend.lua")));

/// Longest model name kept for calibration.
const MAX_MODEL_CHARS: usize = 200;

/// What the reserve script answers.
struct Reserved {
    granted: bool,
    /// The day's spending after the reservation.
    used: i64,
    /// The user had no open reservation before this one.
    first: bool,
    /// The tokens the reservation holds.
    held: i64,
}

impl Quota {
    /// Takes `tokens` from today's quota under the reservation id, unless that would
    /// pass the limit; with the prompt's part given, at least that part scaled by the
    /// model's calibration plus the output part. Replaying a granted reservation grants
    /// it again for free.
    pub async fn reserve_tokens(
        &self,
        request: &ReserveRequest,
    ) -> Result<ReserveResponse, QuotaError> {
        check_reserve(request)?;
        let limit = self.limit(request.daily_limit)?;
        let day = self.today()?;
        let mut connection = self.connection().await?;
        let tokens = self.sized(&mut connection, request).await?;
        let deadline_ms = Timestamp::now().as_millisecond() + self.inner.reservation_ttl_ms;
        let reserved = self
            .run_reserve(&mut connection, request, &day, tokens, limit, deadline_ms)
            .await?;
        if reserved.first {
            // After the script, never before: the sweeper drops a user only once their
            // pending set is empty, then looks again (see `sweep_user`).
            let listed = self
                .list_due(&mut connection, &request.user_id, deadline_ms)
                .await;
            if let Err(error) = listed {
                // The reservation stands; only an abandoned one would wait for the next.
                tracing::warn!(user_id = %request.user_id, %error, "listing the user for the sweeper failed");
            }
        }
        metrics::reservation(reserved.granted);
        if !reserved.granted {
            tracing::info!(user_id = %request.user_id, tokens, used = reserved.used, "quota exceeded");
        }
        Ok(ReserveResponse {
            granted: reserved.granted,
            quota: Some(state(reserved.used, limit, &day)),
            reserved_tokens: reserved.held,
            lifetime_ms: self.inner.reservation_ttl_ms,
        })
    }

    /// The reserve script: the check against `limit` and the reservation, atomically.
    async fn run_reserve(
        &self,
        connection: &mut Connection,
        request: &ReserveRequest,
        day: &Day,
        tokens: i64,
        limit: i64,
        deadline_ms: i64,
    ) -> Result<Reserved, QuotaError> {
        let mut invocation = RESERVE.key(self.quota_key(&request.user_id, &day.date));
        invocation
            .key(self.reservation_key(&request.user_id, &request.reservation_id))
            .key(self.pending_key(&request.user_id))
            .arg(tokens)
            .arg(limit)
            .arg(self.inner.key_ttl_secs)
            .arg(deadline_ms)
            .arg(&request.model)
            .arg(request.prompt_tokens);
        let (granted, used, first, held): (i64, i64, i64, i64) = self
            .redis("reserve", invocation.invoke_async(connection))
            .await?;
        Ok(Reserved {
            granted: granted == 1,
            used,
            first: first == 1,
            held,
        })
    }

    /// What to reserve: `tokens`, or more when the prompt, scaled by what the provider
    /// has counted for this model, says so.
    async fn sized(
        &self,
        connection: &mut Connection,
        request: &ReserveRequest,
    ) -> Result<i64, QuotaError> {
        if request.prompt_tokens == 0 {
            return Ok(request.tokens);
        }
        let ratio = self.ratio(connection, &request.model).await?;
        // Both parts are bounded by the caller's prompt and output cap: no overflow.
        let prompt = (request.prompt_tokens as f64 * ratio).ceil() as i64;
        Ok(request
            .tokens
            .max(prompt.saturating_add(request.output_tokens)))
    }

    /// Moves an open reservation's deadline a lifetime ahead.
    pub async fn extend_reservation(
        &self,
        request: &ExtendRequest,
    ) -> Result<ExtendResponse, QuotaError> {
        check_ids(&request.user_id, &request.reservation_id)?;
        let deadline_ms = Timestamp::now().as_millisecond() + self.inner.reservation_ttl_ms;
        let mut connection = self.connection().await?;
        let mut invocation =
            EXTEND.key(self.reservation_key(&request.user_id, &request.reservation_id));
        invocation
            .key(self.pending_key(&request.user_id))
            .arg(deadline_ms);
        let extended: i64 = self
            .redis("extend", invocation.invoke_async(&mut connection))
            .await?;
        metrics::extension(extended == 1);
        Ok(ExtendResponse {
            extended: extended == 1,
        })
    }
}

/// The checks of a reserve request that need no Redis.
fn check_reserve(request: &ReserveRequest) -> Result<(), QuotaError> {
    check_ids(&request.user_id, &request.reservation_id)?;
    if request.tokens <= 0 {
        return Err(QuotaError::TokensNotPositive);
    }
    if request.prompt_tokens < 0 || request.output_tokens < 0 {
        return Err(QuotaError::PartsNegative);
    }
    if request.model.chars().count() > MAX_MODEL_CHARS {
        return Err(QuotaError::ModelTooLong);
    }
    Ok(())
}
