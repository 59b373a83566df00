//! The quota against a real Redis: arithmetic, exactly-once settlement, atomicity
//! under concurrency, the sweeper and what survives it (late settlements, extensions,
//! settlements racing their reserve), calibration per model, and the settlement journal
//! across a Redis outage.

use chat_proto::token_service_server::TokenService;
use chat_proto::{ExtendRequest, QuotaState, RemainingRequest, ReserveRequest, SettleRequest};
use chat_testing::TestRedis;
use chat_token::{Quota, Settings};
use tonic::Request;

fn quota(redis: &TestRedis, daily_limit: i64) -> anyhow::Result<Quota> {
    Quota::new(&Settings {
        redis_addr: redis.addr.clone(),
        redis_key_prefix: redis.prefix.clone(),
        daily_limit,
        reservation_ttl_secs: 1,
        redis_timeout_ms: 2000,
        ..Settings::default()
    })
}

async fn reserve(quota: &Quota, user: &str, id: &str, tokens: i64) -> anyhow::Result<(bool, i64)> {
    reserve_within(quota, user, id, tokens, None).await
}

/// A reservation under the user's own daily limit, when `daily_limit` is set.
async fn reserve_within(
    quota: &Quota,
    user: &str,
    id: &str,
    tokens: i64,
    daily_limit: Option<i64>,
) -> anyhow::Result<(bool, i64)> {
    let answer = quota
        .reserve(Request::new(ReserveRequest {
            user_id: user.into(),
            reservation_id: id.into(),
            tokens,
            daily_limit,
            ..ReserveRequest::default()
        }))
        .await?
        .into_inner();
    Ok((answer.granted, answer.quota.map_or(-1, |q| q.remaining)))
}

async fn settle(quota: &Quota, user: &str, id: &str, actual: i64) -> anyhow::Result<(bool, i64)> {
    let answer = quota
        .settle(Request::new(SettleRequest {
            user_id: user.into(),
            reservation_id: id.into(),
            actual_tokens: actual,
            ..SettleRequest::default()
        }))
        .await?
        .into_inner();
    Ok((answer.settled, answer.quota.map_or(-1, |q| q.remaining)))
}

async fn remaining(quota: &Quota, user: &str) -> anyhow::Result<i64> {
    Ok(state(quota, user, None).await?.remaining)
}

async fn state(quota: &Quota, user: &str, daily_limit: Option<i64>) -> anyhow::Result<QuotaState> {
    Ok(quota
        .remaining(Request::new(RemainingRequest {
            user_id: user.into(),
            daily_limit,
        }))
        .await?
        .into_inner())
}

#[tokio::test]
async fn reserve_then_settle_charges_the_real_usage() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    assert_eq!(reserve(&quota, "u1", "r1", 300).await?, (true, 700));
    // Settling below the reservation refunds the difference...
    assert_eq!(settle(&quota, "u1", "r1", 120).await?, (true, 880));
    // ...and only once, however often it is retried.
    assert_eq!(settle(&quota, "u1", "r1", 120).await?, (false, 880));
    // Settling above the reservation charges more.
    assert_eq!(reserve(&quota, "u1", "r2", 100).await?, (true, 780));
    assert_eq!(settle(&quota, "u1", "r2", 150).await?, (true, 730));
    // A refund is a settlement to zero.
    assert_eq!(reserve(&quota, "u1", "r3", 500).await?, (true, 230));
    assert_eq!(settle(&quota, "u1", "r3", 0).await?, (true, 730));
    // Other users are untouched.
    assert_eq!(remaining(&quota, "u2").await?, 1000);
    Ok(())
}

#[tokio::test]
async fn a_replayed_reserve_takes_nothing_more() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    assert_eq!(reserve(&quota, "u1", "same", 400).await?, (true, 600));
    assert_eq!(reserve(&quota, "u1", "same", 400).await?, (true, 600));
    assert_eq!(settle(&quota, "u1", "same", 400).await?, (true, 600));
    Ok(())
}

#[tokio::test]
async fn a_reservation_past_the_limit_is_refused_and_remaining_never_negative() -> anyhow::Result<()>
{
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 500)?;
    assert_eq!(reserve(&quota, "u1", "a", 400).await?, (true, 100));
    assert_eq!(reserve(&quota, "u1", "b", 200).await?, (false, 100));
    // The provider used more than reserved: the spending is real, the display stays at 0.
    assert_eq!(settle(&quota, "u1", "a", 700).await?, (true, 0));
    assert_eq!(remaining(&quota, "u1").await?, 0);
    assert_eq!(reserve(&quota, "u1", "c", 1).await?, (false, 0));
    Ok(())
}

#[tokio::test]
async fn concurrent_reservations_never_overspend() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    let attempts = (0..50).map(|i| {
        let quota = quota.clone();
        async move { reserve(&quota, "u1", &format!("c{i}"), 70).await }
    });
    let results = futures::future::try_join_all(attempts).await?;
    let granted = results.iter().filter(|(granted, _)| *granted).count();
    assert_eq!(granted, 1000 / 70, "exactly as many as fit");
    assert_eq!(remaining(&quota, "u1").await?, 1000 - 70 * granted as i64);
    Ok(())
}

#[tokio::test]
async fn the_sweeper_refunds_abandoned_reservations() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    assert_eq!(reserve(&quota, "u1", "lost", 300).await?, (true, 700));
    assert_eq!(reserve(&quota, "u1", "kept", 100).await?, (true, 600));
    assert_eq!(settle(&quota, "u1", "kept", 50).await?, (true, 650));
    // The reservation deadline is one second; wait past it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(quota.sweep().await?, 1);
    assert_eq!(remaining(&quota, "u1").await?, 950);
    // A settlement arriving after the sweep charges its usage, once.
    assert_eq!(settle(&quota, "u1", "lost", 300).await?, (true, 650));
    assert_eq!(settle(&quota, "u1", "lost", 300).await?, (false, 650));
    assert_eq!(quota.sweep().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_user_with_an_own_limit_gets_it_and_others_keep_the_default() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    let own = Some(5000);
    // Past the default, within the user's own limit.
    assert_eq!(
        reserve_within(&quota, "big", "r1", 3000, own).await?,
        (true, 2000)
    );
    assert_eq!(
        reserve_within(&quota, "big", "r2", 2500, own).await?,
        (false, 2000)
    );
    let big = state(&quota, "big", own).await?;
    assert_eq!((big.remaining, big.limit), (2000, 5000));
    // Everyone else keeps DAILY_LIMIT.
    assert_eq!(reserve(&quota, "small", "r1", 3000).await?, (false, 1000));
    let small = state(&quota, "small", None).await?;
    assert_eq!((small.remaining, small.limit), (1000, 1000));
    // A lower limit than the default holds too, zero included.
    assert_eq!(
        reserve_within(&quota, "tight", "r1", 200, Some(100)).await?,
        (false, 100)
    );
    assert_eq!(
        reserve_within(&quota, "none", "r1", 1, Some(0)).await?,
        (false, 0)
    );
    Ok(())
}

#[tokio::test]
async fn a_settlement_reports_against_the_limit_of_its_reservation() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    assert_eq!(
        reserve_within(&quota, "big", "r1", 3000, Some(5000)).await?,
        (true, 2000)
    );
    // SettleRequest carries no limit: the one kept with the reservation applies.
    let settled = quota
        .settle(Request::new(SettleRequest {
            user_id: "big".into(),
            reservation_id: "r1".into(),
            actual_tokens: 1200,
            ..SettleRequest::default()
        }))
        .await?
        .into_inner();
    assert!(settled.settled);
    let after = settled.quota.unwrap_or_default();
    assert_eq!((after.remaining, after.limit), (3800, 5000));
    // The sweeper refunds a reservation kept with its limit as any other.
    assert_eq!(
        reserve_within(&quota, "big", "lost", 800, Some(5000)).await?,
        (true, 3000)
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(quota.sweep().await?, 1);
    assert_eq!(state(&quota, "big", Some(5000)).await?.remaining, 3800);
    Ok(())
}

#[tokio::test]
async fn a_negative_limit_is_rejected() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    let code = reserve_within(&quota, "u1", "r", 1, Some(-1))
        .await
        .err()
        .and_then(|error| error.downcast::<tonic::Status>().ok())
        .map(|status| status.code());
    assert_eq!(code, Some(tonic::Code::InvalidArgument));
    Ok(())
}

#[tokio::test]
async fn bad_input_is_rejected() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    for (user, id, tokens) in [("", "r", 1), ("u1", "", 1), ("u 1", "r", 1), ("u1", "r", 0)] {
        let status = reserve(&quota, user, id, tokens).await.err();
        let code = status
            .and_then(|error| error.downcast::<tonic::Status>().ok())
            .map(|status| status.code());
        assert_eq!(
            code,
            Some(tonic::Code::InvalidArgument),
            "{user:?} {id:?} {tokens}"
        );
    }
    Ok(())
}

#[test]
fn an_unknown_time_zone_stops_the_service() {
    let error = Quota::new(&Settings {
        quota_timezone: "Mars/Olympus".into(),
        ..Settings::default()
    })
    .err()
    .map(|error| error.to_string())
    .unwrap_or_default();
    assert!(error.contains("QUOTA_TIMEZONE"), "{error}");
}

#[tokio::test]
async fn every_script_runs_on_a_redis_cluster() -> anyhow::Result<()> {
    // A cluster refuses a script whose keys lie in two slots (CROSSSLOT): every key of a
    // user is hash-tagged `{user}`, and the one key across users is never in a script.
    let cluster = chat_testing::OwnRedis::start_cluster().await?;
    let quota = Quota::new(&Settings {
        redis_addr: cluster.addr(),
        redis_key_prefix: "chat:".to_owned(),
        daily_limit: 1000,
        reservation_ttl_secs: 1,
        redis_timeout_ms: 2000,
        ..Settings::default()
    })?;
    assert_eq!(reserve(&quota, "alice", "r1", 300).await?, (true, 700));
    assert_eq!(reserve(&quota, "alice", "lost", 100).await?, (true, 600));
    assert_eq!(reserve(&quota, "bob", "lost", 200).await?, (true, 800));
    assert_eq!(settle(&quota, "alice", "r1", 120).await?, (true, 780));
    assert_eq!(remaining(&quota, "alice").await?, 780);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(quota.sweep().await?, 2);
    assert_eq!(remaining(&quota, "alice").await?, 880);
    assert_eq!(remaining(&quota, "bob").await?, 1000);
    assert_eq!(quota.sweep().await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_sweeper_forgets_users_with_nothing_pending_and_finds_new_ones() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    assert_eq!(reserve(&quota, "u1", "a", 100).await?, (true, 900));
    assert_eq!(settle(&quota, "u1", "a", 100).await?, (true, 900));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Listed, nothing pending: visited once, then off the list.
    assert_eq!(quota.sweep().await?, 0);
    let pool = chat_common::redis::pool(&redis.addr, 1, std::time::Duration::from_secs(2))?;
    let mut connection = pool.get().await?;
    let due: i64 = redis::cmd("ZCARD")
        .arg(format!("{}reservations:due", redis.prefix))
        .query_async(&mut connection)
        .await?;
    assert_eq!(due, 0);
    // A later reservation lists the user again, and is swept when abandoned.
    assert_eq!(reserve(&quota, "u1", "b", 200).await?, (true, 700));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(quota.sweep().await?, 1);
    assert_eq!(remaining(&quota, "u1").await?, 900);
    Ok(())
}

async fn extend(quota: &Quota, user: &str, id: &str) -> anyhow::Result<bool> {
    Ok(quota
        .extend(Request::new(ExtendRequest {
            user_id: user.into(),
            reservation_id: id.into(),
        }))
        .await?
        .into_inner()
        .extended)
}

#[tokio::test]
async fn a_settlement_after_the_sweeper_still_charges_once() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    assert_eq!(reserve(&quota, "u1", "late", 300).await?, (true, 700));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(quota.sweep().await?, 1);
    assert_eq!(remaining(&quota, "u1").await?, 1000, "refunded");
    // The settlement that was on its way: the usage is charged in full, once.
    assert_eq!(settle(&quota, "u1", "late", 120).await?, (true, 880));
    assert_eq!(settle(&quota, "u1", "late", 120).await?, (false, 880));
    assert_eq!(
        quota.sweep().await?,
        0,
        "a tombstone is never refunded twice"
    );
    assert_eq!(remaining(&quota, "u1").await?, 880);
    Ok(())
}

#[tokio::test]
async fn a_reserve_landing_after_its_own_settlement_takes_nothing() -> anyhow::Result<()> {
    // The gateway's reserve timed out, so it settled the id to 0; the reserve, slow on
    // the way, lands afterwards.
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    assert_eq!(settle(&quota, "u1", "lost", 0).await?, (false, 1000));
    assert_eq!(reserve(&quota, "u1", "lost", 300).await?, (true, 1000));
    assert_eq!(remaining(&quota, "u1").await?, 1000);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(quota.sweep().await?, 0, "nothing was held");
    Ok(())
}

#[tokio::test]
async fn an_extended_reservation_outlives_its_lifetime() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 1000)?;
    let (granted, _) = reserve(&quota, "u1", "long", 300).await?;
    assert!(granted);
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(extend(&quota, "u1", "long").await?);
        assert_eq!(quota.sweep().await?, 0, "kept alive");
    }
    assert_eq!(
        remaining(&quota, "u1").await?,
        700,
        "still held after 1.6 s"
    );
    assert_eq!(settle(&quota, "u1", "long", 100).await?, (true, 900));
    assert!(
        !extend(&quota, "u1", "long").await?,
        "settled: nothing to extend"
    );
    assert!(!extend(&quota, "u1", "unknown").await?);
    Ok(())
}

/// A reservation of `prompt` tokens by our count and `output` of reply, for `model`;
/// answers what was held.
async fn reserve_prompt(
    quota: &Quota,
    id: &str,
    model: &str,
    prompt: i64,
    output: i64,
) -> anyhow::Result<i64> {
    let answer = quota
        .reserve(Request::new(ReserveRequest {
            user_id: "cal".into(),
            reservation_id: id.into(),
            tokens: prompt + output,
            model: model.into(),
            prompt_tokens: prompt,
            output_tokens: output,
            ..ReserveRequest::default()
        }))
        .await?
        .into_inner();
    anyhow::ensure!(answer.granted, "refused");
    Ok(answer.reserved_tokens)
}

async fn settle_reported(quota: &Quota, id: &str, reported_prompt: i64) -> anyhow::Result<()> {
    quota
        .settle(Request::new(SettleRequest {
            user_id: "cal".into(),
            reservation_id: id.into(),
            actual_tokens: reported_prompt + 10,
            reported_prompt_tokens: Some(reported_prompt),
            ..SettleRequest::default()
        }))
        .await?;
    Ok(())
}

#[tokio::test]
async fn reservations_are_sized_by_what_the_provider_counted_for_the_model() -> anyhow::Result<()> {
    let redis = TestRedis::new().await?;
    let quota = quota(&redis, 100_000)?;
    // Never reported: the prompt at PROMPT_RATIO_START (4).
    assert_eq!(reserve_prompt(&quota, "a", "llama", 100, 50).await?, 450);
    assert_eq!(quota.calibration("llama").await?, None);
    // The provider counted twice ours.
    settle_reported(&quota, "a", 200).await?;
    assert_eq!(quota.calibration("llama").await?, Some(2.0));
    assert_eq!(reserve_prompt(&quota, "b", "llama", 100, 50).await?, 250);
    // A lower count pulls the ratio down slowly; a higher one lifts it at once.
    settle_reported(&quota, "b", 150).await?;
    assert_eq!(quota.calibration("llama").await?, Some(1.95));
    assert_eq!(reserve_prompt(&quota, "c", "llama", 100, 50).await?, 245);
    settle_reported(&quota, "c", 300).await?;
    assert_eq!(reserve_prompt(&quota, "d", "llama", 100, 50).await?, 350);
    // Never below our own count, never above PROMPT_RATIO_MAX (8).
    settle_reported(&quota, "d", 10).await?;
    assert!(quota.calibration("llama").await?.is_some_and(|r| r >= 1.0));
    assert_eq!(reserve_prompt(&quota, "e", "qwen", 100, 50).await?, 450);
    settle_reported(&quota, "e", 5000).await?;
    assert_eq!(quota.calibration("qwen").await?, Some(8.0));
    // Each model its own: the first is untouched by the second.
    assert_eq!(reserve_prompt(&quota, "f", "gpt", 100, 50).await?, 450);
    settle_reported(&quota, "f", 90).await?;
    assert_eq!(quota.calibration("gpt").await?, Some(1.0));
    assert_eq!(reserve_prompt(&quota, "g", "gpt", 100, 50).await?, 150);
    // A settlement without reported usage (counted by us) teaches nothing; nor does a
    // retry of a settled one.
    quota
        .settle(Request::new(SettleRequest {
            user_id: "cal".into(),
            reservation_id: "g".into(),
            actual_tokens: 120,
            reported_prompt_tokens: None,
            ..SettleRequest::default()
        }))
        .await?;
    settle_reported(&quota, "g", 800).await?;
    assert_eq!(quota.calibration("gpt").await?, Some(1.0));
    // Room reserved for context that turned out smaller: the provider's count is
    // compared with the prompt sent (50), not the one reserved (100).
    assert_eq!(reserve_prompt(&quota, "h", "mistral", 100, 50).await?, 450);
    quota
        .settle(Request::new(SettleRequest {
            user_id: "cal".into(),
            reservation_id: "h".into(),
            actual_tokens: 160,
            reported_prompt_tokens: Some(150),
            sent_prompt_tokens: Some(50),
        }))
        .await?;
    assert_eq!(quota.calibration("mistral").await?, Some(3.0));
    Ok(())
}

#[tokio::test]
async fn a_settlement_during_a_redis_outage_is_journalled_and_applied_once_it_is_back()
-> anyhow::Result<()> {
    let mut redis = chat_testing::OwnRedis::start_persistent().await?;
    let journal = std::env::temp_dir().join(format!("token-journal-{}", uuid::Uuid::new_v4()));
    let quota = Quota::new(&Settings {
        redis_addr: redis.addr(),
        daily_limit: 1000,
        reservation_ttl_secs: 1,
        redis_timeout_ms: 500,
        settlement_journal_dir: journal.display().to_string(),
        ..Settings::default()
    })?;
    assert_eq!(reserve(&quota, "u1", "r1", 300).await?, (true, 700));
    assert_eq!(reserve(&quota, "u1", "r2", 200).await?, (true, 500));
    redis.stop().await?;

    // Acknowledged as queued, without a quota to tell.
    let queued = quota
        .settle(Request::new(SettleRequest {
            user_id: "u1".into(),
            reservation_id: "r1".into(),
            actual_tokens: 120,
            ..SettleRequest::default()
        }))
        .await?
        .into_inner();
    assert!(queued.queued && queued.quota.is_none(), "{queued:?}");
    // Settled twice (a retry): still charged once.
    assert!(settle(&quota, "u1", "r1", 120).await.is_ok());
    assert!(settle(&quota, "u1", "r2", 50).await.is_ok());
    assert!(
        quota.replay_journal().await.is_err(),
        "Redis is still away: nothing applied, nothing lost"
    );

    redis.resume().await?;
    // Redis came back after the reservations' lifetime: the sweeper may get there
    // first; the journal still charges each once.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut swept = None;
    for _ in 0..50 {
        match quota.sweep().await {
            Ok(refunded) => {
                swept = Some(refunded);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        swept,
        Some(2),
        "both refunded before their settlements are replayed"
    );
    assert_eq!(quota.replay_journal().await?, 3);
    assert_eq!(remaining(&quota, "u1").await?, 1000 - 120 - 50);
    assert_eq!(quota.replay_journal().await?, 0, "the journal is empty");
    assert_eq!(remaining(&quota, "u1").await?, 830);
    std::fs::remove_dir_all(&journal)?;
    Ok(())
}

#[tokio::test]
async fn without_a_journal_a_settlement_during_an_outage_fails_for_the_caller_to_retry()
-> anyhow::Result<()> {
    let mut redis = chat_testing::OwnRedis::start().await?;
    let quota = Quota::new(&Settings {
        redis_addr: redis.addr(),
        daily_limit: 1000,
        redis_timeout_ms: 500,
        ..Settings::default()
    })?;
    assert_eq!(reserve(&quota, "u1", "r1", 300).await?, (true, 700));
    redis.stop().await?;
    let refused = quota
        .settle(Request::new(SettleRequest {
            user_id: "u1".into(),
            reservation_id: "r1".into(),
            actual_tokens: 120,
            ..SettleRequest::default()
        }))
        .await;
    assert_eq!(
        refused.map(|_| ()).map_err(|status| status.code()),
        Err(tonic::Code::Unavailable)
    );
    Ok(())
}
