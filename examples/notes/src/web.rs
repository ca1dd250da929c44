//! The web pages: everyone's notes at `/`, and the browser-login approval
//! page at `/login/approve?t=TOKEN` (the form posts back to
//! `/login/approve`).
//!
//! The approval page is never cached, never framed and sends no referrer
//! (its URL carries the one-time token).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use terminalwire_server::Terminal;
use terminalwire_server::login::{LinkError, LoginRequest};

use crate::App;

/// The app's routes, with the terminal at `/terminal`.
pub fn router(app: &App, terminal: &Terminal) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login/approve", get(approve_page).post(decide))
        .route("/terminal", terminal.route())
        .with_state(app.clone())
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;\
padding:0 1rem;line-height:1.45}code,pre{background:#f3f3f3;padding:.1rem .3rem}\
label{display:block;margin:.8rem 0}input{font-size:1rem;padding:.3rem}\
button{font-size:1rem;padding:.4rem 1rem;margin-right:.5rem}.error{color:#b00020}\
li{margin:.3rem 0}.body{white-space:pre-wrap;color:#444}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=en><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>{title} · notes</title><style>{STYLE}</style>{body}</html>",
        title = escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                 frame-ancestors 'none'",
            ),
        ],
        html,
    )
        .into_response()
}

async fn index(State(app): State<App>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("HOST");
    let notes = match app.db(|db| db.recent(500)).await {
        Ok(notes) => notes,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot list notes");
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                "<p class=error>The notes cannot be read right now.</p>",
            );
        }
    };
    let mut by_owner: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for (owner, note) in notes {
        by_owner.entry(owner).or_default().push(note);
    }
    let mut body = format!(
        "<h1>notes</h1><p>Your notes, from your terminal:</p>\
         <pre>terminalwire ws://{host}/terminal login\n\
         terminalwire ws://{host}/terminal new \"Buy milk\" --body \"2 litres\"\n\
         terminalwire ws://{host}/terminal list</pre>",
        host = escape(host)
    );
    if by_owner.is_empty() {
        body.push_str("<p>No notes yet.</p>");
    }
    for (owner, notes) in by_owner {
        body.push_str(&format!("<h2>{}</h2><ul>", escape(&owner)));
        for note in notes {
            body.push_str(&format!(
                "<li><b>{}</b> <small>#{} · {}</small>",
                escape(&note.title),
                note.id,
                escape(&note.created)
            ));
            if !note.body.is_empty() {
                body.push_str(&format!("<div class=body>{}</div>", escape(&note.body)));
            }
            body.push_str("</li>");
        }
        body.push_str("</ul>");
    }
    page(StatusCode::OK, "notes", &body)
}

/// The query of the approval page.
#[derive(Debug, serde::Deserialize)]
pub struct ApproveQuery {
    /// The one-time token.
    #[serde(default)]
    pub t: String,
}

/// What the approval form posts.
#[derive(Debug, serde::Deserialize)]
pub struct DecisionForm {
    /// The one-time token.
    #[serde(default)]
    pub t: String,
    /// The code the terminal shows.
    #[serde(default)]
    pub code: String,
    /// Who logs in.
    #[serde(default)]
    pub name: String,
    /// Their passphrase, if they set one.
    #[serde(default)]
    pub passphrase: String,
    /// `approve` or `refuse`.
    #[serde(default)]
    pub decision: String,
}

fn link_error(error: LinkError) -> Response {
    let status = match error {
        LinkError::Unknown => StatusCode::NOT_FOUND,
        _ => StatusCode::GONE,
    };
    page(
        status,
        "login link",
        &format!(
            "<h1>Log in to notes</h1><p class=error>{}</p>",
            escape(&error.to_string())
        ),
    )
}

fn approval_form(
    status: StatusCode,
    token: &str,
    request: &LoginRequest,
    name: &str,
    error: Option<&str>,
) -> Response {
    let minutes = request.expires_in.as_secs().div_ceil(60);
    let error = error
        .map(|error| format!("<p class=error id=error>{}</p>", escape(error)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Log in to notes</h1>\
         <p>A terminal asks to log in: <b><bdi>{client}</bdi></b> (as it describes itself), \
         device <code>{device}</code>.</p>\
         <p>Approve only if you just ran <code>login</code> yourself: type the code your \
         terminal shows. This link works once and expires in {minutes} minute{plural}.</p>\
         {error}\
         <form method=post action=/login/approve>\
         <input type=hidden name=t value=\"{token}\">\
         <label>Code shown in your terminal: <input name=code id=code required \
         maxlength=16 autocomplete=off autocapitalize=characters spellcheck=false \
         placeholder=ABCD-EFGH></label>\
         <label>Log in as: <input name=name id=name value=\"{name}\" required maxlength=32 \
         pattern=\"[A-Za-z0-9._\\-]+\" autofocus></label>\
         <label>Passphrase (only if this user set one): \
         <input type=password name=passphrase id=passphrase autocomplete=current-password></label>\
         <button type=submit name=decision value=approve id=approve>Approve</button>\
         <button type=submit name=decision value=refuse id=refuse formnovalidate>Refuse</button>\
         </form>",
        client = escape(&request.client),
        device = escape(
            request
                .device
                .as_deref()
                .unwrap_or("none (this client has no device key)")
        ),
        plural = if minutes == 1 { "" } else { "s" },
        token = escape(token),
        name = escape(name),
    );
    page(status, "log in", &body)
}

async fn approve_page(State(app): State<App>, Query(query): Query<ApproveQuery>) -> Response {
    match app.logins().request(&query.t) {
        Ok(request) => approval_form(StatusCode::OK, &query.t, &request, "demo", None),
        Err(error) => link_error(error),
    }
}

/// Whether `name` is a user name the demo accepts.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn decide(State(app): State<App>, Form(form): Form<DecisionForm>) -> Response {
    let request = match app.logins().request(&form.t) {
        Ok(request) => request,
        Err(error) => return link_error(error),
    };
    if form.decision == "refuse" {
        return match app.logins().refuse(&form.t) {
            Ok(()) => page(
                StatusCode::OK,
                "login refused",
                "<h1>Login refused</h1><p id=result>Nobody was logged in. \
                 You can close this tab.</p>",
            ),
            Err(error) => link_error(error),
        };
    }
    if form.decision != "approve" {
        return page(
            StatusCode::BAD_REQUEST,
            "log in",
            "<p class=error>Approve or refuse the login.</p>",
        );
    }
    // The code first: only someone who sees the terminal that asked may
    // go on (and try a passphrase).
    match app.logins().check_code(&form.t, &form.code) {
        Ok(()) => {}
        Err(error @ LinkError::WrongCode { .. }) => {
            return approval_form(
                StatusCode::FORBIDDEN,
                &form.t,
                &request,
                form.name.trim(),
                Some(&error.to_string()),
            );
        }
        Err(error) => return link_error(error),
    }
    let name = form.name.trim().to_owned();
    if !valid_name(&name) {
        return approval_form(
            StatusCode::BAD_REQUEST,
            &form.t,
            &request,
            &name,
            Some("A name is 1 to 32 letters, digits, dots, dashes or underscores."),
        );
    }
    // A user who set a passphrase must give it (hashing is slow: off the
    // async threads).
    let owner = name.clone();
    let stored = match app.db(move |db| db.passphrase(&owner)).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot read a passphrase");
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                "<p class=error>Please try again.</p>",
            );
        }
    };
    if let Some((hash, hint)) = stored {
        let given = form.passphrase;
        let matches = tokio::task::spawn_blocking(move || crate::secret::verify(&given, &hash))
            .await
            .unwrap_or(false);
        if !matches {
            let left = match app.logins().attempt_failed(&form.t) {
                Ok(left) => left,
                Err(error) => return link_error(error),
            };
            let mut error = format!("Wrong passphrase for {name}.");
            if !hint.is_empty() {
                error.push_str(&format!(" Hint: {hint}"));
            }
            error.push_str(&format!(
                " {left} attempt{} left.",
                if left == 1 { "" } else { "s" }
            ));
            return approval_form(
                StatusCode::FORBIDDEN,
                &form.t,
                &request,
                &name,
                Some(&error),
            );
        }
    }
    match app.logins().approve(&form.t, &form.code, &name) {
        Ok(()) => page(
            StatusCode::OK,
            "logged in",
            &format!(
                "<h1>Logged in</h1><p id=result>Logged in as {}. You can close this tab \
                 and go back to your terminal.</p>",
                escape(&name)
            ),
        ),
        Err(error) => link_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_escaping() {
        assert!(valid_name("ada"));
        assert!(valid_name("Ada.Lovelace_1-x"));
        for bad in ["", "a b", "<x>", "ä", &"x".repeat(33)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
