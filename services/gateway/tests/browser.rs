//! The browser UI in headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), against the whole stack in-process: a reply streams into the page,
//! a reload shows the history, script in a reply or the history stays inert text, a rate
//! limited send says when to retry, and a stopped reply keeps its partial text. Replies
//! render Markdown (tables, nested lists, code with a copy button); conversations live in a
//! sidebar (new chat, switch, rename, delete after a confirmation), the open one in the
//! address bar, and on a phone the sidebar hides behind a menu button. A search box above
//! the list finds the user's messages in every conversation (with the keyword service) and
//! opens a conversation at the message found.
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
use sha2::{Digest, Sha256};
use support::Stack;
use support::browser::{Browser, WAIT, triples};

/// The steps on the chat page that only these tests take.
trait ChatPage {
    /// Opens the page, or reloads it, and waits until history and quota have loaded.
    async fn open(&self, url: &str) -> anyhow::Result<()>;
    async fn reload(&self) -> anyhow::Result<()>;
    async fn settled(&self) -> anyhow::Result<()>;
    /// The rendered text of every message, in order: (role, text, incomplete).
    async fn messages(&self) -> anyhow::Result<Vec<(String, String, bool)>>;
    /// Checks that the page shows exactly `expected`; `when` names the moment if not.
    async fn ensure_shown(
        &self,
        expected: &[(String, String, bool)],
        when: &str,
    ) -> anyhow::Result<()>;
    async fn error_banner(&self) -> anyhow::Result<Option<String>>;
    /// Types `text` into the composer and clicks Send.
    async fn send(&self, text: &str) -> anyhow::Result<()>;
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

    async fn ensure_shown(
        &self,
        expected: &[(String, String, bool)],
        when: &str,
    ) -> anyhow::Result<()> {
        let shown = self.messages().await?;
        anyhow::ensure!(shown == expected, "{when}: {shown:?}");
        Ok(())
    }

    async fn error_banner(&self) -> anyhow::Result<Option<String>> {
        let shown = self
            .js("const e = document.getElementById('error'); return e.hidden ? null : e.innerText")
            .await?;
        Ok(shown.as_str().map(str::to_owned))
    }

    async fn send(&self, text: &str) -> anyhow::Result<()> {
        self.type_message(text).await?;
        self.click("#send").await
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

        browser
            .ensure_shown(&pair("Hello streaming world"), "messages")
            .await?;
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
        send_and_wait(&browser, "first message", 1).await?;
        send_and_wait(&browser, "second message", 2).await?;

        browser.reload().await?;
        let expected = [
            owned("user", "first message", false),
            owned("assistant", "echo: first message", false),
            owned("user", "second message", false),
            owned("assistant", "echo: second message", false),
        ];
        browser.ensure_shown(&expected, "after a reload").await?;

        // Another user's history on a change of user, and back.
        switch_user(&browser, "u2", 2).await?;
        browser
            .ensure_shown(&pair("a message of another user"), "u2")
            .await?;
        switch_user(&browser, "u1", 4).await?;
        browser.ensure_shown(&expected, "u1 again").await?;
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

/// Types `user` into the user field and presses Enter, and waits until the page shows
/// `count` messages of theirs.
async fn switch_user(browser: &Browser, user: &str, count: usize) -> anyhow::Result<()> {
    let field = browser.client.find(Locator::Css("#user-id")).await?;
    field.clear().await?;
    field.send_keys(&format!("{user}{}", Key::Enter)).await?;
    browser.settled().await?;
    browser
        .wait_for(
            &format!("{count} messages of {user}"),
            &format!("return document.querySelectorAll('#messages .msg').length === {count}"),
        )
        .await?;
    Ok(())
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
        send_and_wait(
            &browser,
            "<b>hi</b> <img src=y onerror=\"window.__pwned=2\">",
            1,
        )
        .await?;
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
        send_and_wait(&browser, "first", 1).await?;
        browser.send("second").await?;
        let text = banner(&browser).await?;
        anyhow::ensure!(
            text.contains("Too many requests")
                && regex::Regex::new(r"wait \d+ seconds? \(until .+\)")?.is_match(&text),
            "the banner explains the rate limit and when to retry: {text:?}"
        );
        let role = browser
            .js("return document.getElementById('error').getAttribute('role')")
            .await?;
        anyhow::ensure!(role == "alert");
        // The refused message is not shown as sent, and is still there to send again.
        browser.ensure_shown(&pair("first"), "the messages").await?;
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
    let stack = streaming_stack(&full, Duration::from_millis(150)).await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        browser.send("tell me a long story").await?;
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
        browser
            .ensure_shown(
                &[
                    owned("user", "tell me a long story", false),
                    owned("assistant", &saved, true),
                ],
                "after a reload",
            )
            .await?;
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

/// A stack whose provider streams `text` as every reply, a chunk every `chunk_delay`.
async fn streaming_stack(text: &str, chunk_delay: Duration) -> anyhow::Result<Stack> {
    let stack = Stack::start().await?;
    stack.provider.always(Upstream::Streamed {
        text: text.to_owned(),
        chunk_delay,
    });
    Ok(stack)
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
        send_and_wait(&browser, "tell me five words", 1).await?;
        let text = banner(&browser).await?;
        anyhow::ensure!(
            text.contains("language model") && text.contains("incomplete"),
            "the banner explains the broken reply: {text:?}"
        );
        browser
            .ensure_shown(
                &[
                    owned("user", "tell me five words", false),
                    owned("assistant", "alpha beta gamma", true),
                ],
                "the messages",
            )
            .await?;

        // The provider out of credit: refused before any text, explained in words.
        browser.click("#error-close").await?;
        browser.send("hello again").await?;
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
        browser.send("foo bar").await?;
        let text = banner(&browser).await?;
        anyhow::ensure!(text.contains("blocked by the content filter"), "{text:?}");

        browser.click("#error-close").await?;
        browser
            .client
            .find(Locator::Css("#composer"))
            .await?
            .clear()
            .await?;
        browser.send("hello").await?;
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
    // Only the page's own script may run: the policy pins its hash, not 'unsafe-inline'.
    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(script, _)| script)
        .ok_or_else(|| anyhow::anyhow!("no inline script"))?;
    anyhow::ensure!(
        page.matches("<script").count() == 1,
        "one script element, pinned by its hash"
    );
    let pinned = format!("script-src 'sha256-{}';", base64(&Sha256::digest(script)));
    anyhow::ensure!(
        page.contains(&pinned)
            && !page.contains("'unsafe-inline'; style-src 'unsafe-inline'; connect"),
        "the page's Content-Security-Policy must say {pinned:?} (the script changed)"
    );
    Ok(())
}

/// Standard base64 with padding, as CSP hashes are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ============================== Markdown ==============================

/// A reply with every block the renderer knows, and two things it must not make live.
const MARKDOWN_REPLY: &str = "## Plan\n\
\n\
Some *emphasis*, **strong** and `inline code`. See [the docs](https://example.com/docs) or [this](javascript:alert(1)).\n\
\n\
1. First\n   - nested a\n   - nested b\n2. Second\n\
\n\
| Name | Qty |\n|:-----|----:|\n| apple | 3 |\n| pear | 10 |\n\
\n\
```rust\nfn main() {\n    println!(\"<b>hi</b>\");\n}\n```\n\
\n\
> quoted text\n\
\n\
![remote](https://example.com/x.png)";

const RENDERED_CODE: &str = "fn main() {\n    println!(\"<b>hi</b>\");\n}";

/// What the last reply on the page is made of, as the Markdown renderer built it.
async fn reply_shape(browser: &Browser) -> anyhow::Result<serde_json::Value> {
    browser
        .js(
            "const m = [...document.querySelectorAll('#messages .msg.assistant')].pop(); \
             const texts = (sel) => [...m.querySelectorAll(sel)].map((e) => e.textContent); \
             return { \
               h2: texts('h2'), em: texts('em'), strong: texts('strong'), \
               inline: texts(':not(pre) > code'), \
               links: [...m.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.rel, a.target, a.textContent]), \
               nested: texts('ol > li > ul > li'), \
               th: texts('table thead th'), \
               rows: [...m.querySelectorAll('table tbody tr')].map((tr) => [...tr.cells].map((c) => c.textContent)), \
               align: [...m.querySelectorAll('table tbody tr:first-child td')].map((td) => td.style.textAlign), \
               code: texts('pre > code'), \
               lang: [...m.querySelectorAll('.codebar')].map((b) => b.dataset.lang), \
               copy: [...m.querySelectorAll('.codeblock button.copy-code')].map((b) => b.getAttribute('aria-label')), \
               quote: texts('blockquote').map((t) => t.trim()), \
               live: document.querySelectorAll('#messages img, #messages script, #messages iframe').length, \
               unlinked: [...m.querySelectorAll('span')].map((s) => s.textContent).filter((t) => t === 'this'), \
             }",
        )
        .await
}

fn expected_shape() -> serde_json::Value {
    json!({
        "h2": ["Plan"],
        "em": ["emphasis"],
        "strong": ["strong"],
        "inline": ["inline code"],
        "links": [
            ["https://example.com/docs", "noopener noreferrer nofollow", "_blank", "the docs"],
            ["https://example.com/x.png", "noopener noreferrer nofollow", "_blank", "[image: remote]"],
        ],
        "nested": ["nested a", "nested b"],
        "th": ["Name", "Qty"],
        "rows": [["apple", "3"], ["pear", "10"]],
        "align": ["", "right"],
        "code": [RENDERED_CODE],
        "lang": ["rust"],
        "copy": ["Copy code"],
        "quote": ["quoted text"],
        "live": 0,
        "unlinked": ["this"],
    })
}

#[tokio::test]
async fn a_reply_in_markdown_renders_tables_lists_and_code_with_a_copy_button() -> anyhow::Result<()>
{
    let Some(browser) =
        Browser::start("a_reply_in_markdown_renders_tables_lists_and_code_with_a_copy_button")
            .await?
    else {
        return Ok(());
    };
    let stack = streaming_stack(MARKDOWN_REPLY, Duration::from_millis(60)).await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        browser.send("show me everything").await?;
        // While it streams, a code fence not closed yet already shows as code.
        browser
            .wait_for(
                "a half-received code block shown as code",
                "const m = document.querySelector('#messages .msg.assistant.streaming'); \
                 return !!m && !!m.querySelector('.codeblock pre > code') \
                     && !m.querySelector('blockquote')",
            )
            .await?;
        browser.replies_finished(1).await?;
        let shape = reply_shape(&browser).await?;
        anyhow::ensure!(shape == expected_shape(), "streamed: {shape:#}");

        // The copy button puts the code, exactly, on the clipboard.
        browser.click("#messages .codeblock button.copy-code").await?;
        browser
            .wait_for(
                "the copy button to say it copied",
                "return document.querySelector('#messages .codeblock button.copy-code').hasAttribute('data-copied')",
            )
            .await?;
        let composer = browser.client.find(Locator::Css("#composer")).await?;
        composer.clear().await?;
        composer.click().await?;
        composer
            .send_keys(&format!("{}v{}", Key::Control, Key::Control))
            .await?;
        let pasted = browser
            .js("return document.getElementById('composer').value")
            .await?;
        anyhow::ensure!(pasted == RENDERED_CODE, "pasted {pasted}");
        composer.clear().await?;

        // The same from the history.
        browser.reload().await?;
        browser.replies_finished(1).await?;
        let shape = reply_shape(&browser).await?;
        anyhow::ensure!(shape == expected_shape(), "from the history: {shape:#}");
        anyhow::ensure!(browser.error_banner().await?.is_none());
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

// ============================== conversations ==============================

/// The sidebar's entries, in order: (id, title, is the open one).
async fn sidebar(browser: &Browser) -> anyhow::Result<Vec<(String, String, bool)>> {
    let items = browser
        .js(
            "return [...document.querySelectorAll('#conversations .conv')].map((li) => [\
                li.dataset.id, \
                li.querySelector('.conv-title')?.textContent ?? '', \
                li.classList.contains('current') \
                    && li.querySelector('.conv-open')?.getAttribute('aria-current') === 'page'])",
        )
        .await?;
    Ok(triples(&items))
}

/// The conversation the address bar names (`?c=`).
async fn url_conversation(browser: &Browser) -> anyhow::Result<Option<String>> {
    let c = browser
        .js("return new URLSearchParams(location.search).get('c')")
        .await?;
    Ok(c.as_str().map(str::to_owned))
}

/// Sends `text` from the composer and waits for the `replies`-th reply on the page.
async fn send_and_wait(browser: &Browser, text: &str, replies: usize) -> anyhow::Result<()> {
    browser.send(text).await?;
    browser.replies_finished(replies).await
}

/// Opens the page, chats `first` (in a new conversation), then `second` in a new chat;
/// answers the two conversations the address bar named.
async fn two_conversations(
    browser: &Browser,
    stack: &Stack,
    first: &str,
    second: &str,
) -> anyhow::Result<(String, String)> {
    browser.open(&stack.base).await?;
    send_and_wait(browser, first, 1).await?;
    let first = url_conversation(browser).await?.unwrap_or_default();
    browser.click("#new-chat").await?;
    send_and_wait(browser, second, 1).await?;
    let second = url_conversation(browser).await?.unwrap_or_default();
    Ok((first, second))
}

/// Waits until the sidebar's entry `id` has a title other than the placeholder; answers it.
async fn titled(browser: &Browser, id: &str) -> anyhow::Result<String> {
    let title = browser
        .wait_for(
            &format!("a title for {id}"),
            &format!(
                "const li = [...document.querySelectorAll('#conversations .conv')].find((li) => li.dataset.id === {id:?}); \
                 const t = li?.querySelector('.conv-title')?.textContent ?? ''; \
                 return t !== 'New chat' && t"
            ),
        )
        .await?;
    Ok(title.as_str().unwrap_or_default().to_owned())
}

/// Clicks the button `act` (open, rename, delete) of the sidebar's entry `id`.
async fn click_conversation(browser: &Browser, id: &str, act: &str) -> anyhow::Result<()> {
    browser
        .click(&format!(
            "#conversations .conv[data-id=\"{id}\"] button[data-act=\"{act}\"]"
        ))
        .await
}

/// Deletes the sidebar's entry `id`, confirming in the dialog that asks first.
async fn delete_confirmed(browser: &Browser, id: &str) -> anyhow::Result<()> {
    click_conversation(browser, id, "delete").await?;
    browser
        .wait_for(
            "the confirmation",
            "return document.getElementById('delete-dialog').open",
        )
        .await?;
    browser.click("#delete-confirm").await
}

/// Waits until the page shows conversation `id` with exactly `messages`.
async fn showing(
    browser: &Browser,
    id: &str,
    messages: &[(String, String, bool)],
) -> anyhow::Result<()> {
    browser.settled().await?;
    browser
        .wait_for(
            &format!("conversation {id} with {} messages", messages.len()),
            &format!(
                "return new URLSearchParams(location.search).get('c') === {id:?} \
                    && document.querySelectorAll('#messages .msg').length === {}",
                messages.len()
            ),
        )
        .await?;
    let shown = browser.messages().await?;
    anyhow::ensure!(shown == messages, "conversation {id} shows {shown:?}");
    let current: Vec<_> = sidebar(browser)
        .await?
        .into_iter()
        .filter(|(_, _, current)| *current)
        .map(|(id, _, _)| id)
        .collect();
    anyhow::ensure!(
        current == [id],
        "the sidebar marks {current:?} as open, not {id}"
    );
    Ok(())
}

/// The user's conversations as the API lists them, newest activity first.
async fn listed(stack: &Stack, user: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let response = stack
        .http
        .get(stack.url(&format!("/conversations?user_id={user}")))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::OK,
        "list: {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await?;
    Ok(body["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// What the API answers for conversation `id` of `user` (and its messages).
async fn conversation_status(
    stack: &Stack,
    user: &str,
    id: &str,
) -> anyhow::Result<(reqwest::StatusCode, reqwest::StatusCode)> {
    let status =
        async |path: String| anyhow::Ok(stack.http.get(stack.url(&path)).send().await?.status());
    let one = status(format!("/conversations/{id}?user_id={user}")).await?;
    let messages = status(format!("/conversations/{id}/messages?user_id={user}")).await?;
    Ok((one, messages))
}

fn pair(user: &str) -> [(String, String, bool); 2] {
    [
        owned("user", user, false),
        owned("assistant", &format!("echo: {user}"), false),
    ]
}

#[tokio::test]
async fn a_new_chat_and_switching_show_each_conversations_own_messages() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("a_new_chat_and_switching_show_each_conversations_own_messages").await?
    else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        anyhow::ensure!(url_conversation(&browser).await?.is_none());
        anyhow::ensure!(sidebar(&browser).await?.is_empty());

        send_and_wait(&browser, "apples are red", 1).await?;
        let apples = url_conversation(&browser)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no ?c= after the first message"))?;
        let title = titled(&browser, &apples).await?;
        anyhow::ensure!(title.contains("apples"), "titled from the first message: {title:?}");

        // New chat: an empty page, nothing in the address bar, nothing marked open.
        browser.click("#new-chat").await?;
        browser
            .wait_for(
                "an empty new chat",
                "return !document.getElementById('empty').hidden \
                    && !document.querySelector('#messages .msg') \
                    && !new URLSearchParams(location.search).has('c') \
                    && !document.querySelector('#conversations .conv.current')",
            )
            .await?;
        let focused = browser.js("return document.activeElement.id").await?;
        anyhow::ensure!(focused == "composer", "focus goes to the composer: {focused}");

        send_and_wait(&browser, "bananas are yellow", 1).await?;
        let bananas = url_conversation(&browser)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no ?c= in the new chat"))?;
        anyhow::ensure!(bananas != apples, "a second conversation");
        titled(&browser, &bananas).await?;
        let ids: Vec<_> = sidebar(&browser).await?.into_iter().map(|(id, _, _)| id).collect();
        anyhow::ensure!(ids == [bananas.clone(), apples.clone()], "newest first: {ids:?}");
        // The provider saw nothing of the first conversation in the second.
        let asked = stack.provider.requests();
        let last = asked.last().map(ToString::to_string).unwrap_or_default();
        anyhow::ensure!(
            last.contains("bananas") && !last.contains("apples"),
            "the second conversation's context: {last}"
        );
        let api: Vec<_> = listed(&stack, "u1")
            .await?
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        anyhow::ensure!(api == [bananas.clone(), apples.clone()], "the API lists {api:?}");

        click_conversation(&browser, &apples, "open").await?;
        showing(&browser, &apples, &pair("apples are red")).await?;
        click_conversation(&browser, &bananas, "open").await?;
        showing(&browser, &bananas, &pair("bananas are yellow")).await?;
        // The browser's back button goes back to the conversation before.
        browser.client.back().await?;
        showing(&browser, &apples, &pair("apples are red")).await?;

        // A second message goes on in the open conversation, and it moves to the top.
        send_and_wait(&browser, "and cherries", 2).await?;
        let mut both = pair("apples are red").to_vec();
        both.extend(pair("and cherries"));
        showing(&browser, &apples, &both).await?;
        browser
            .wait_for(
                "the conversation with the newest message first",
                &format!(
                    "return document.querySelector('#conversations .conv')?.dataset.id === {apples:?}"
                ),
            )
            .await?;
        anyhow::ensure!(browser.error_banner().await?.is_none());
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_reload_or_a_shared_link_opens_the_conversation_and_an_unknown_one_says_so()
-> anyhow::Result<()> {
    let Some(browser) = Browser::start(
        "a_reload_or_a_shared_link_opens_the_conversation_and_an_unknown_one_says_so",
    )
    .await?
    else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    stack.chat("u2", "a secret of another user").await?;
    let theirs = listed(&stack, "u2").await?;
    let theirs = theirs
        .first()
        .and_then(|c| c["id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("u2 has no conversation"))?
        .to_owned();
    let outcome = async {
        let (first, second) =
            two_conversations(&browser, &stack, "first topic", "second topic").await?;

        // A link to the older one opens it, not the newest.
        browser.open(&format!("{}/?c={first}", stack.base)).await?;
        showing(&browser, &first, &pair("first topic")).await?;
        browser.reload().await?;
        showing(&browser, &first, &pair("first topic")).await?;
        let title = browser.js("return document.title").await?;
        anyhow::ensure!(
            title.as_str().is_some_and(|t| t.contains("first topic")),
            "the tab's title names the conversation: {title}"
        );

        // Without ?c= the page opens the most recently active one and names it.
        browser.open(&stack.base).await?;
        showing(&browser, &second, &pair("second topic")).await?;

        // An unknown id, and another user's: a clear message and an empty new chat.
        for (what, id) in [
            ("unknown", "0b7f5a52-6e0c-4a36-9d0e-000000000000".to_owned()),
            ("malformed", "not-a-conversation".to_owned()),
            ("another user's", theirs.clone()),
        ] {
            browser.open(&format!("{}/?c={id}", stack.base)).await?;
            let text = banner(&browser).await?;
            anyhow::ensure!(
                text.contains("not found"),
                "{what}: the banner says {text:?}"
            );
            anyhow::ensure!(
                browser.messages().await?.is_empty(),
                "{what}: shows messages"
            );
            anyhow::ensure!(
                url_conversation(&browser).await?.is_none(),
                "{what}: the address bar still names it"
            );
            let page = browser.js("return document.body.innerText").await?;
            anyhow::ensure!(
                !page.as_str().unwrap_or_default().contains("secret"),
                "{what}: another user's text on the page"
            );
        }
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_conversation_is_renamed_in_place_and_deleted_after_a_confirmation() -> anyhow::Result<()>
{
    let Some(browser) =
        Browser::start("a_conversation_is_renamed_in_place_and_deleted_after_a_confirmation")
            .await?
    else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    let outcome = async {
        let (older, newer) =
            two_conversations(&browser, &stack, "older chat", "newer chat").await?;
        titled(&browser, &older).await?;
        titled(&browser, &newer).await?;

        // Rename: Escape leaves the title alone; Enter saves it.
        click_conversation(&browser, &older, "rename").await?;
        let input = browser
            .client
            .find(Locator::Css("#conversations input.conv-rename"))
            .await?;
        input.send_keys(&format!("ignored{}", Key::Escape)).await?;
        let entries = sidebar(&browser).await?;
        anyhow::ensure!(
            entries.iter().all(|(_, title, _)| !title.contains("ignored")),
            "Escape cancels: {entries:?}"
        );
        click_conversation(&browser, &older, "rename").await?;
        let input = browser
            .client
            .find(Locator::Css("#conversations input.conv-rename"))
            .await?;
        // The old title is selected: typing replaces it (WebDriver's clear() would blur,
        // and leaving the field ends the edit).
        input
            .send_keys(&format!("Trip <b>plans</b>{}", Key::Enter))
            .await?;
        browser
            .wait_for(
                "the new title in the sidebar and at the server",
                &format!(
                    "return [...document.querySelectorAll('#conversations .conv')]\
                        .some((li) => li.dataset.id === {older:?} \
                            && li.querySelector('.conv-title').textContent === 'Trip <b>plans</b>')"
                ),
            )
            .await?;
        let deadline = Instant::now() + WAIT;
        loop {
            let titles: Vec<_> = listed(&stack, "u1")
                .await?
                .iter()
                .filter(|c| c["id"] == older.as_str())
                .map(|c| c["title"].as_str().unwrap_or_default().to_owned())
                .collect();
            if titles == ["Trip <b>plans</b>"] {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the server has {titles:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let bold = browser
            .js("return document.querySelectorAll('#conversations b').length")
            .await?;
        anyhow::ensure!(bold == 0, "a title is text, never markup");
        // The rename survives a reload.
        browser.reload().await?;
        let entries = sidebar(&browser).await?;
        anyhow::ensure!(
            entries.iter().any(|(id, title, _)| id == &older && title == "Trip <b>plans</b>"),
            "after a reload: {entries:?}"
        );

        // Delete asks first; Cancel keeps it.
        showing(&browser, &newer, &pair("newer chat")).await?;
        click_conversation(&browser, &newer, "delete").await?;
        let dialog = browser
            .wait_for(
                "the confirmation",
                "const d = document.getElementById('delete-dialog'); return d.open && d.innerText",
            )
            .await?;
        anyhow::ensure!(
            dialog.as_str().is_some_and(|text| text.contains("newer chat")),
            "the dialog names the conversation: {dialog}"
        );
        browser.click("#delete-cancel").await?;
        anyhow::ensure!(sidebar(&browser).await?.len() == 2, "Cancel deletes nothing");
        anyhow::ensure!(
            conversation_status(&stack, "u1", &newer).await?.0 == reqwest::StatusCode::OK
        );

        // Confirmed: gone from the sidebar and the server, and the other one is opened.
        delete_confirmed(&browser, &newer).await?;
        showing(&browser, &older, &pair("older chat")).await?;
        let ids: Vec<_> = sidebar(&browser).await?.into_iter().map(|(id, _, _)| id).collect();
        anyhow::ensure!(ids == [older.clone()], "the sidebar after the delete: {ids:?}");
        anyhow::ensure!(
            conversation_status(&stack, "u1", &newer).await?
                == (reqwest::StatusCode::NOT_FOUND, reqwest::StatusCode::NOT_FOUND),
            "a deleted conversation reads as 404"
        );

        // Deleting the last one leaves an empty new chat.
        delete_confirmed(&browser, &older).await?;
        browser
            .wait_for(
                "an empty page with no conversations",
                "return !document.querySelector('#conversations .conv') \
                    && !document.querySelector('#messages .msg') \
                    && !new URLSearchParams(location.search).has('c') \
                    && document.getElementById('conv-status').textContent.includes('No conversations')",
            )
            .await?;
        anyhow::ensure!(listed(&stack, "u1").await?.is_empty());
        anyhow::ensure!(browser.error_banner().await?.is_none());
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn on_a_phone_the_conversations_hide_behind_the_menu() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("on_a_phone_the_conversations_hide_behind_the_menu").await?
    else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    let outcome = async {
        let (first, _) =
            two_conversations(&browser, &stack, "first on a phone", "second on a phone").await?;

        let layout = "const s = document.getElementById('sidebar'), m = document.getElementById('menu'); \
            return [getComputedStyle(s).display !== 'none' && s.getBoundingClientRect().width > 0, \
                    getComputedStyle(m).display !== 'none' && !m.hidden, \
                    m.getAttribute('aria-expanded')]";
        let wide = browser.js(layout).await?;
        anyhow::ensure!(wide == json!([true, false, "false"]), "on a desktop: {wide}");

        browser.client.set_window_size(390, 844).await?;
        browser
            .wait_for(
                "the sidebar hidden behind the menu",
                &format!("const [side, menu] = (() => {{ {layout} }})(); return !side && menu"),
            )
            .await?;
        browser.screenshot("-closed").await?;
        browser.click("#menu").await?;
        let open = browser.js(layout).await?;
        anyhow::ensure!(open == json!([true, true, "true"]), "opened: {open}");
        let focus_inside = browser
            .js("return document.getElementById('sidebar').contains(document.activeElement)")
            .await?;
        anyhow::ensure!(focus_inside == true, "the focus moves into the list");
        browser.screenshot("-open").await?;
        // Escape closes it and gives the focus back to the menu button.
        browser
            .client
            .active_element()
            .await?
            .send_keys(&Key::Escape.to_string())
            .await?;
        let closed = browser.js(layout).await?;
        anyhow::ensure!(closed == json!([false, true, "false"]), "Escape: {closed}");
        let focused = browser.js("return document.activeElement.id").await?;
        anyhow::ensure!(focused == "menu", "focus back on the menu: {focused}");

        // Choosing a conversation opens it and closes the list.
        browser.click("#menu").await?;
        click_conversation(&browser, &first, "open").await?;
        showing(&browser, &first, &pair("first on a phone")).await?;
        let closed = browser.js(layout).await?;
        anyhow::ensure!(closed == json!([false, true, "false"]), "after choosing: {closed}");

        browser.client.set_window_size(1200, 900).await?;
        let wide = browser.js(layout).await?;
        anyhow::ensure!(wide == json!([true, false, "false"]), "wide again: {wide}");
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

/// POSTs `path` with a JSON `body` for `user` (trust mode); answers the JSON answer.
async fn post_for(
    stack: &Stack,
    user: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let response = stack
        .http
        .post(stack.url(&format!("{path}?user_id={user}")))
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "POST {path}: {status}");
    Ok(response.json().await?)
}

#[tokio::test]
async fn the_sidebar_and_a_long_conversation_load_every_page() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("the_sidebar_and_a_long_conversation_load_every_page").await?
    else {
        return Ok(());
    };
    let stack = Stack::start_with(|config| config.token.daily_limit = 10_000_000).await?;
    // A long conversation first (more messages than one page of the page's reads), then
    // more conversations than one page of the sidebar.
    let long = post_for(
        &stack,
        "u1",
        "/conversations",
        json!({"title": "the long one"}),
    )
    .await?;
    let long = long["id"].as_str().unwrap_or_default().to_owned();
    let exchanges = 51;
    for n in 0..exchanges {
        let body =
            json!({"user_id": "u1", "text": format!("message {n}"), "conversation_id": long});
        post_for(&stack, "u1", "/chat", body).await?;
    }
    for n in 0..32 {
        post_for(
            &stack,
            "u1",
            "/conversations",
            json!({"title": format!("topic {n}")}),
        )
        .await?;
    }
    let outcome = async {
        browser.open(&stack.base).await?;
        let shown = sidebar(&browser).await?;
        anyhow::ensure!(shown.len() == 30, "one page: {} entries", shown.len());
        browser.click("#more-convs").await?;
        browser
            .wait_for(
                "every conversation in the sidebar",
                "return document.querySelectorAll('#conversations .conv').length === 33 \
                    && document.getElementById('more-convs').hidden",
            )
            .await?;
        let shown: Vec<_> = sidebar(&browser)
            .await?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        let mut api = Vec::new();
        let mut cursor = String::new();
        loop {
            let page: serde_json::Value = stack
                .http
                .get(stack.url(&format!(
                    "/conversations?user_id=u1&limit=7&cursor={cursor}"
                )))
                .send()
                .await?
                .json()
                .await?;
            for c in page["conversations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                api.push(c["id"].as_str().unwrap_or_default().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => break,
            }
        }
        anyhow::ensure!(shown == api, "the sidebar {shown:?}, the API {api:?}");

        click_conversation(&browser, &long, "open").await?;
        let expected: Vec<_> = (0..exchanges)
            .flat_map(|n| pair(&format!("message {n}")))
            .collect();
        showing(&browser, &long, &expected).await?;
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

// ============================== search ==============================

/// A stack with the keyword service, so `GET /search` answers.
async fn searchable_stack() -> anyhow::Result<Stack> {
    Stack::start_with_keyword(|settings| {
        // The deadline is tight for the chat path (300 ms); these tests are about the page,
        // and a debug build on a busy machine can take longer.
        settings.gateway.keyword_timeout_ms = 5_000;
    })
    .await
}

/// Chats `text` as `user` in `conversation`, or in a new one made for it when `None`
/// (`/chat` without one goes on in the newest); answers the conversation.
async fn chat_in(
    stack: &Stack,
    user: &str,
    conversation: Option<&str>,
    text: &str,
) -> anyhow::Result<String> {
    let conversation = match conversation {
        Some(id) => id.to_owned(),
        None => {
            let made = post_for(stack, user, "/conversations", json!({})).await?;
            made["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no id in {made}"))?
        }
    };
    let body = json!({"user_id": user, "text": text, "conversation_id": conversation});
    post_for(stack, user, "/chat", body).await?;
    Ok(conversation)
}

/// Waits until the API finds, for `query`, a message of `user` by `role` containing
/// `needle` (the keyword service indexes saved messages a moment after they are saved);
/// answers that hit.
async fn indexed_hit(
    stack: &Stack,
    user: &str,
    query: &str,
    role: &str,
    needle: &str,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = stack.search(user, query).await?;
        let found = body["results"].as_array().and_then(|hits| {
            hits.iter().find(|hit| {
                hit["role"] == role && hit["text"].as_str().is_some_and(|t| t.contains(needle))
            })
        });
        if let Some(hit) = found {
            return Ok(hit.clone());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{needle:?} ({role}) was not indexed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `query` into the sidebar's search box (emptied first, and the last answer with
/// it) and presses Enter.
async fn search_for(browser: &Browser, query: &str) -> anyhow::Result<()> {
    browser
        .js(
            "document.getElementById('search-status').textContent = ''; \
             const i = document.getElementById('search-input'); i.value = ''; i.focus();",
        )
        .await?;
    let input = browser.client.find(Locator::Css("#search-input")).await?;
    input.send_keys(&format!("{query}{}", Key::Enter)).await?;
    Ok(())
}

/// Waits until the search says something other than that it is searching; answers it.
async fn search_status(browser: &Browser) -> anyhow::Result<String> {
    let status = browser
        .wait_for(
            "the search's answer",
            "const v = document.getElementById('search-view'), s = document.getElementById('search-status'); \
             return !v.hidden && !v.hasAttribute('aria-busy') && s.textContent",
        )
        .await?;
    Ok(status.as_str().unwrap_or_default().to_owned())
}

/// The search results on the page: (conversation, message id, title, role, snippet, marks).
async fn search_results(browser: &Browser) -> anyhow::Result<Vec<serde_json::Value>> {
    let results = browser
        .js(
            "return [...document.querySelectorAll('#search-results .hit-open')].map((b) => ({ \
                conv: b.dataset.conv, msg: b.dataset.msg, \
                title: b.querySelector('.hit-title').textContent, \
                role: b.querySelector('.hit-role').textContent, \
                snippet: b.querySelector('.hit-snippet').textContent, \
                marks: [...b.querySelectorAll('mark')].map((m) => m.textContent) }))",
        )
        .await?;
    Ok(results.as_array().cloned().unwrap_or_default())
}

/// Whether the conversation list is shown (and not the search results).
async fn list_shown(browser: &Browser) -> anyhow::Result<bool> {
    let shown = browser
        .js("return !document.getElementById('conv-scroll').hidden \
                && document.getElementById('search-view').hidden \
                && !document.querySelector('#search-results li')")
        .await?;
    Ok(shown == true)
}

/// Waits until conversation `conversation` is open with message `message` scrolled into
/// the conversation's view, marked as the one found and focused.
async fn opened_at(browser: &Browser, conversation: &str, message: &str) -> anyhow::Result<()> {
    browser
        .wait_for(
            &format!("message {message} of {conversation} in view and marked"),
            &format!(
                "const t = [...document.querySelectorAll('#messages .turn[data-message-id]')] \
                     .find((t) => t.dataset.messageId === {message:?}); \
                 if (!t || new URLSearchParams(location.search).get('c') !== {conversation:?}) return false; \
                 const r = t.getBoundingClientRect(), s = document.getElementById('scroller').getBoundingClientRect(); \
                 return t.classList.contains('found') && document.activeElement === t \
                     && r.height > 0 && r.top >= s.top - 1 && r.bottom <= s.bottom + 1"
            ),
        )
        .await?;
    Ok(())
}

/// Clicks the search result of message `message`, and waits until it is open in
/// `conversation` as [`opened_at`] says.
async fn open_result(browser: &Browser, conversation: &str, message: &str) -> anyhow::Result<()> {
    browser
        .click(&format!(
            "#search-results .hit-open[data-msg=\"{message}\"]"
        ))
        .await?;
    opened_at(browser, conversation, message).await
}

#[tokio::test]
async fn a_search_opens_another_conversation_at_the_message_found() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("a_search_opens_another_conversation_at_the_message_found").await?
    else {
        return Ok(());
    };
    let stack = searchable_stack().await?;
    // The fact first in a conversation longer than the screen, then a newer conversation,
    // which the page opens.
    let fact = "The ferry to Tangier leaves at seven from pier four";
    let ferry = chat_in(&stack, "u1", None, fact).await?;
    let small_talk = 15;
    for n in 0..small_talk {
        let text = format!("Small talk number {n} about nothing much");
        chat_in(&stack, "u1", Some(&ferry), &text).await?;
    }
    let cooking = chat_in(&stack, "u1", None, "What should I cook tonight").await?;
    let hit = indexed_hit(&stack, "u1", "ferry Tangier", "user", fact).await?;
    indexed_hit(&stack, "u1", "ferry Tangier", "assistant", fact).await?;
    let message = hit["message_id"].to_string();
    let title = listed(&stack, "u1")
        .await?
        .iter()
        .find(|c| c["id"] == ferry.as_str())
        .and_then(|c| c["title"].as_str())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(!title.is_empty(), "the conversation has a title");
    let mut expected: Vec<_> = pair(fact).to_vec();
    for n in 0..small_talk {
        expected.extend(pair(&format!("Small talk number {n} about nothing much")));
    }
    let outcome = async {
        browser.open(&stack.base).await?;
        showing(&browser, &cooking, &pair("What should I cook tonight")).await?;
        let accessible = browser
            .js(
                "const i = document.getElementById('search-input'); \
                 return [document.getElementById('search-form').getAttribute('role'), \
                         i.labels.length > 0 && i.labels[0].textContent, \
                         document.getElementById('search-status').getAttribute('aria-live')]",
            )
            .await?;
        anyhow::ensure!(
            accessible == json!(["search", "Search your messages", "polite"]),
            "a labelled search landmark with a live result count: {accessible}"
        );

        search_for(&browser, "ferry Tangier").await?;
        let status = search_status(&browser).await?;
        anyhow::ensure!(status.contains("2 matches"), "the count: {status:?}");
        anyhow::ensure!(!list_shown(&browser).await?, "the results replace the list");
        let results = search_results(&browser).await?;
        let roles: Vec<_> = results.iter().map(|r| r["role"].clone()).collect();
        anyhow::ensure!(
            results.len() == 2
                && roles.contains(&json!("You"))
                && roles.contains(&json!("Assistant")),
            "the message and its echo: {results:#?}"
        );
        let mine = results
            .iter()
            .find(|r| r["msg"] == message.as_str())
            .ok_or_else(|| anyhow::anyhow!("no result for message {message}: {results:#?}"))?;
        anyhow::ensure!(
            mine["conv"] == ferry.as_str()
                && mine["title"] == title.as_str()
                && mine["role"] == "You"
                && mine["snippet"] == fact
                && mine["marks"] == json!(["ferry", "Tangier"]),
            "the result names the conversation and highlights the words: {mine:#}"
        );
        browser.screenshot("-results").await?;

        // Clicking it opens that conversation, scrolled to the message and marked.
        open_result(&browser, &ferry, &message).await?;
        let last_in_view = browser
            .js(
                "const t = [...document.querySelectorAll('#messages .turn')].pop(); \
                 return t.getBoundingClientRect().top < document.getElementById('scroller').getBoundingClientRect().bottom",
            )
            .await?;
        anyhow::ensure!(
            last_in_view == false,
            "scrolled to the message, not to the end"
        );
        browser.screenshot("-opened").await?;
        showing(&browser, &ferry, &expected).await?;
        let current = browser
            .js("return document.querySelector('#search-results .hit-open[aria-current]')?.dataset.msg ?? null")
            .await?;
        anyhow::ensure!(
            current == message.as_str(),
            "the result opened is marked: {current}"
        );
        // The mark goes after a moment.
        browser
            .wait_for(
                "the mark to go",
                "return !document.querySelector('#messages .turn.found')",
            )
            .await?;

        // The way back to the list, and Escape, which clears the search.
        browser.click("#search-back").await?;
        anyhow::ensure!(list_shown(&browser).await?, "back to the conversations");
        search_for(&browser, "Tangier").await?;
        search_status(&browser).await?;
        browser
            .client
            .find(Locator::Css("#search-input"))
            .await?
            .send_keys(&Key::Escape.to_string())
            .await?;
        anyhow::ensure!(list_shown(&browser).await?, "Escape shows the list again");
        let input = browser
            .js("const i = document.getElementById('search-input'); return [i.value, document.activeElement === i]")
            .await?;
        anyhow::ensure!(
            input == json!(["", true]),
            "Escape empties the box: {input}"
        );

        // On a phone the search is in the menu; a result closes it.
        browser
            .open(&format!("{}/?c={cooking}", stack.base))
            .await?;
        browser.client.set_window_size(390, 844).await?;
        browser.click("#menu").await?;
        search_for(&browser, "ferry Tangier").await?;
        search_status(&browser).await?;
        browser.screenshot("-phone-results").await?;
        open_result(&browser, &ferry, &message).await?;
        let menu = browser
            .js("return [document.querySelector('.app').classList.contains('nav-open'), document.getElementById('menu').getAttribute('aria-expanded')]")
            .await?;
        anyhow::ensure!(menu == json!([false, "false"]), "the menu closed: {menu}");
        browser.screenshot("-phone-opened").await?;
        browser.client.set_window_size(1200, 900).await?;
        anyhow::ensure!(browser.error_banner().await?.is_none());
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn markup_in_a_search_result_stays_inert_text() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("markup_in_a_search_result_stays_inert_text").await? else {
        return Ok(());
    };
    let stack = searchable_stack().await?;
    let payload = "zebra crossing <img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script> here";
    let marked = chat_in(&stack, "u1", None, payload).await?;
    chat_in(&stack, "u1", None, "something else entirely").await?;
    let hit = indexed_hit(&stack, "u1", "zebra", "user", payload).await?;
    indexed_hit(&stack, "u1", "zebra", "assistant", payload).await?;
    let message = hit["message_id"].to_string();
    let outcome = async {
        browser.open(&stack.base).await?;
        search_for(&browser, "zebra").await?;
        let status = search_status(&browser).await?;
        anyhow::ensure!(status.contains("2 matches"), "{status:?}");
        let inert = "return [typeof window.__pwned, \
                document.querySelectorAll('img, iframe, #search-results script').length, \
                document.querySelectorAll('script').length, \
                performance.getEntriesByType('resource').map((e) => e.name).filter((n) => /\\/x$/.test(n))]";
        let seen = browser.js(inert).await?;
        anyhow::ensure!(
            seen == json!(["undefined", 0, 1, []]),
            "nothing ran, was made or loaded: {seen}"
        );
        let results = search_results(&browser).await?;
        anyhow::ensure!(results.len() == 2, "{results:#?}");
        for result in &results {
            let snippet = result["snippet"].as_str().unwrap_or_default();
            anyhow::ensure!(
                snippet.contains("<img src=x onerror=\"window.__pwned=1\">")
                    && snippet.contains("<script>window.__pwned=2</script>")
                    && result["marks"] == json!(["zebra"]),
                "the markup shows as text: {result:#}"
            );
        }

        open_result(&browser, &marked, &message).await?;
        let seen = browser.js(inert).await?;
        anyhow::ensure!(
            seen == json!(["undefined", 0, 1, []]),
            "opened: nothing ran, was made or loaded: {seen}"
        );
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn an_empty_or_too_common_search_and_no_matches_say_so() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("an_empty_or_too_common_search_and_no_matches_say_so").await?
    else {
        return Ok(());
    };
    let stack = searchable_stack().await?;
    chat_in(&stack, "u1", None, "Apples grow on trees").await?;
    indexed_hit(&stack, "u1", "apples", "user", "Apples").await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        for (query, says) in [
            ("", "Type a word or two to search for."),
            ("   ", "Type a word or two to search for."),
            ("the of", "Nothing to search for in “the of”"),
            ("xylophone", "No matches for “xylophone”."),
        ] {
            search_for(&browser, query).await?;
            let status = search_status(&browser).await?;
            anyhow::ensure!(status.contains(says), "{query:?}: {status:?}");
            anyhow::ensure!(
                search_results(&browser).await?.is_empty(),
                "{query:?} lists nothing"
            );
            anyhow::ensure!(
                !list_shown(&browser).await?,
                "{query:?}: the answer is shown"
            );
        }
        browser.screenshot("-no-matches").await?;
        search_for(&browser, "apples").await?;
        let status = search_status(&browser).await?;
        anyhow::ensure!(status.contains("matches for “apples”"), "{status:?}");
        anyhow::ensure!(browser.error_banner().await?.is_none());
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_search_with_the_keyword_service_down_says_it_is_unavailable() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("a_search_with_the_keyword_service_down_says_it_is_unavailable").await?
    else {
        return Ok(());
    };
    // A keyword address where nothing listens.
    let stack = Stack::start_with(|settings| {
        settings.gateway.keyword_addr = "http://127.0.0.1:9".to_owned();
    })
    .await?;
    stack.chat("u1", "My dog's name is Biscuit").await?;
    let outcome = async {
        browser.open(&stack.base).await?;
        search_for(&browser, "dog").await?;
        let status = search_status(&browser).await?;
        anyhow::ensure!(
            status.contains("Search is unavailable right now"),
            "{status:?}"
        );
        let problem = browser
            .js("return document.getElementById('search-status').classList.contains('problem')")
            .await?;
        anyhow::ensure!(problem == true, "shown as a problem");
        anyhow::ensure!(search_results(&browser).await?.is_empty());
        browser.screenshot("-down").await?;
        // The way back still works.
        browser.click("#search-back").await?;
        anyhow::ensure!(list_shown(&browser).await?);
        anyhow::ensure!(sidebar(&browser).await?.len() == 1);
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}
