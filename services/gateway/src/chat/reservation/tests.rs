use chat_common::shutdown::Shutdown;
use chat_testing::TestRedis;
use tokio::net::TcpListener;

use super::*;
use crate::Settings;

/// A real token service on its own Redis prefix, and the gateway's clients of it.
async fn token_service(daily_limit: i64) -> anyhow::Result<(Backends, TestRedis)> {
    let (backends, redis, _) = token_service_with(daily_limit, |_| {}).await?;
    Ok((backends, redis))
}

/// As [`token_service`], with its settings adjusted; also answers its address and
/// settings, to start it again there.
async fn token_service_with(
    daily_limit: i64,
    adjust: impl FnOnce(&mut chat_token::Settings),
) -> anyhow::Result<(Backends, TestRedis, (String, chat_token::Settings))> {
    chat_common::telemetry::init_for_tests();
    let redis = TestRedis::new().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?.to_string();
    let token_addr = format!("http://{local}");
    let mut token = chat_token::Settings {
        redis_addr: redis.addr.clone(),
        redis_key_prefix: redis.prefix.clone(),
        token_metrics_listen: String::new(),
        daily_limit,
        ..chat_token::Settings::default()
    };
    adjust(&mut token);
    tokio::spawn(chat_token::run(
        token.clone(),
        listener,
        std::future::pending(),
    ));
    let backends = Backends::connect(&Settings {
        token_addr,
        token_timeout_ms: 5000,
        ..Settings::default()
    })?;
    wait_for(&backends).await?;
    Ok((backends, redis, (local, token)))
}

/// Until the token service answers.
async fn wait_for(backends: &Backends) -> anyhow::Result<()> {
    for _ in 0..100 {
        if backends.remaining("reserver", None).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the token service never answered")
}

async fn remaining(backends: &Backends) -> anyhow::Result<i64> {
    Ok(backends.remaining("reserver", None).await?.remaining)
}

/// Until the quota left is `expected`; answers the last seen.
async fn remaining_becomes(backends: &Backends, expected: i64) -> anyhow::Result<i64> {
    let mut left = remaining(backends).await?;
    for _ in 0..200 {
        if left == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        left = remaining(backends).await?;
    }
    Ok(left)
}

fn reserver() -> Caller {
    Caller {
        user_id: "reserver".to_owned(),
        daily_limit: None,
        rate_limit_per_minute: None,
    }
}

/// A flat reservation of `tokens`, no calibration involved.
fn flat(tokens: i64) -> Estimate {
    Estimate {
        model: "flat".to_owned(),
        prompt_tokens: 0,
        output_tokens: 0,
        floor: tokens,
    }
}

#[tokio::test]
async fn settling_charges_the_usage_once_and_a_dropped_reservation_is_refunded()
-> anyhow::Result<()> {
    let (backends, _redis) = token_service(1000).await?;
    let first = Reservation::take(&backends, &reserver(), &flat(300)).await?;
    assert_eq!(remaining(&backends).await?, 700, "held while open");
    assert_eq!(
        first.settle(Charge::Counted(120)).await,
        880,
        "charged the real usage"
    );

    let second = Reservation::take(&backends, &reserver(), &flat(500)).await?;
    assert_eq!(remaining(&backends).await?, 380);
    drop(second);
    // Refunded in the background, without waiting for the sweeper.
    assert_eq!(
        remaining_becomes(&backends, 880).await?,
        880,
        "the dropped reservation was refunded"
    );

    let refused = Reservation::take(&backends, &reserver(), &flat(5000)).await;
    assert!(matches!(refused, Err(ApiError::QuotaExceeded(_))));
    Ok(())
}

#[tokio::test]
async fn an_open_reservation_is_kept_alive_past_its_lifetime() -> anyhow::Result<()> {
    let (backends, _redis, _) = token_service_with(1000, |token| {
        token.reservation_ttl_secs = 1;
        token.sweep_interval_ms = 100;
    })
    .await?;
    let long = Reservation::take(&backends, &reserver(), &flat(300)).await?;
    // Three lifetimes, the sweeper looking ten times a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(remaining(&backends).await?, 700, "still held");
    assert_eq!(long.settle(Charge::Counted(200)).await, 800);
    // Closed: no longer extended, and nothing left for the sweeper to refund.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(remaining(&backends).await?, 800);
    Ok(())
}

/// A token service on an address of its own that a test can stop and start again there,
/// and the gateway's clients of it (1 s deadline): for settlements that miss it.
struct Stoppable {
    local: std::net::SocketAddr,
    settings: chat_token::Settings,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _redis: TestRedis,
}

impl Stoppable {
    async fn start() -> anyhow::Result<(Self, Backends)> {
        chat_common::telemetry::init_for_tests();
        let redis = TestRedis::new().await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let settings = chat_token::Settings {
            redis_addr: redis.addr.clone(),
            redis_key_prefix: redis.prefix.clone(),
            token_metrics_listen: String::new(),
            daily_limit: 1000,
            ..chat_token::Settings::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(chat_token::run(settings.clone(), listener, async {
            let _ = stopped.await;
        }));
        let backends = Backends::connect(&Settings {
            token_addr: format!("http://{local}"),
            token_timeout_ms: 1000,
            ..Settings::default()
        })?;
        wait_for(&backends).await?;
        let stoppable = Self {
            local,
            settings,
            stop: Some(stop),
            running: Some(running),
            _redis: redis,
        };
        Ok((stoppable, backends))
    }

    /// Stops the service and waits until it has.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await??;
        }
        Ok(())
    }

    /// Starts it again on the same address, for the rest of the test.
    async fn start_again(&self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.local).await?;
        let settings = self.settings.clone();
        tokio::spawn(chat_token::run(settings, listener, std::future::pending()));
        Ok(())
    }
}

#[tokio::test]
async fn a_settlement_the_token_service_missed_is_retried_until_it_takes_it() -> anyhow::Result<()>
{
    let (mut token, backends) = Stoppable::start().await?;
    let reservation = Reservation::take(&backends, &reserver(), &flat(300)).await?;
    token.stop().await?;
    assert!(backends.remaining("reserver", None).await.is_err(), "away");

    // The token service is away: answered at once, with what the settlement will
    // leave (1000 - 120), and retried in the background.
    assert_eq!(reservation.settle(Charge::Counted(120)).await, 880);
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.start_again().await?;
    wait_for(&backends).await?;
    assert_eq!(
        remaining_becomes(&backends, 880).await?,
        880,
        "charged once the token service was back"
    );
    Ok(())
}

/// A graceful stop waits for a settlement still being retried: the token service comes
/// back during the drain, and the usage is charged before the drain ends.
#[tokio::test]
async fn a_drain_waits_for_a_settlement_being_retried() -> anyhow::Result<()> {
    let (mut token, backends) = Stoppable::start().await?;
    let stopping = Shutdown::new(6);
    let backends = backends.with_shutdown(stopping.clone());
    let reservation = Reservation::take(&backends, &reserver(), &flat(300)).await?;
    token.stop().await?;
    assert_eq!(reservation.settle(Charge::Counted(120)).await, 880);

    let drain = tokio::spawn(async move { stopping.drain(async {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!drain.is_finished(), "the drain waits for the retry");
    token.start_again().await?;
    let drained = drain.await?;
    assert_eq!((drained.tasks_at_start, drained.abandoned), (1, 0));
    assert_eq!(
        remaining(&backends).await?,
        880,
        "charged before the drain ended"
    );
    Ok(())
}

/// A settlement the token service never takes holds a stop up only until its grace is
/// nearly over: then it is tried once more and given up on, within the grace.
#[tokio::test]
async fn a_drain_gives_up_on_a_settlement_at_the_end_of_its_grace() -> anyhow::Result<()> {
    let (backends, _redis) = token_service(1000).await?;
    let stopping = Shutdown::new(2);
    let backends = backends.with_shutdown(stopping.clone());
    let mut reservation = Reservation::take(&backends, &reserver(), &flat(300)).await?;
    // Its settlement goes to a token service that is not there.
    let nowhere = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    reservation.backends = Backends::connect(&Settings {
        token_addr: format!("http://{nowhere}"),
        token_timeout_ms: 500,
        ..Settings::default()
    })?
    .with_shutdown(stopping.clone());
    assert_eq!(reservation.settle(Charge::Counted(120)).await, 880);

    let started = std::time::Instant::now();
    let drained = stopping.drain(async {}).await;
    assert_eq!(
        (
            drained.tasks_at_start,
            drained.interrupted,
            drained.abandoned
        ),
        (1, 1, 0),
        "interrupted, then given up on within the grace"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
