//! `GET /docs`: a page that renders `/openapi.json` for people — tags, operations, parameters,
//! bodies, responses, schemas and examples.
//!
//! Everything it needs is served from here (page, style sheet, script), so it works offline and
//! under a strict Content-Security-Policy: no CDN, no inline script, no inline style. The script
//! builds the page with DOM calls (`textContent`, never HTML strings), so text from the document
//! is never interpreted as markup.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::startup::AppState;

/// The policy of the documentation responses: the page may load its own script, style sheet and
/// the document, and nothing else. Set here, so the API's stricter default (`default-src
/// 'none'`), which the middleware only adds when a response has none, leaves these alone.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/docs", get(page))
        .route("/docs/app.js", get(script))
        .route("/docs/app.css", get(style))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    // The assets change only with the binary; a short cache spares reloads while reading.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// The API reference, rendered from `/openapi.json`.
#[utoipa::path(get, path = "/docs", tag = "meta",
    responses((status = 200, description = "The reference page; its script renders `/openapi.json`",
               content((String = "text/html", example = json!("<!doctype html>..."))))))]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The script of the reference page.
#[utoipa::path(get, path = "/docs/app.js", tag = "meta",
    responses((status = 200, description = "JavaScript",
               content((String = "text/javascript", example = json!("\"use strict\";..."))))))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The style sheet of the reference page.
#[utoipa::path(get, path = "/docs/app.css", tag = "meta",
    responses((status = 200, description = "CSS",
               content((String = "text/css", example = json!(":root {...}"))))))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>idp API reference</title>
<link rel="stylesheet" href="/docs/app.css">
<script src="/docs/app.js" defer></script>
</head>
<body>
<header class="top">
  <h1 id="title">idp API reference</h1>
  <p class="meta"><span id="version"></span> · <a href="/openapi.json">openapi.json</a></p>
  <input id="filter" type="search" placeholder="Filter operations (path, method, tag, words)" aria-label="Filter operations">
</header>
<div class="layout">
  <nav id="nav" aria-label="Operations"></nav>
  <main id="main"><p id="status">Loading <code>/openapi.json</code>…</p></main>
</div>
<noscript><p>This page renders <a href="/openapi.json">/openapi.json</a> with JavaScript.</p></noscript>
</body>
</html>
"#;

const STYLE: &str = r#":root {
  --fg: #1d2330; --muted: #5b6475; --bg: #ffffff; --panel: #f5f7fa; --line: #dde2ea;
  --get: #1f6feb; --post: #1a7f37; --put: #9a6700; --delete: #cf222e; --patch: #8250df;
  --code: #f0f2f5;
}
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
a { color: var(--get); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
code { background: var(--code); padding: 0 4px; border-radius: 3px; }
pre { background: var(--code); padding: 10px 12px; border-radius: 6px; overflow-x: auto; margin: 6px 0; }
header.top { position: sticky; top: 0; z-index: 2; background: var(--bg); border-bottom: 1px solid var(--line); padding: 10px 20px; display: flex; gap: 16px; align-items: baseline; flex-wrap: wrap; }
header.top h1 { font-size: 20px; margin: 0; }
header.top .meta { margin: 0; color: var(--muted); }
#filter { margin-left: auto; min-width: 280px; padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
.layout { display: grid; grid-template-columns: 300px 1fr; }
nav { position: sticky; top: 56px; align-self: start; max-height: calc(100vh - 56px); overflow-y: auto; border-right: 1px solid var(--line); padding: 12px 10px 40px; background: var(--panel); }
nav h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 14px 6px 4px; }
nav a { display: flex; gap: 6px; align-items: baseline; padding: 2px 6px; border-radius: 4px; color: var(--fg); font-size: 13px; word-break: break-all; }
nav a:hover { background: var(--line); text-decoration: none; }
main { padding: 12px 28px 80px; min-width: 0; }
.intro { color: var(--muted); max-width: 60em; }
section.tag > h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
section.tag > p { color: var(--muted); margin-top: 0; }
article.op { border: 1px solid var(--line); border-radius: 8px; margin: 16px 0; padding: 12px 16px; }
article.op > h3 { margin: 0 0 4px; font-size: 16px; display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
.path { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
.method { display: inline-block; min-width: 58px; text-align: center; color: #fff; border-radius: 4px; padding: 0 6px; font-size: 12px; font-weight: 600; text-transform: uppercase; }
.method.get { background: var(--get); } .method.post { background: var(--post); } .method.put { background: var(--put); }
.method.delete { background: var(--delete); } .method.patch { background: var(--patch); }
.lock { font-size: 12px; color: var(--muted); border: 1px solid var(--line); border-radius: 10px; padding: 0 8px; }
.summary { font-weight: 600; margin: 4px 0; }
.description { white-space: pre-line; margin: 4px 0 8px; }
h4 { margin: 14px 0 6px; font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
.required { color: var(--delete); font-size: 12px; margin-left: 4px; }
.type { color: var(--patch); font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.status { font-weight: 700; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.status.s2 { color: var(--post); } .status.s4 { color: var(--put); } .status.s5 { color: var(--delete); }
.response { border-left: 3px solid var(--line); padding: 2px 0 2px 12px; margin: 8px 0; }
.ctype { color: var(--muted); font-size: 13px; }
details > summary { cursor: pointer; color: var(--muted); font-size: 13px; }
ul.schema { list-style: none; padding-left: 16px; margin: 4px 0; border-left: 1px dotted var(--line); }
ul.schema li { margin: 2px 0; }
.prop { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-weight: 600; }
.note { color: var(--muted); font-size: 13px; }
.hidden { display: none; }
@media (max-width: 800px) { .layout { grid-template-columns: 1fr; } nav { position: static; max-height: none; border-right: 0; } }
"#;

const SCRIPT: &str = r##""use strict";
// Renders /openapi.json. Builds nodes with textContent only: no text of the document is ever
// parsed as HTML.
(function () {
  const METHODS = ["get", "post", "put", "patch", "delete"];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function refName(ref) { return ref.split("/").pop(); }
  function anchor(kind, name) { return kind + "-" + String(name).replace(/[^A-Za-z0-9_-]+/g, "-"); }

  function typeLabel(schema) {
    if (!schema || typeof schema !== "object") return "any";
    if (schema.$ref) return refName(schema.$ref);
    let type = schema.type;
    if (Array.isArray(type)) type = type.filter((t) => t !== "null").join(" | ") + (type.includes("null") ? " | null" : "");
    if (type === "array") return "array of " + typeLabel(schema.items);
    if (schema.oneOf || schema.anyOf) {
      const parts = (schema.oneOf || schema.anyOf).map(typeLabel);
      return parts.join(" | ");
    }
    if (schema.allOf) return schema.allOf.map(typeLabel).join(" & ");
    let label = type || (schema.properties ? "object" : "any");
    if (schema.format) label += " (" + schema.format + ")";
    return label;
  }

  function constraints(schema) {
    const notes = [];
    if (!schema || typeof schema !== "object") return notes;
    if (schema.enum) notes.push("one of " + schema.enum.map((v) => JSON.stringify(v)).join(", "));
    if (schema.minimum !== undefined) notes.push("≥ " + schema.minimum);
    if (schema.maximum !== undefined) notes.push("≤ " + schema.maximum);
    if (schema.minLength !== undefined) notes.push("at least " + schema.minLength + " characters");
    if (schema.maxLength !== undefined) notes.push("at most " + schema.maxLength + " characters");
    if (schema.minItems !== undefined) notes.push("at least " + schema.minItems + " items");
    if (schema.maxItems !== undefined) notes.push("at most " + schema.maxItems + " items");
    if (schema.pattern) notes.push("matches " + schema.pattern);
    if (schema.default !== undefined) notes.push("default " + JSON.stringify(schema.default));
    return notes;
  }

  function typeNode(schema) {
    if (schema && schema.$ref) {
      return el("a", { class: "type", href: "#" + anchor("schema", refName(schema.$ref)), text: refName(schema.$ref) });
    }
    if (schema && schema.type === "array" && schema.items && schema.items.$ref) {
      return el("span", { class: "type" }, "array of ", typeNode(schema.items));
    }
    return el("span", { class: "type", text: typeLabel(schema) });
  }

  // One level of an object's properties; nested inline objects are expanded, references linked.
  function schemaTree(schema, depth) {
    if (!schema || typeof schema !== "object" || depth > 6) return null;
    const target = schema.type === "array" && schema.items && !schema.items.$ref ? schema.items : schema;
    const parts = target.oneOf || target.anyOf || target.allOf;
    if (parts) {
      return el("ul", { class: "schema" }, parts.map((part) => el("li", {}, typeNode(part), schemaTree(part.$ref ? null : part, depth + 1))));
    }
    if (!target.properties) return null;
    const required = new Set(target.required || []);
    return el("ul", { class: "schema" }, Object.entries(target.properties).map(([name, prop]) =>
      el("li", {},
        el("span", { class: "prop", text: name }), " ", typeNode(prop),
        required.has(name) ? el("span", { class: "required", text: "required" }) : null,
        prop.description ? el("div", { class: "note", text: prop.description }) : null,
        constraints(prop).length ? el("div", { class: "note", text: constraints(prop).join("; ") }) : null,
        prop.$ref ? null : schemaTree(prop, depth + 1))));
  }

  function exampleOf(media) {
    if (!media) return undefined;
    if (media.example !== undefined) return media.example;
    if (media.examples) {
      const first = Object.values(media.examples)[0];
      if (first && first.value !== undefined) return first.value;
    }
    return undefined;
  }

  function exampleBlock(value) {
    if (value === undefined) return null;
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    return el("div", {}, el("div", { class: "note", text: "Example" }), el("pre", { text: text }));
  }

  function contentBlock(content) {
    return Object.entries(content || {}).map(([type, media]) =>
      el("div", {},
        el("div", {}, el("span", { class: "ctype", text: type }), media.schema ? [" · ", typeNode(media.schema)] : null),
        media.schema && !media.schema.$ref ? schemaTree(media.schema, 0) : null,
        exampleBlock(exampleOf(media))));
  }

  function parametersTable(params) {
    if (!params || !params.length) return null;
    return el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "Name" }), el("th", { text: "In" }), el("th", { text: "Type" }), el("th", { text: "Description" }))),
      el("tbody", {}, params.map((p) => el("tr", {},
        el("td", {}, el("code", { text: p.name }), p.required ? el("span", { class: "required", text: "required" }) : null),
        el("td", { text: p.in }),
        el("td", {}, typeNode(p.schema)),
        el("td", {},
          p.description || "",
          constraints(p.schema).length ? el("div", { class: "note", text: constraints(p.schema).join("; ") }) : null,
          p.example !== undefined ? el("div", { class: "note" }, "Example: ", el("code", { text: typeof p.example === "string" ? p.example : JSON.stringify(p.example) })) : null)))));
  }

  function responseBlock(status, response) {
    const headers = Object.entries(response.headers || {});
    return el("div", { class: "response" },
      el("div", {}, el("span", { class: "status s" + String(status)[0], text: status }), " ", response.description || ""),
      headers.length ? el("div", { class: "note" }, "Headers: ", headers.map(([name, h], i) => [i ? ", " : "", el("code", { text: name }), h.description ? " — " + h.description : ""])) : null,
      contentBlock(response.content));
  }

  function operationId(method, path, op) { return anchor("op", op.operationId ? method + "-" + op.operationId : method + path); }

  function operationArticle(method, path, op, doc) {
    const security = op.security !== undefined ? op.security : doc.security;
    const secured = (security || []).filter((s) => Object.keys(s).length > 0);
    const body = op.requestBody;
    const article = el("article", { class: "op", id: operationId(method, path, op) },
      el("h3", {}, el("span", { class: "method " + method, text: method }), el("span", { class: "path", text: path }),
        secured.length ? el("span", { class: "lock", text: "🔒 " + secured.map((s) => Object.keys(s).join(" + ")).join(" or ") }) : null),
      op.summary ? el("p", { class: "summary", text: op.summary }) : null,
      op.description ? el("p", { class: "description", text: op.description }) : null,
      op.parameters && op.parameters.length ? [el("h4", { text: "Parameters" }), parametersTable(op.parameters)] : null,
      body ? [el("h4", { text: "Request body" + (body.required ? "" : " (optional)") }), body.description ? el("p", { class: "note", text: body.description }) : null, contentBlock(body.content)] : null,
      el("h4", { text: "Responses" }),
      Object.entries(op.responses || {}).map(([status, response]) => responseBlock(status, response)));
    article.dataset.search = [method, path, op.summary, op.description, (op.tags || []).join(" ")].join(" ").toLowerCase();
    return article;
  }

  function render(doc) {
    const main = document.getElementById("main");
    const nav = document.getElementById("nav");
    main.textContent = "";
    nav.textContent = "";
    document.getElementById("title").textContent = (doc.info && doc.info.title ? doc.info.title : "API") + " API reference";
    document.getElementById("version").textContent = "version " + (doc.info && doc.info.version ? doc.info.version : "?") + " · OpenAPI " + doc.openapi;
    if (doc.info && doc.info.description) main.append(el("p", { class: "intro", text: doc.info.description }));

    const tags = (doc.tags || []).map((t) => ({ name: t.name, description: t.description, ops: [] }));
    const byName = new Map(tags.map((t) => [t.name, t]));
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const name = (op.tags && op.tags[0]) || "other";
        if (!byName.has(name)) { const tag = { name: name, ops: [] }; tags.push(tag); byName.set(name, tag); }
        byName.get(name).ops.push({ method: method, path: path, op: op });
      }
    }
    for (const tag of tags) {
      if (!tag.ops.length) continue;
      const section = el("section", { class: "tag", id: anchor("tag", tag.name) }, el("h2", { text: tag.name }), tag.description ? el("p", { text: tag.description }) : null);
      nav.append(el("h2", {}, el("a", { href: "#" + anchor("tag", tag.name), text: tag.name })));
      for (const { method, path, op } of tag.ops) {
        const article = operationArticle(method, path, op, doc);
        section.append(article);
        const link = el("a", { href: "#" + article.id }, el("span", { class: "method " + method, text: method }), el("span", { class: "path", text: path }));
        link.dataset.target = article.id;
        nav.append(link);
      }
      main.append(section);
    }

    const schemas = Object.entries((doc.components && doc.components.schemas) || {});
    if (schemas.length) {
      const section = el("section", { class: "tag", id: "schemas" }, el("h2", { text: "Schemas" }));
      nav.append(el("h2", {}, el("a", { href: "#schemas", text: "Schemas" })));
      for (const [name, schema] of schemas.sort((a, b) => a[0].localeCompare(b[0]))) {
        section.append(el("article", { class: "op", id: anchor("schema", name) },
          el("h3", {}, el("span", { class: "path", text: name }), el("span", { class: "type", text: typeLabel(schema) })),
          schema.description ? el("p", { class: "description", text: schema.description }) : null,
          constraints(schema).length ? el("p", { class: "note", text: constraints(schema).join("; ") }) : null,
          schemaTree(schema, 0),
          exampleBlock(schema.example)));
      }
      main.append(section);
    }
    if (location.hash) {
      const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
      if (target) target.scrollIntoView();
    }
  }

  function applyFilter(text) {
    const words = text.toLowerCase().split(/\s+/).filter(Boolean);
    for (const article of document.querySelectorAll("section.tag article.op[data-search]")) {
      const hit = words.every((w) => article.dataset.search.includes(w));
      article.classList.toggle("hidden", !hit);
      const link = document.querySelector('nav a[data-target="' + article.id + '"]');
      if (link) link.classList.toggle("hidden", !hit);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("filter").addEventListener("input", (event) => applyFilter(event.target.value));
    fetch("/openapi.json", { headers: { accept: "application/json" } })
      .then((response) => {
        if (!response.ok) throw new Error("GET /openapi.json answered " + response.status);
        return response.json();
      })
      .then(render)
      .catch((err) => { document.getElementById("status").textContent = "Could not load /openapi.json: " + err.message; });
  });
})();
"##;
