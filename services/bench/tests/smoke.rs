//! The benchmark's own code works: a run of about a second against the real services
//! (the debug binaries, real Redis and MySQL) produces a well-formed result. Nothing
//! here asserts a duration or a speed.

use std::path::PathBuf;

use chat_testing::{TestDatabase, TestRedis};

#[tokio::test]
async fn a_short_run_produces_a_well_formed_result() -> anyhow::Result<()> {
    let (redis, database) = (TestRedis::new().await?, TestDatabase::new().await?);
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_chat-bench"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let options = chat_bench::Options {
        bin_dir,
        seconds_per_case: 0.15,
        rounds: 1,
        concurrency: vec![4],
        gateways: vec![1, 2],
        scale_concurrency: 4,
        only: Vec::new(),
        redis_addr: redis.addr.clone(),
        mysql_dsn: database.url.clone(),
    };
    let results = chat_bench::run(&options).await?;

    let names: Vec<&str> = results
        .cases
        .iter()
        .map(|case| case.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "upstream c=1",
            "chat c=1",
            "chat c=1 AUTH_MODE=none",
            "chat c=1 no limiter",
            "chat c=1 RETRIEVAL=off",
            "stream c=1",
            "v1 c=1",
            "v1 stream c=1",
            "upstream c=4",
            "chat c=4",
            "stream c=4",
            "v1 c=4",
            "v1 stream c=4",
            "chat c=4 x1 gateways",
            "chat c=4 x2 gateways",
            "chat c=4 cap=4 (1x)",
            "chat c=16 cap=4 (4x)",
        ]
    );
    assert_eq!(results.errors(), 0, "{}", results.table());
    for case in &results.cases {
        assert!(case.requests > 0, "{}: no request completed", case.name);
        assert!(case.p50_ms > 0.0 && case.p50_ms <= case.p99_ms, "{case:?}");
        if case.target != "upstream" {
            assert!(
                case.cpu_seconds_per_1000.contains_key("gateway-1"),
                "{case:?}"
            );
        }
    }
    for streamed in ["stream c=1", "v1 stream c=1"] {
        let case = results.cases.iter().find(|case| case.name == streamed);
        assert!(
            case.is_some_and(
                |case| case.first_delta_lag_p50_ms.is_some() && case.done_lag_p50_ms.is_some()
            ),
            "{streamed}: {case:?}"
        );
    }
    for target in ["chat", "stream", "v1", "v1 stream"] {
        assert!(results.overhead_p50_ms.contains_key(target), "{target}");
    }
    // Each process's metrics at the end: the gateway timed its calls to the services.
    let gateway = results.metrics.iter().find(|(name, _)| name == "gateway-1");
    assert!(
        gateway.is_some_and(|(_, text)| text.contains("rpc_client_request_duration_seconds")),
        "{:?}",
        results
            .metrics
            .iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
    );
    // gateway-3 is the trust-mode one.
    for process in [
        "filter",
        "token",
        "llm",
        "history",
        "keyword",
        "gateway-1",
        "gateway-2",
        "gateway-3",
    ] {
        for rss in [&results.peak_rss_mib, &results.idle_rss_mib] {
            assert!(rss.get(process).is_some_and(|mib| *mib > 0.0), "{process}");
        }
    }
    assert!(results.cores > 0);

    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&results)?)?;
    assert_eq!(
        json["cases"].as_array().map(Vec::len),
        Some(results.cases.len())
    );
    assert!(results.svg().starts_with("<svg") && results.svg().contains("chat c=4"));
    assert!(results.table().contains("overhead at c=1 (chat, p50)"));
    assert!(results.auth_overhead_p50_ms.is_some());
    assert!(results.table().contains("authentication added"));
    // The limiter's cost and the overload run are reported; at 4x its cap the overload
    // gateway shed some requests with 503 and still answered the ones it admitted.
    assert!(results.limiter_overhead_p50_ms.is_some());
    assert!(results.table().contains("the rate limiter added"));
    assert!(results.retrieval_overhead_p50_ms.is_some());
    assert!(results.table().contains("retrieval added"));
    assert!(results.overload_p99_ratio.is_some(), "{}", results.table());
    assert!(
        results.overload_shed_share.is_some_and(|share| share > 0.0),
        "{}",
        results.table()
    );
    Ok(())
}
