//! The page around every screen: a header with the shop's navigation, the
//! notice of the last action, and a little CSS. Everything that comes from
//! a user or from email2fa goes through [`escape`].

use axum::response::Html;

use crate::shop::{Notice, User};

/// HTML-escapes text for an element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#1f3a5f;color:#fff;padding:.7em 1.5em;display:flex;gap:1.5em;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}header .shop{font-weight:bold;font-size:1.2em}
header .who{margin-left:auto;opacity:.85}
main{max-width:56em;margin:1.5em auto;padding:0 1em}
section{background:#fff;border:1px solid #d9dde3;border-radius:6px;padding:1em 1.5em;margin-bottom:1.2em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:0}
label{display:block;margin:.5em 0}label.inline{display:inline-block;margin-right:1.5em}
input[type=text],input[type=password],input[type=email],input[type=number],select{padding:.35em;border:1px solid #aab;border-radius:4px;min-width:16em}
button{padding:.45em 1.1em;border-radius:4px;border:1px solid #1f3a5f;background:#1f3a5f;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#1f3a5f}button.danger{background:#a12;border-color:#a12}
button[disabled]{opacity:.5;cursor:default}
.notice{padding:.7em 1em;border-radius:4px;margin-bottom:1em}
.notice.ok{background:#e3f4e6;border:1px solid #7bbf86}.notice.error{background:#fbe5e5;border:1px solid #d77}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.4em;border-bottom:1px solid #e3e6ea}
.hint{color:#667;font-size:.9em}pre{white-space:pre-wrap;background:#f7f7f9;padding:.8em;border-radius:4px}
.status{font-weight:bold}.status.active{color:#176b2c}.status.inactive{color:#a12}
";

/// A whole page.
pub fn page(title: &str, user: Option<&User>, notice: Option<Notice>, body: &str) -> Html<String> {
    let nav = match user {
        Some(user) => {
            let admin = if user.role == "admin" {
                r#"<a href="/admin/services">Admin console</a>"#
            } else {
                ""
            };
            format!(
                r#"{admin}<a href="/account/security">Account Settings</a><a href="/mailbox">Mailbox</a>
<span class="who">Signed in as {} ({})</span><form method="post" action="/logout"><button class="secondary" id="sign-out">Sign out</button></form>"#,
                escape(user.name),
                user.role
            )
        }
        None => r#"<a href="/mailbox">Mailbox</a><a class="who" href="/login">Sign in</a>"#.into(),
    };
    let notice = notice
        .map(|n| {
            format!(
                r#"<div class="notice {}" role="status">{}</div>"#,
                n.kind,
                escape(&n.text)
            )
        })
        .unwrap_or_default();
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title} · Demo Shop</title><style>{STYLE}</style></head>
<body><header><a class="shop" href="/">Demo Shop</a>{nav}</header>
<main><h1>{title}</h1>{notice}{body}</main></body></html>"#,
        title = escape(title),
    ))
}
