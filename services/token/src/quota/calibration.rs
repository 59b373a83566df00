//! Each model's calibration: the ratio of the provider's prompt tokens to our estimate,
//! kept in `calibration:<model>`, read to size reservations and learnt from settlements.
//!
//! Each replica keeps the ratios it read or wrote for [`FRESH_FOR`]: a reservation then
//! costs one Redis round trip instead of two, and a settlement whose sample would leave
//! the ratio as it is sends none. What another replica learnt shows here within that
//! time; the settlement charges the usage either way, so a reservation sized on a ratio
//! a moment old is only a little less or more cautious.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use chat_common::redis::Connection;
use redis::Script;

use super::Quota;
use crate::error::QuotaError;

static CALIBRATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/calibrate.lua")));

/// A model's calibration is forgotten after this long without a sample.
const CALIBRATION_TTL_SECS: i64 = 30 * 24 * 3600;
/// How far one lower sample pulls a model's ratio down (a higher one lifts it at once).
const CALIBRATION_WEIGHT: f64 = 0.1;
/// How long a replica uses a ratio it read or wrote without reading it again.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Models whose ratio a replica keeps at once; past that it starts again (a model name
/// comes from the caller's request, so the set must not grow without bound).
const MOST_MODELS: usize = 1000;
/// Samples within this of the ratio held change nothing worth a write (the stored ratio
/// has four decimals).
const SAME_RATIO: f64 = 0.00005;

/// The ratios a replica holds: by model, `None` when Redis had none, with when they were
/// read or written.
#[derive(Default)]
pub(super) struct Ratios(Mutex<HashMap<String, (Option<f64>, Instant)>>);

impl Ratios {
    fn fresh(&self, model: &str) -> Option<Option<f64>> {
        let held = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.get(model)
            .filter(|(_, at)| at.elapsed() < FRESH_FOR)
            .map(|(ratio, _)| *ratio)
    }

    fn hold(&self, model: &str, ratio: Option<f64>) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if held.len() >= MOST_MODELS && !held.contains_key(model) {
            held.clear();
        }
        held.insert(model.to_owned(), (ratio, Instant::now()));
    }
}

impl Quota {
    /// The model's ratio of the provider's prompt tokens to ours: calibrated, or
    /// `PROMPT_RATIO_START` before any usage was reported.
    pub(super) async fn ratio(
        &self,
        connection: &mut Connection,
        model: &str,
    ) -> Result<f64, QuotaError> {
        let stored = match self.inner.ratios.fresh(model) {
            Some(held) => held,
            None => {
                let stored = self.stored_ratio(connection, model).await?;
                self.inner.ratios.hold(model, stored);
                stored
            }
        };
        let ratio = stored
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
        if let Some(Some(held)) = self.inner.ratios.fresh(model)
            && (held - observed.clamp(1.0, self.inner.prompt_ratio_max)).abs() < SAME_RATIO
        {
            return;
        }
        let mut invocation = CALIBRATE.key(self.calibration_key(model));
        invocation
            .arg(observed)
            .arg(CALIBRATION_WEIGHT)
            .arg(self.inner.prompt_ratio_max)
            .arg(CALIBRATION_TTL_SECS);
        let outcome: Result<String, _> = self
            .redis("calibrate", invocation.invoke_async(connection))
            .await;
        match outcome {
            Ok(ratio) => self.inner.ratios.hold(model, ratio.parse().ok()),
            Err(error) => {
                tracing::warn!(model, observed, %error, "calibrating the model's estimates failed")
            }
        }
    }
}
