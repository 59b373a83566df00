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

    /// The reserve script (the check against `limit` and the reservation, atomically),
    /// and the user's place on `reservations:due`, in one round trip. The listing comes
    /// after the script, never before: the sweeper drops a user only once their pending
    /// set is empty, then looks again (see `delist`). Listing a user already listed
    /// earlier changes nothing (`LT`), and one listed with nothing pending (a refused
    /// reserve) is dropped by the sweeper's next look.
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
        let mut pipeline = redis::pipe();
        pipeline
            .invoke_script(&invocation)
            .add_command(self.due_listing(&request.user_id, deadline_ms))
            .ignore();
        let mut answer = self
            .redis("reserve", pipeline.query_async(&mut *connection))
            .await;
        if matches!(&answer, Err(QuotaError::StoreFailed(error))
            if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // The script is not cached on this server yet (a restart, a new replica):
            // load it and run both again (the listing is harmless twice).
            self.redis("script_load", invocation.load_async(&mut *connection))
                .await?;
            answer = self
                .redis("reserve", pipeline.query_async(&mut *connection))
                .await;
        }
        let ((granted, used, held),): ((i64, i64, i64),) = answer?;
        Ok(Reserved {
            granted: granted == 1,
            used,
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
