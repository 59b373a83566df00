//! The real OpenAI clients against the real stack: starts every service as its own
//! process (as deployed, authentication on, the provider a local server speaking
//! OpenAI's wire format), makes the users the tests need through the admin API, and runs
//! the Python tests in `tests/python/` (the official `openai` package and
//! `langchain-openai`) with pytest from the virtual environment `make test` creates
//! (`target/python-venv`, from `tests/python/requirements.txt`).
//!
//! Without that environment the test prints `SKIPPED` and passes, unless `CI` is set:
//! then it fails, since CI must run them. `CHAT_PYTHON` names another interpreter.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_testing::stack::{self, Backing, Stack};
use chat_testing::{FakeOpenAi, TestDatabase, TestRedis};
use serde_json::{Value, json};

const ADMIN: &str = "python-admin-key";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The interpreter of the tests' virtual environment, if there is one.
fn python() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os("CHAT_PYTHON") {
        return Some(PathBuf::from(named));
    }
    let venv = workspace().join("target/python-venv/bin/python");
    venv.exists().then_some(venv)
}

/// Creates a user with `limits` and answers a key of theirs.
async fn key_for(
    http: &reqwest::Client,
    gateway: &str,
    user_id: &str,
    limits: Value,
) -> anyhow::Result<String> {
    chat_testing::accounts::make_user_with(http, gateway, ADMIN, user_id, limits, "python").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_and_langchain_work_through_the_gateway() -> anyhow::Result<()> {
    let Some(python) = python() else {
        anyhow::ensure!(
            std::env::var_os("CI").is_none(),
            "no Python environment for the client tests: `make test` creates target/python-venv"
        );
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: no target/python-venv (make test creates it)"
        );
        return Ok(());
    };
    chat_common::telemetry::init_for_tests();
    let redis = TestRedis::new().await?;
    let database = TestDatabase::new().await?;
    let provider = FakeOpenAi::start().await?;
    let backing = Backing::of(&redis, &database, &provider);
    let gateway_binary = PathBuf::from(env!("CARGO_BIN_EXE_chat-gateway"));
    let env = [
        ("RUST_LOG", "warn"),
        ("AUTH_MODE", "required"),
        ("ADMIN_API_KEY", ADMIN),
        ("ADMIN_PASSWORD", "python-admin-password"),
        // Each user's own limits decide; nobody else's requests count against them.
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("READ_RATE_LIMIT_PER_MINUTE", "0"),
        ("ADDRESS_RATE_LIMIT_PER_MINUTE", "0"),
        ("MAX_OUTPUT_TOKENS", "100"),
        ("FILTER_TIMEOUT_MS", "5000"),
        ("TOKEN_TIMEOUT_MS", "5000"),
        ("HISTORY_TIMEOUT_MS", "5000"),
    ];
    let options = stack::Processes {
        bin_dir: gateway_binary
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        gateways: 1,
        env: env
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
    };
    let stack = Stack::processes(&backing, &options).await?;
    let gateway = stack.gateway().to_owned();
    let metrics = stack
        .metrics
        .iter()
        .find(|(name, _)| name == "gateway-1")
        .map(|(_, url)| url.clone())
        .unwrap_or_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let key = key_for(&http, &gateway, "py-user", json!({})).await?;
    let limited = key_for(
        &http,
        &gateway,
        "py-limited",
        json!({"rate_limit_per_minute": 1}),
    )
    .await?;
    let spent = key_for(&http, &gateway, "py-spent", json!({"daily_limit": 10})).await?;

    let tests = workspace().join("services/gateway/tests/python");
    let run = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider"])
        .arg(&tests)
        .current_dir(&tests)
        .env("CHAT_BASE_URL", format!("{gateway}/v1"))
        .env("CHAT_METRICS_URL", &metrics)
        .env("CHAT_MODEL", &backing.model)
        .env("CHAT_API_KEY", &key)
        .env("CHAT_LIMITED_KEY", &limited)
        .env("CHAT_SPENT_KEY", &spent)
        .env("LANGCHAIN_TRACING_V2", "false")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run).await??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // pytest's own report, in the test's output (nextest shows it with --no-capture).
    let _ = writeln!(std::io::stderr().lock(), "{}", said.trim());
    anyhow::ensure!(output.status.success(), "pytest failed:\n{said}");
    anyhow::ensure!(said.contains(" passed"), "pytest ran nothing:\n{said}");
    anyhow::ensure!(
        !provider.requests().is_empty(),
        "the provider was reached through the gateway"
    );
    Ok(())
}
