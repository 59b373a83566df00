//! The browser UI in headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), against the whole stack in-process: a reply streams into the page,
//! a reload shows the history, script in a reply or the history stays inert text, a rate
//! limited send says when to retry, and a stopped reply keeps its partial text.
//!
//! Each test saves a screenshot in `target/browser-artifacts/<test>.png`. Without Chromium
//! or chromedriver (or with `CHAT_SKIP_BROWSER_TESTS=1`) each test says it was skipped and
//! passes.

mod support;

use std::time::{Duration, Instant};

use chat_testing::Upstream;
use fantoccini::Locator;
use fantoccini::key::Key;
use serde_json::json;
use support::Stack;
use support::browser::{Browser, WAIT};

/// The steps on the chat page that only these tests take.
trait ChatPage {
    /// Opens the page, or reloads it, and waits until history and quota have loaded.
    async fn open(&self, url: &str) -> anyhow::Result<()>;
    async fn reload(&self) -> anyhow::Result<()>;
    async fn settled(&self) -> anyhow::Result<()>;
    /// The rendered text of every message, in order: (role, text, incomplete).
    async fn messages(&self) -> anyhow::Result<Vec<(String, String, bool)>>;
    async fn error_banner(&self) -> anyhow::Result<Option<String>>;
}

impl ChatPage for Browser {
    async fn open(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await?;
        self.settled().await
    }

    async fn reload(&self) -> anyhow::Result<()> {
        self.client.refresh().await?;
        self.settled().await
    }

    async fn settled(&self) -> anyhow::Result<()> {
        self.wait_for(
            "the history and the quota to load",
            "return !document.getElementById('messages').hasAttribute('aria-busy') \
                && /\\d/.test(document.getElementById('quota').textContent)",
        )
        .await?;
        Ok(())
    }

    async fn messages(&self) -> anyhow::Result<Vec<(String, String, bool)>> {
        self.rendered_messages().await
    }

    async fn error_banner(&self) -> anyhow::Result<Option<String>> {
        let shown = self
            .js("const e = document.getElementById('error'); return e.hidden ? null : e.innerText")
            .await?;
        Ok(shown.as_str().map(str::to_owned))
    }
}

fn owned(role: &str, text: &str, incomplete: bool) -> (String, String, bool) {
    (role.to_owned(), text.to_owned(), incomplete)
}

#[tokio::test]
async fn a_sent_message_shows_the_reply_streamed_in() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("a_sent_message_shows_the_reply_streamed_in").await? else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        let empty = browser
            .js("return !document.getElementById('empty').hidden")
            .await?;
        anyhow::ensure!(empty == true, "a new user sees the empty state");

        // Keyboard only: type, then Enter sends.
        browser.type_message("Hello   streaming   world").await?;
        browser.type_message(&Key::Enter.to_string()).await?;
        browser.replies_finished(1).await?;

        anyhow::ensure!(
            browser.messages().await?
                == [
                    owned("user", "Hello streaming world", false),
                    owned("assistant", "echo: Hello streaming world", false),
                ],
            "messages: {:?}",
            browser.messages().await?
        );
        stack.ensure_the_provider_streamed()?;
        let usage = browser
            .js("return [...document.querySelectorAll('#messages .usage')].map((u) => u.innerText)")
            .await?;
        anyhow::ensure!(
            usage.as_array().is_some_and(|lines| lines.len() == 1
                && lines[0]
                    .as_str()
                    .is_some_and(|line| line.contains("tokens"))),
            "one usage line: {usage}"
        );
        let quota = browser
            .js("return document.getElementById('quota').textContent")
            .await?;
        let remaining = stack.remaining("u1").await?;
        anyhow::ensure!(
            remaining < stack.daily_limit
                && quota.as_str().is_some_and(|text| text
                    .replace([',', '.', '\u{a0}', '\u{202f}'], "")
                    .contains(&remaining.to_string())),
            "the quota badge shows the {remaining} left: {quota}"
        );
        anyhow::ensure!(browser.error_banner().await?.is_none());
        let focused = browser.js("return document.activeElement.id").await?;
        anyhow::ensure!(
            focused == "composer",
            "focus stays in the composer: {focused}"
        );

        // The same page on a phone, in light and in dark mode.
        browser.client.set_window_size(390, 844).await?;
        browser.screenshot("-phone").await?;
        browser.click("#theme").await?; // auto -> light
        browser.click("#theme").await?; // light -> dark
        browser.screenshot("-phone-dark").await?;
        browser.click("#theme").await?; // back to following the system
        browser.client.set_window_size(1200, 900).await?;
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_reload_shows_the_history_of_the_user() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("a_reload_shows_the_history_of_the_user").await? else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    stack.chat("u2", "a message of another user").await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        browser.type_message("first message").await?;
        browser.click("#send").await?;
        browser.replies_finished(1).await?;
        browser.type_message("second message").await?;
        browser.click("#send").await?;
        browser.replies_finished(2).await?;

        browser.reload().await?;
        let expected = [
            owned("user", "first message", false),
            owned("assistant", "echo: first message", false),
            owned("user", "second message", false),
            owned("assistant", "echo: second message", false),
        ];
        anyhow::ensure!(
            browser.messages().await? == expected,
            "after a reload: {:?}",
            browser.messages().await?
        );

        // Another user's history on a change of user, and back.
        let user = browser.client.find(Locator::Css("#user-id")).await?;
        user.clear().await?;
        user.send_keys(&format!("u2{}", Key::Enter)).await?;
        browser.settled().await?;
        browser
            .wait_for(
                "the other user's history",
                "return document.querySelectorAll('#messages .msg').length === 2",
            )
            .await?;
        anyhow::ensure!(
            browser.messages().await?
                == [
                    owned("user", "a message of another user", false),
                    owned("assistant", "echo: a message of another user", false),
                ],
            "u2: {:?}",
            browser.messages().await?
        );
        user.clear().await?;
        user.send_keys(&format!("u1{}", Key::Enter)).await?;
        browser.settled().await?;
        browser
            .wait_for(
                "u1's history again",
                "return document.querySelectorAll('#messages .msg').length === 4",
            )
            .await?;
        anyhow::ensure!(browser.messages().await? == expected);
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

const PAYLOAD: &str =
    "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=1</script> **bold**";

/// Checks that PAYLOAD is on the page as text, ran nothing, and loaded nothing.
async fn payload_is_inert(browser: &Browser, when: &str) -> anyhow::Result<()> {
    let pwned = browser.js("return typeof window.__pwned").await?;
    anyhow::ensure!(pwned == "undefined", "{when}: a script ran");
    let elements = browser
        .js("return document.querySelectorAll('#messages img, #messages script, #messages iframe').length")
        .await?;
    anyhow::ensure!(elements == 0, "{when}: {elements} img/script elements");
    let fetched = browser
        .js("return performance.getEntriesByType('resource').map((e) => e.name).filter((n) => /\\/x$/.test(n))")
        .await?;
    anyhow::ensure!(
        fetched.as_array().is_some_and(Vec::is_empty),
        "{when}: the image was requested: {fetched}"
    );
    let reply = browser
        .js(
            "const m = [...document.querySelectorAll('#messages .msg.assistant')].pop(); \
             return [m.innerText, [...m.querySelectorAll('strong')].map((s) => s.textContent)]",
        )
        .await?;
    let text = reply[0].as_str().unwrap_or_default();
    anyhow::ensure!(
        text.contains("<img src=x onerror=\"window.__pwned=1\">")
            && text.contains("<script>window.__pwned=1</script>"),
        "{when}: the markup is visible as text: {text:?}"
    );
    anyhow::ensure!(
        reply[1] == json!(["bold"]),
        "{when}: **bold** is <strong>: {reply}"
    );
    let user = browser
        .js("return [...document.querySelectorAll('#messages .msg.user')].pop().innerText")
        .await?;
    anyhow::ensure!(
        user.as_str()
            .is_some_and(|text| text.contains("<b>hi</b> <img src=y onerror=\"window.__pwned=2\">")),
        "{when}: the user's markup is visible as text: {user}"
    );
    Ok(())
}

#[tokio::test]
async fn script_in_a_reply_or_the_history_stays_inert_text() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("script_in_a_reply_or_the_history_stays_inert_text").await?
    else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    stack.provider.always(Upstream::Reply(PAYLOAD.to_owned()));
    let outcome = async {
        browser.open(&stack.base).await?;
        browser
            .type_message("<b>hi</b> <img src=y onerror=\"window.__pwned=2\">")
            .await?;
        browser.click("#send").await?;
        browser.replies_finished(1).await?;
        payload_is_inert(&browser, "streamed").await?;

        browser.reload().await?;
        browser.replies_finished(1).await?;
        payload_is_inert(&browser, "from the history").await?;
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_rate_limited_send_says_when_to_retry() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("a_rate_limited_send_says_when_to_retry").await? else {
        return Ok(());
    };
    let stack = Stack::start_with(|config| config.gateway.rate_limit_per_minute = 1).await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        browser.type_message("first").await?;
        browser.click("#send").await?;
        browser.replies_finished(1).await?;
        browser.type_message("second").await?;
        browser.click("#send").await?;
        let shown = browser
            .wait_for(
                "the error banner",
                "const e = document.getElementById('error'); return !e.hidden && e.innerText",
            )
            .await?;
        let text = shown.as_str().unwrap_or_default();
        anyhow::ensure!(
            text.contains("Too many requests")
                && regex::Regex::new(r"wait \d+ seconds? \(until .+\)")?.is_match(text),
            "the banner explains the rate limit and when to retry: {text:?}"
        );
        let role = browser
            .js("return document.getElementById('error').getAttribute('role')")
            .await?;
        anyhow::ensure!(role == "alert");
        // The refused message is not shown as sent, and is still there to send again.
        anyhow::ensure!(
            browser.messages().await?
                == [
                    owned("user", "first", false),
                    owned("assistant", "echo: first", false)
                ],
            "{:?}",
            browser.messages().await?
        );
        let draft = browser
            .js("return document.getElementById('composer').value")
            .await?;
        anyhow::ensure!(draft == "second", "the draft is kept: {draft}");
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn stopping_a_reply_keeps_the_partial_text_marked_incomplete() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("stopping_a_reply_keeps_the_partial_text_marked_incomplete").await?
    else {
        return Ok(());
    };
    let full: String = (1..=80).map(|n| format!("word{n} ")).collect();
    let full = full.trim_end().to_owned();
    let stack = Stack::start().await?;
    stack.provider.always(Upstream::Streamed {
        text: full.clone(),
        chunk_delay: Duration::from_millis(150),
    });
    let outcome = async {
        browser.open(&stack.base).await?;
        browser.type_message("tell me a long story").await?;
        browser.click("#send").await?;
        browser
            .wait_for(
                "some of the reply",
                "const m = document.querySelector('#messages .msg.assistant'); \
                 return !!m && m.innerText.includes('word3')",
            )
            .await?;
        browser.click("#stop").await?;
        browser.replies_finished(1).await?;

        let shown = browser.messages().await?;
        let partial = match shown.as_slice() {
            [(_, user, false), (role, partial, true)]
                if user == "tell me a long story" && role == "assistant" =>
            {
                partial.clone()
            }
            _ => anyhow::bail!("a user message and a reply marked incomplete: {shown:?}"),
        };
        anyhow::ensure!(
            partial.len() < full.len() && full.starts_with(&partial),
            "the partial text is the start of the reply: {partial:?}"
        );
        let flag = browser
            .js("return document.querySelector('#messages .turn.assistant .flag')?.innerText ?? ''")
            .await?;
        anyhow::ensure!(
            flag.as_str().is_some_and(|text| text.contains("Stopped")),
            "the reply says it was stopped: {flag}"
        );
        anyhow::ensure!(browser.error_banner().await?.is_none());

        // The server saves what was generated, marked incomplete, once it sees the hang-up.
        let deadline = Instant::now() + WAIT;
        let saved = loop {
            let items = stack.history_items("u1").await?;
            if let Some(last) = items.last()
                && last["role"] == "assistant"
            {
                anyhow::ensure!(last["incomplete"] == true, "saved as incomplete: {last}");
                break last["text"].as_str().unwrap_or_default().trim().to_owned();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the partial reply was not saved: {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        anyhow::ensure!(
            saved.starts_with(&partial) && full.starts_with(&saved) && saved.len() < full.len(),
            "saved {saved:?}, shown {partial:?}"
        );

        browser.reload().await?;
        anyhow::ensure!(
            browser.messages().await?
                == [
                    owned("user", "tell me a long story", false),
                    owned("assistant", &saved, true),
                ],
            "after a reload: {:?}",
            browser.messages().await?
        );
        let flag = browser
            .js("return document.querySelector('#messages .turn.assistant .flag')?.innerText ?? ''")
            .await?;
        anyhow::ensure!(
            flag.as_str()
                .is_some_and(|text| text.contains("Incomplete")),
            "the history marks it: {flag}"
        );
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

/// Waits for the error banner and answers its text.
async fn banner(browser: &Browser) -> anyhow::Result<String> {
    let shown = browser
        .wait_for(
            "the error banner",
            "const e = document.getElementById('error'); return !e.hidden && e.innerText",
        )
        .await?;
    Ok(shown.as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_reply_cut_short_by_the_provider_is_kept_and_explained() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("a_reply_cut_short_by_the_provider_is_kept_and_explained").await?
    else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    stack.provider.then([
        Upstream::BrokenStream {
            text: "alpha beta gamma delta epsilon".into(),
            after_chunks: 3,
        },
        Upstream::InsufficientQuota,
    ]);
    let outcome = async {
        browser.open(&stack.base).await?;
        browser.type_message("tell me five words").await?;
        browser.click("#send").await?;
        browser.replies_finished(1).await?;
        let text = banner(&browser).await?;
        anyhow::ensure!(
            text.contains("language model") && text.contains("incomplete"),
            "the banner explains the broken reply: {text:?}"
        );
        anyhow::ensure!(
            browser.messages().await?
                == [
                    owned("user", "tell me five words", false),
                    owned("assistant", "alpha beta gamma", true),
                ],
            "{:?}",
            browser.messages().await?
        );

        // The provider out of credit: refused before any text, explained in words.
        browser.click("#error-close").await?;
        browser.type_message("hello again").await?;
        browser.click("#send").await?;
        let text = banner(&browser).await?;
        anyhow::ensure!(text.contains("out of credit"), "{text:?}");
        anyhow::ensure!(browser.messages().await?.len() == 2);
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_blocked_message_and_a_spent_quota_are_explained() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("a_blocked_message_and_a_spent_quota_are_explained").await?
    else {
        return Ok(());
    };
    // Less than one reservation: every chat is refused by the quota.
    let stack = Stack::start_with(|config| config.token.daily_limit = 100).await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        browser.type_message("foo bar").await?;
        browser.click("#send").await?;
        let text = banner(&browser).await?;
        anyhow::ensure!(text.contains("blocked by the content filter"), "{text:?}");

        browser.click("#error-close").await?;
        browser
            .client
            .find(Locator::Css("#composer"))
            .await?
            .clear()
            .await?;
        browser.type_message("hello").await?;
        browser.click("#send").await?;
        let text = banner(&browser).await?;
        anyhow::ensure!(
            text.contains("too few tokens left today")
                && regex::Regex::new(r"resets at .+ your time \(in .+\)")?.is_match(&text),
            "the banner says when the quota resets: {text:?}"
        );
        anyhow::ensure!(browser.messages().await?.is_empty());
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

/// Runs without a browser: the page never hands reply text to the HTML parser and
/// loads nothing from anywhere.
#[test]
fn the_page_parses_no_reply_html_and_loads_nothing_remote() -> anyhow::Result<()> {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/index.html"))?;
    for forbidden in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "DOMParser",
        "createContextualFragment",
        "eval(",
        "new Function",
        "<script src",
        "<link rel=\"stylesheet\"",
        "@import",
        "url(",
        "<img",
        "<iframe",
    ] {
        anyhow::ensure!(
            !page.contains(forbidden),
            "web/index.html contains {forbidden:?}"
        );
    }
    anyhow::ensure!(page.contains("Content-Security-Policy"));
    Ok(())
}
