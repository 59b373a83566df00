//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! through fantoccini), and the steps on the page that every browser test takes.
//!
//! [`Browser::finish`] saves a screenshot in `target/browser-artifacts/<test>.png`. Without
//! Chromium or chromedriver (or with `CHAT_SKIP_BROWSER_TESTS=1`) [`Browser::start`] says
//! the test was skipped and answers `None`, and the test passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// How long any one thing may take to show up in the page.
pub const WAIT: Duration = Duration::from_secs(15);

/// One browser at a time per test process: several Chromiums at once on a small machine
/// make every wait flaky.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn artifacts_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; the artefacts go beside it.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-artifacts")
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Says loudly that a test did not run. Straight to the process's stderr, not through
/// `eprintln!`, which the test harness captures and hides for a passing test.
fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {why} ({test})");
}

/// chromedriver, in a process group of its own so the Chromium it starts goes with it.
struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The group id is chromedriver's pid (process_group(0) below).
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn start_driver(driver: &Path) -> anyhow::Result<(Driver, String)> {
    let http = reqwest::Client::new();
    let mut last_error = String::new();
    // A free port can be taken between finding it and chromedriver binding it: retry.
    for _ in 0..3 {
        let port = chat_testing::free_port()?;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let profile =
            std::env::temp_dir().join(format!("chat-browser-{}", uuid::Uuid::new_v4().simple()));
        let mut driver = Driver { child, profile };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = driver.child.try_wait()? {
                last_error = format!("chromedriver exited: {status}");
                break;
            }
            if let Ok(response) = http.get(format!("{url}/status")).send().await
                && response.status().is_success()
            {
                return Ok((driver, url));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if last_error.is_empty() {
            last_error = "chromedriver did not answer on its port".to_owned();
        }
    }
    anyhow::bail!("{last_error}")
}

pub struct Browser {
    pub client: Client,
    test: &'static str,
    _driver: Driver,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// A fresh headless Chromium; `None` (after saying so) when there is none to run.
    pub async fn start(test: &'static str) -> anyhow::Result<Option<Self>> {
        if std::env::var("CHAT_SKIP_BROWSER_TESTS").is_ok_and(|value| value == "1") {
            skipped(test, "CHAT_SKIP_BROWSER_TESTS=1");
            return Ok(None);
        }
        let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = on_path(&["chromedriver"]);
        let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
            skipped(
                test,
                "chromium/chromedriver not installed (apt-get install chromium chromium-driver)",
            );
            return Ok(None);
        };
        let turn = ONE_BROWSER.lock().await;
        std::fs::create_dir_all(artifacts_dir())?;
        let (driver, url) = start_driver(&chromedriver).await?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--force-color-profile=srgb",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", driver.profile.display()),
                ],
            }),
        );
        let mut builder = ClientBuilder::rustls()?;
        builder.capabilities(capabilities);
        let client = builder.connect(&url).await?;
        Ok(Some(Self {
            client,
            test,
            _driver: driver,
            _turn: turn,
        }))
    }

    /// Saves `target/browser-artifacts/<test><suffix>.png`.
    pub async fn screenshot(&self, suffix: &str) -> anyhow::Result<()> {
        let png = self.client.screenshot().await?;
        let path = artifacts_dir().join(format!("{}{suffix}.png", self.test));
        std::fs::write(&path, png)?;
        Ok(())
    }

    /// Saves the screenshot, closes the browser, and answers the test's outcome.
    pub async fn finish(self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let shot = self.screenshot("").await;
        let _ = self.client.clone().close().await;
        outcome?;
        shot
    }

    pub async fn js(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.client.execute(script, Vec::new()).await?)
    }

    /// Polls `script` until it returns something truthy, and answers that.
    pub async fn wait_for(&self, what: &str, script: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + WAIT;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.js(script).await?;
            let truthy = match &last {
                Value::Null => false,
                Value::Bool(flag) => *flag,
                Value::Number(number) => number.as_f64() != Some(0.0),
                Value::String(text) => !text.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let page = self
            .js(
                "return [document.querySelector('#error')?.innerText ?? '', \
                         document.querySelector('#login-error')?.innerText ?? '']",
            )
            .await
            .unwrap_or_default();
        anyhow::bail!("timed out waiting for {what} (last value {last}; the errors say {page})")
    }

    pub async fn type_message(&self, text: &str) -> anyhow::Result<()> {
        let composer = self.client.find(Locator::Css("#composer")).await?;
        composer.click().await?;
        composer.send_keys(text).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.client.find(Locator::Css(css)).await?.click().await?;
        Ok(())
    }

    /// Waits until `count` replies are on the page and none is still streaming.
    pub async fn replies_finished(&self, count: usize) -> anyhow::Result<()> {
        self.wait_for(
            &format!("{count} finished replies"),
            &format!(
                "return document.querySelectorAll('#messages .msg.assistant').length === {count} \
                    && !document.querySelector('#messages .msg.streaming') \
                    && document.getElementById('stop').hidden"
            ),
        )
        .await?;
        Ok(())
    }

    /// The rendered text of every message, in order: (role, text, incomplete).
    pub async fn rendered_messages(&self) -> anyhow::Result<Vec<(String, String, bool)>> {
        let items = self
            .js(
                "return [...document.querySelectorAll('#messages .msg')].map((m) => [\
                    m.classList.contains('user') ? 'user' : 'assistant', \
                    m.innerText, \
                    m.classList.contains('incomplete')])",
            )
            .await?;
        Ok(triples(&items)
            .into_iter()
            .map(|(role, text, incomplete)| (role, text.trim().to_owned(), incomplete))
            .collect())
    }
}

/// A script's answer of `[text, text, flag]` rows (the page's messages, the sidebar's
/// entries) as tuples; a missing or mistyped field reads as empty or `false`.
pub fn triples(items: &Value) -> Vec<(String, String, bool)> {
    items
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| {
            (
                item[0].as_str().unwrap_or_default().to_owned(),
                item[1].as_str().unwrap_or_default().to_owned(),
                item[2].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}
