//! `http` steps: method and URL, headers, body, attempts and branches by status.

use std::collections::BTreeMap;

use super::cx::FileCx;
use super::values::var_name;
use crate::lang::expr::{Templates, Tmpl};
use crate::lang::model::*;
use crate::lang::raw::{self, Sp};

pub(super) fn compile_http(
    h: &Sp<raw::HttpDef>,
    branches: &BTreeMap<String, Sp<String>>,
    cx: &mut FileCx,
    t: &Templates,
    gw: &Gateway,
    target: &dyn Fn(&mut FileCx, &Sp<String>) -> Option<usize>,
) -> Option<HttpSpec> {
    let hd = h.get();
    let mut forms: Vec<(String, &Sp<String>)> = Vec::new();
    for (m, u) in [
        ("GET", &hd.get),
        ("POST", &hd.post),
        ("PUT", &hd.put),
        ("PATCH", &hd.patch),
        ("DELETE", &hd.delete),
    ] {
        if let Some(u) = u {
            forms.push((m.to_string(), u));
        }
    }
    if let Some(u) = &hd.url {
        let m = hd
            .method
            .as_ref()
            .map(|m| m.get().to_ascii_uppercase())
            .unwrap_or_else(|| {
                if hd.json.is_some() || hd.form.is_some() || hd.body.is_some() {
                    "POST".into()
                } else {
                    "GET".into()
                }
            });
        if reqwest::Method::from_bytes(m.as_bytes()).is_err() {
            cx.err(
                hd.method.as_ref().unwrap().span(),
                format!("bad HTTP method '{m}'"),
            );
        }
        forms.push((m, u));
    }
    if forms.len() != 1 {
        cx.err(
            h.span(),
            "http needs one URL: `post = \"…\"` (or get/put/patch/delete), or `url` with `method`",
        );
        return None;
    }
    let (method, url_sp) = forms.pop().unwrap();
    let url = cx.tmpl(t, url_sp);
    if let Tmpl::Const(u) = url.as_ref()? {
        if reqwest::Url::parse(u).is_err() {
            cx.err(url_sp.span(), format!("'{u}' is not an absolute URL"));
        }
    }
    let headers = hd
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), cx.tmpl(t, v)?)))
        .collect();
    let bodies = [hd.json.is_some(), hd.form.is_some(), hd.body.is_some()];
    let body = if bodies.iter().filter(|b| **b).count() > 1 {
        cx.err(h.span(), "http takes one of `json`, `form` or `body`");
        HttpBody::None
    } else if let Some(j) = &hd.json {
        HttpBody::Json(cx.value_tmpl(t, j)?)
    } else if let Some(f) = &hd.form {
        HttpBody::Form(
            f.iter()
                .filter_map(|(k, v)| Some((k.clone(), cx.tmpl(t, v)?)))
                .collect(),
        )
    } else if let Some(b) = &hd.body {
        HttpBody::Raw(cx.tmpl(t, b)?)
    } else {
        HttpBody::None
    };
    let mut out_branches = Vec::new();
    for (k, l) in branches {
        let valid = k == "error"
            || (k.len() == 3
                && (k.chars().all(|c| c.is_ascii_digit())
                    || (k.as_bytes()[0].is_ascii_digit() && &k[1..] == "xx")));
        if !valid {
            cx.err(
                l.span(),
                format!("unknown http branch '{k}' (use a status like \"404\", a class like \"2xx\", or error)"),
            );
        }
        if let Some(i) = target(cx, l) {
            out_branches.push((k.clone(), i));
        }
    }
    // Exact statuses are tried before classes.
    out_branches.sort_by_key(|(k, _)| k.ends_with("xx"));
    Some(HttpSpec {
        method,
        url: url?,
        headers,
        body,
        timeout: hd
            .timeout
            .as_ref()
            .and_then(|d| cx.duration(d))
            .unwrap_or(gw.http_timeout),
        attempts: hd.attempts.unwrap_or(gw.http_attempts).max(1),
        save: var_name(cx, hd.save.as_ref(), "http")?,
        branches: out_branches,
    })
}
