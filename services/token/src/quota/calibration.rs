//! Each model's calibration: the ratio of the provider's prompt tokens to our estimate,
//! kept in `calibration:<model>`, read to size reservations and learnt from settlements.

use deadpool_redis::Connection;
use redis::Script;
use std::sync::LazyLock;

use super::Quota;
use crate::error::QuotaError;

static CALIBRATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/calibrate.lua")));

/// A model's calibration is forgotten after this long without a sample.
const CALIBRATION_TTL_SECS: i64 = 30 * 24 * 3600;
/// How far one lower sample pulls a model's ratio down (a higher one lifts it at once).
const CALIBRATION_WEIGHT: f64 = 0.1;

impl Quota {
    /// The model's ratio of the provider's prompt tokens to ours: calibrated, or
    /// `PROMPT_RATIO_START` before any usage was reported.
    pub(super) async fn ratio(
        &self,
        connection: &mut Connection,
        model: &str,
    ) -> Result<f64, QuotaError> {
        let ratio = self
            .stored_ratio(connection, model)
            .await?
            .filter(|ratio| ratio.is_finite())
            .unwrap_or(self.inner.prompt_ratio_start);
        Ok(ratio.clamp(1.0, self.inner.prompt_ratio_max))
    }

    /// The model's calibration, as the gateway's reservations of it see it: the ratio,
    /// or `None` before any usage was reported.
    pub async fn calibration(&self, model: &str) -> Result<Option<f64>, QuotaError> {
        let mut connection = self.connection().await?;
        self.stored_ratio(&mut connection, model).await
    }

    /// The ratio as stored, if there is one that reads as a number.
    async fn stored_ratio(
        &self,
        connection: &mut Connection,
        model: &str,
    ) -> Result<Option<f64>, QuotaError> {
        let stored: Option<String> = self
            .redis(
                "hget",
                redis::cmd("HGET")
                    .arg(self.calibration_key(model))
                    .arg("ratio")
                    .query_async(connection),
            )
            .await?;
        Ok(stored.and_then(|ratio| ratio.parse::<f64>().ok()))
    }

    /// One sample of the model's calibration. A failure costs only the sample: the
    /// settlement it came with stands.
    pub(super) async fn calibrate(&self, connection: &mut Connection, model: &str, observed: f64) {
        let mut invocation = CALIBRATE.key(self.calibration_key(model));
        invocation
            .arg(observed)
            .arg(CALIBRATION_WEIGHT)
            .arg(self.inner.prompt_ratio_max)
            .arg(CALIBRATION_TTL_SECS);
        let outcome: Result<i64, _> = self
            .redis("calibrate", invocation.invoke_async(connection))
            .await;
        if let Err(error) = outcome {
            tracing::warn!(model, observed, %error, "calibrating the model's estimates failed");
        }
    }
}
