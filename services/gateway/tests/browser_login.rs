//! The login in the browser, in headless Chromium over WebDriver, against the whole stack
//! in-process with `AUTH_MODE=required`: a user made through the admin API logs in (after
//! a wrong password), chats, keeps the session across a reload, and logs out; a session
//! that ends under the page brings the login form back; too many wrong passwords say how
//! long to wait; `AUTH_MODE=none` says so; and a link to another user's conversation
//! shows nothing of it.
//!
//! Like `browser.rs`: a screenshot per test in `target/browser-artifacts/<test>.png`, and
//! without Chromium or chromedriver (or with `CHAT_SKIP_BROWSER_TESTS=1`) each test says
//! it was skipped and passes.

mod support;

use chat_testing::stack::Settings;
use fantoccini::Locator;
use fantoccini::cookies::Cookie;
use fantoccini::key::Key;
use reqwest::StatusCode;
use serde_json::json;
use support::Stack;
use support::browser::Browser;

const ADMIN_KEY: &str = "test-admin-key";
const PASSWORD: &str = "correct horse battery";
/// The session cookie the gateway sets on a login.
const SESSION_COOKIE: &str = "chat_session";

/// The steps on the login page that only these tests take.
trait LoginPage {
    /// Until the login form is on the page and the chat is not.
    async fn login_form_shown(&self) -> anyhow::Result<()>;
    /// Opens the page and waits for the login form.
    async fn open_login(&self, url: &str) -> anyhow::Result<()>;
    /// Types into the login form and presses Enter, as a keyboard user would.
    async fn log_in(&self, user: &str, password: &str) -> anyhow::Result<()>;
    /// Until the chat of `user` is shown, its history and quota loaded; answers the header.
    async fn signed_in_as(&self, user: &str) -> anyhow::Result<String>;
    /// The rendered text of every message, in order, as (role, text).
    async fn messages(&self) -> anyhow::Result<Vec<(String, String)>>;
    /// The session cookie as the browser holds it (WebDriver sees HttpOnly cookies).
    async fn session_cookie(&self) -> anyhow::Result<Option<Cookie<'static>>>;
    /// The session cookie a login has set; an error without one.
    async fn session(&self) -> anyhow::Result<Cookie<'static>>;
}

impl LoginPage for Browser {
    async fn login_form_shown(&self) -> anyhow::Result<()> {
        self.wait_for(
            "the login form",
            "return !document.getElementById('login-view').hidden \
                && document.getElementById('chat-view').hidden \
                && document.getElementById('whoami').hidden \
                && document.getElementById('logout').hidden",
        )
        .await?;
        Ok(())
    }

    async fn open_login(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await?;
        self.login_form_shown().await
    }

    async fn log_in(&self, user: &str, password: &str) -> anyhow::Result<()> {
        for (css, text) in [("#login-user", user), ("#login-password", password)] {
            let field = self.client.find(Locator::Css(css)).await?;
            field.clear().await?;
            field.send_keys(text).await?;
        }
        self.client
            .find(Locator::Css("#login-password"))
            .await?
            .send_keys(&Key::Enter.to_string())
            .await?;
        Ok(())
    }

    async fn signed_in_as(&self, user: &str) -> anyhow::Result<String> {
        let shown = self
            .wait_for(
                &format!("the chat of {user}"),
                "const who = document.getElementById('whoami'); \
                 return !who.hidden && document.getElementById('login-view').hidden \
                    && !document.getElementById('chat-view').hidden \
                    && !document.getElementById('messages').hasAttribute('aria-busy') \
                    && /\\d/.test(document.getElementById('quota').textContent) \
                    && who.innerText",
            )
            .await?;
        let text = shown.as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(
            text.contains(&format!("Signed in as {user}")),
            "the header says who is signed in: {text:?}"
        );
        Ok(text)
    }

    async fn messages(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .rendered_messages()
            .await?
            .into_iter()
            .map(|(role, text, _)| (role, text))
            .collect())
    }

    async fn session_cookie(&self) -> anyhow::Result<Option<Cookie<'static>>> {
        Ok(self
            .client
            .get_all_cookies()
            .await?
            .into_iter()
            .find(|cookie| cookie.name() == SESSION_COOKIE))
    }

    async fn session(&self) -> anyhow::Result<Cookie<'static>> {
        self.session_cookie()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no {SESSION_COOKIE} cookie after the login"))
    }
}

fn owned(role: &str, text: &str) -> (String, String) {
    (role.to_owned(), text.to_owned())
}

/// The stack with logins required and the admin API on (and `adjust` to change more), and
/// alice made through it with PASSWORD.
async fn stack_with_alice(adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Stack> {
    let stack = Stack::start_with(|config| {
        config.gateway.auth_mode = chat_gateway::AuthMode::Required;
        config.gateway.admin_api_key = Some(ADMIN_KEY.to_owned().into());
        adjust(config);
    })
    .await?;
    create_user(&stack, "alice", PASSWORD).await?;
    Ok(stack)
}

/// Makes a user with a password through the admin API, as an operator would.
async fn create_user(stack: &Stack, user: &str, password: &str) -> anyhow::Result<()> {
    let response = stack
        .http
        .post(stack.url("/admin/users"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"user_id": user, "password": password}))
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "creating {user}: {status} {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// What `/history` answers a request carrying only this session cookie.
async fn history_status_with(stack: &Stack, session: &str) -> anyhow::Result<StatusCode> {
    Ok(stack
        .http
        .get(stack.url("/history"))
        .header("Cookie", format!("{SESSION_COOKIE}={session}"))
        .send()
        .await?
        .status())
}

#[tokio::test]
async fn a_user_logs_in_chats_reloads_and_logs_out() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("a_user_logs_in_chats_reloads_and_logs_out").await? else {
        return Ok(());
    };
    let stack = stack_with_alice(|_| {}).await?;
    let outcome = async {
        browser.open_login(&stack.base).await?;
        let page = browser
            .js("return [document.activeElement.id, \
                         document.getElementById('user-field').hidden, \
                         document.getElementById('auth-banner').hidden, \
                         document.querySelector('label[for=login-user]')?.innerText ?? '', \
                         document.querySelector('label[for=login-password]')?.innerText ?? '', \
                         document.getElementById('login-password').type]")
            .await?;
        anyhow::ensure!(
            page == json!(["login-user", true, true, "User id", "Password", "password"]),
            "the login form, labelled and focused, with no User box or trust banner: {page}"
        );
        browser.screenshot("-login").await?;

        // A wrong password: one generic message, still the login form.
        browser.log_in("alice", "not the password").await?;
        let error = browser
            .wait_for(
                "the login error",
                "const e = document.getElementById('login-error'); return !e.hidden && e.innerText",
            )
            .await?;
        anyhow::ensure!(
            error
                .as_str()
                .is_some_and(|text| text.contains("user id or password is not correct")),
            "a generic message for a wrong password: {error}"
        );
        browser.login_form_shown().await?;
        anyhow::ensure!(browser.session_cookie().await?.is_none(), "no session yet");
        let focused = browser.js("return document.activeElement.id").await?;
        anyhow::ensure!(
            focused == "login-password",
            "focus goes back to the password: {focused}"
        );

        // The right one: the chat, for alice.
        browser.log_in("alice", PASSWORD).await?;
        browser.signed_in_as("alice").await?;
        let page = browser
            .js("return [document.getElementById('user-field').hidden, \
                         document.getElementById('logout').hidden, \
                         document.getElementById('login-error').hidden, \
                         document.getElementById('login-password').value, \
                         document.activeElement.id]")
            .await?;
        anyhow::ensure!(
            page == json!([true, false, true, "", "composer"]),
            "no User box, a Log out button, the password forgotten, focus in the composer: {page}"
        );
        let cookie = browser.session().await?;
        anyhow::ensure!(
            cookie.http_only() == Some(true)
                && cookie
                    .same_site()
                    .map(|policy| policy.to_string())
                    .as_deref()
                    == Some("Strict"),
            "the session cookie is HttpOnly and SameSite=Strict: {cookie:?}"
        );
        let script_sees = browser.js("return document.cookie").await?;
        anyhow::ensure!(
            !script_sees
                .as_str()
                .unwrap_or_default()
                .contains(SESSION_COOKIE),
            "the page's script cannot read the session: {script_sees}"
        );
        let session = cookie.value().to_owned();

        // A chat, streamed, for the session's user: the page names no user.
        browser.type_message("Hello from alice").await?;
        browser.type_message(&Key::Enter.to_string()).await?;
        browser.replies_finished(1).await?;
        let expected = [
            owned("user", "Hello from alice"),
            owned("assistant", "echo: Hello from alice"),
        ];
        anyhow::ensure!(
            browser.messages().await? == expected,
            "the streamed reply: {:?}",
            browser.messages().await?
        );
        stack.ensure_the_provider_streamed()?;
        let error = browser
            .js("const e = document.getElementById('error'); return e.hidden ? null : e.innerText")
            .await?;
        anyhow::ensure!(error.is_null(), "no error: {error}");

        // A reload keeps the session and shows alice's history.
        browser.client.refresh().await?;
        browser.signed_in_as("alice").await?;
        anyhow::ensure!(
            browser.messages().await? == expected,
            "after a reload: {:?}",
            browser.messages().await?
        );
        browser.screenshot("-signed-in").await?;

        // Log out: the login form again, nothing of alice's left on the page, and the
        // session is gone on the server, not only from the browser.
        browser.click("#logout").await?;
        browser.login_form_shown().await?;
        let page = browser
            .js("return [document.getElementById('login-note').innerText, \
                         document.querySelectorAll('#messages .msg').length, \
                         document.getElementById('quota').hidden, \
                         document.activeElement.id]")
            .await?;
        anyhow::ensure!(
            page[0]
                .as_str()
                .is_some_and(|note| note.contains("logged out"))
                && page[1] == 0
                && page[2] == true
                && page[3] == "login-user",
            "logged out, alice's messages gone: {page}"
        );
        let status = browser
            .wait_for(
                "a history read after the logout",
                "return fetch('/history').then((r) => r.status)",
            )
            .await?;
        anyhow::ensure!(
            status == 401,
            "/history from the page after the logout: {status}"
        );
        let status = history_status_with(&stack, &session).await?;
        anyhow::ensure!(
            status == StatusCode::UNAUTHORIZED,
            "the old session cookie after the logout: {status}"
        );
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_session_that_ends_brings_the_login_back_and_keeps_the_draft() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("a_session_that_ends_brings_the_login_back_and_keeps_the_draft").await?
    else {
        return Ok(());
    };
    let stack = stack_with_alice(|_| {}).await?;
    let outcome = async {
        browser.open_login(&stack.base).await?;
        browser.log_in("alice", PASSWORD).await?;
        browser.signed_in_as("alice").await?;
        let session = browser.session().await?.value().to_owned();

        // The session ends behind the page's back (a logout in another tab).
        let response = stack
            .http
            .post(stack.url("/auth/logout"))
            .header("Cookie", format!("{SESSION_COOKIE}={session}"))
            .json(&json!({}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == StatusCode::NO_CONTENT,
            "logout elsewhere: {}",
            response.status()
        );

        browser.type_message("are you still there?").await?;
        browser.click("#send").await?;
        browser.login_form_shown().await?;
        let page = browser
            .js("return [document.getElementById('login-note').innerText, \
                         document.getElementById('login-user').value, \
                         document.activeElement.id, \
                         document.getElementById('error').hidden]")
            .await?;
        anyhow::ensure!(
            page[0]
                .as_str()
                .is_some_and(|note| note.contains("session has ended"))
                && page[1] == "alice"
                && page[2] == "login-password"
                && page[3] == true,
            "the login form says the session ended, alice filled in: {page}"
        );

        // Logged in again, the unsent message is still there to send.
        browser
            .client
            .find(Locator::Css("#login-password"))
            .await?
            .send_keys(&format!("{PASSWORD}{}", Key::Enter))
            .await?;
        browser.signed_in_as("alice").await?;
        let draft = browser
            .js("return document.getElementById('composer').value")
            .await?;
        anyhow::ensure!(
            draft == "are you still there?",
            "the draft is kept: {draft}"
        );
        anyhow::ensure!(
            browser.messages().await?.is_empty(),
            "the refused message was not sent: {:?}",
            browser.messages().await?
        );
        browser.click("#send").await?;
        browser.replies_finished(1).await?;
        anyhow::ensure!(
            browser.messages().await?
                == [
                    owned("user", "are you still there?"),
                    owned("assistant", "echo: are you still there?"),
                ],
            "{:?}",
            browser.messages().await?
        );
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn too_many_wrong_passwords_say_how_long_to_wait() -> anyhow::Result<()> {
    let Some(browser) = Browser::start("too_many_wrong_passwords_say_how_long_to_wait").await?
    else {
        return Ok(());
    };
    let stack = stack_with_alice(|config| config.history.login_max_failures = 1).await?;
    let outcome = async {
        browser.open_login(&stack.base).await?;
        browser.log_in("alice", "not the password").await?;
        browser
            .wait_for(
                "the generic login error",
                "return document.getElementById('login-error').innerText \
                    .includes('user id or password is not correct')",
            )
            .await?;

        // Locked out: even the right password is refused, and the page says for how long.
        browser.log_in("alice", PASSWORD).await?;
        let error = browser
            .wait_for(
                "the throttle message",
                "const e = document.getElementById('login-error'); \
                 return !e.hidden && e.innerText.includes('Too many') && e.innerText",
            )
            .await?;
        let text = error.as_str().unwrap_or_default();
        anyhow::ensure!(
            text.contains("Too many failed login attempts")
                && regex::Regex::new(r"wait \d+ (seconds?|minutes?|h \d+ min) \(until .+\)")?
                    .is_match(text),
            "the throttle message says how long to wait: {text:?}"
        );
        browser.login_form_shown().await?;
        anyhow::ensure!(browser.session_cookie().await?.is_none(), "no session");
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn without_authentication_the_page_says_anyone_can_be_anyone() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("without_authentication_the_page_says_anyone_can_be_anyone").await?
    else {
        return Ok(());
    };
    let stack = Stack::start_with(|config| {
        config.gateway.auth_mode = chat_gateway::AuthMode::None;
    })
    .await?;
    let outcome = async {
        browser.client.goto(&stack.base).await?;
        let banner = browser
            .wait_for(
                "the trust-mode banner",
                "const b = document.getElementById('auth-banner'); \
                 return !b.hidden && /\\d/.test(document.getElementById('quota').textContent) \
                    && b.innerText",
            )
            .await?;
        anyhow::ensure!(
            banner.as_str().is_some_and(|text| {
                text.contains("Authentication is off") && text.contains("any user")
            }),
            "the banner: {banner}"
        );
        let page = browser
            .js(
                "return [document.getElementById('auth-banner').getAttribute('role'), \
                         document.getElementById('user-field').hidden, \
                         document.getElementById('user-id').value, \
                         document.getElementById('login-view').hidden, \
                         document.getElementById('whoami').hidden, \
                         document.getElementById('logout').hidden, \
                         document.getElementById('chat-view').hidden]",
            )
            .await?;
        anyhow::ensure!(
            page == json!(["status", false, "u1", true, true, true, false]),
            "the User box and the chat, no login: {page}"
        );
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}

#[tokio::test]
async fn a_link_to_another_users_conversation_shows_nothing_of_it() -> anyhow::Result<()> {
    let Some(browser) =
        Browser::start("a_link_to_another_users_conversation_shows_nothing_of_it").await?
    else {
        return Ok(());
    };
    let stack = stack_with_alice(|_| {}).await?;
    create_user(&stack, "bob", PASSWORD).await?;
    let in_url = "new URLSearchParams(location.search).get('c')";
    let conversation_in_url = format!("return {in_url}");
    let outcome = async {
        browser.open_login(&stack.base).await?;
        browser.log_in("alice", PASSWORD).await?;
        browser.signed_in_as("alice").await?;
        browser.type_message("alice's secret plan").await?;
        browser.type_message(&Key::Enter.to_string()).await?;
        browser.replies_finished(1).await?;
        let theirs = browser.js(&conversation_in_url).await?;
        let theirs = theirs
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no ?c= after alice's message"))?
            .to_owned();
        let link = format!("{}/?c={theirs}", stack.base);

        // Logging out forgets the conversation: nothing of it in the page or the address.
        browser.click("#logout").await?;
        browser.login_form_shown().await?;
        let page = browser
            .js(&format!(
                "return [{in_url}, \
                    document.querySelectorAll('#conversations .conv').length, \
                    document.title]"
            ))
            .await?;
        anyhow::ensure!(page == json!([null, 0, "Chat"]), "after the logout: {page}");

        // bob, given alice's link: a clear message, an empty chat, none of her words.
        browser.open_login(&link).await?;
        browser.log_in("bob", PASSWORD).await?;
        browser.signed_in_as("bob").await?;
        let banner = browser
            .wait_for(
                "the error banner",
                "const e = document.getElementById('error'); return !e.hidden && e.innerText",
            )
            .await?;
        anyhow::ensure!(
            banner
                .as_str()
                .is_some_and(|text| text.contains("not found")),
            "bob is told: {banner}"
        );
        anyhow::ensure!(browser.messages().await?.is_empty());
        let page = browser
            .js(&format!(
                "return [{in_url}, \
                    document.querySelectorAll('#conversations .conv').length, \
                    document.body.innerText.includes('secret')]"
            ))
            .await?;
        anyhow::ensure!(page == json!([null, 0, false]), "bob's page: {page}");

        // alice, given her own link after logging in, gets the conversation.
        browser.click("#logout").await?;
        browser.login_form_shown().await?;
        browser.open_login(&link).await?;
        browser.log_in("alice", PASSWORD).await?;
        browser.signed_in_as("alice").await?;
        anyhow::ensure!(
            browser.messages().await?
                == [
                    owned("user", "alice's secret plan"),
                    owned("assistant", "echo: alice's secret plan"),
                ],
            "alice's own link: {:?}",
            browser.messages().await?
        );
        let url = browser.js(&conversation_in_url).await?;
        anyhow::ensure!(url == theirs.as_str(), "the address keeps it: {url}");
        Ok(())
    }
    .await;
    browser.finish(outcome).await
}
