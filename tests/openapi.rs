//! `openapi.yaml` and the router in step: every (method, path) in `app::ROUTES` is an operation
//! of the document and every operation is a route; and each operation documents the error
//! statuses that can reach it.
//!
//! The document is read by hand, not with a YAML library: only the `paths:` section's layout
//! matters here (two spaces before a path, four before a method), and the document itself is
//! validated by schemathesis in CI (`.ci/schemathesis.sh`).

use std::collections::BTreeMap;

use auth_service::app::ROUTES;

const DOC: &str = include_str!("../openapi.yaml");

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The operations under `paths:`, as (METHOD, path), each with the text of its block.
fn operations(doc: &str) -> BTreeMap<(String, String), String> {
    let mut ops = BTreeMap::new();
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != "paths:").skip(1);
    let mut path: Option<String> = None;
    let mut current: Option<(String, String)> = None;
    for line in lines.by_ref() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if indent == 0 {
            break; // the next top-level key: `paths:` is over
        }
        if indent == 2 && text.ends_with(':') {
            let p = text
                .trim_end_matches(':')
                .trim_matches(|c| c == '"' || c == '\'');
            path = Some(p.to_owned());
            current = None;
        } else if indent == 4 && text.ends_with(':') {
            let method = text.trim_end_matches(':');
            current = if METHODS.contains(&method) {
                let path = path.clone().expect("a method under a path");
                let key = (method.to_ascii_uppercase(), path);
                ops.insert(key.clone(), String::new());
                Some(key)
            } else {
                None // `parameters:`, `summary:` and such at path level
            };
        } else if let Some(key) = &current {
            let block = ops.get_mut(key).unwrap();
            block.push_str(line);
            block.push('\n');
        }
    }
    ops
}

/// What differs between the document's operations and the router's routes, one line each.
fn differences(doc: &str, routes: &[(&str, &str)]) -> Vec<String> {
    let ops = operations(doc);
    let mut out = Vec::new();
    for (method, path) in routes {
        if !ops.contains_key(&(method.to_string(), path.to_string())) {
            out.push(format!("{method} {path} is routed but not in openapi.yaml"));
        }
    }
    for (method, path) in ops.keys() {
        if !routes.contains(&(method.as_str(), path.as_str())) {
            out.push(format!("{method} {path} is in openapi.yaml but not routed"));
        }
    }
    out
}

#[test]
fn the_document_and_the_router_have_the_same_routes() {
    let diff = differences(DOC, ROUTES);
    assert!(
        diff.is_empty(),
        "openapi.yaml and app::ROUTES disagree:\n{}",
        diff.join("\n")
    );
    assert_eq!(operations(DOC).len(), ROUTES.len());
}

#[test]
fn the_comparison_sees_a_route_missing_on_either_side() {
    let doc = "openapi: 3.1.0\npaths:\n  /:\n    get:\n      responses: {}\n  \"/users\":\n    \
               parameters: []\n    post:\n      responses: {}\ncomponents: {}\n";
    let ops: Vec<_> = operations(doc).into_keys().collect();
    assert_eq!(
        ops,
        [
            ("GET".to_owned(), "/".to_owned()),
            ("POST".to_owned(), "/users".to_owned())
        ]
    );
    assert!(differences(doc, &[("GET", "/"), ("POST", "/users")]).is_empty());
    assert_eq!(
        differences(doc, &[("GET", "/"), ("POST", "/users"), ("GET", "/health")]),
        ["GET /health is routed but not in openapi.yaml"]
    );
    assert_eq!(
        differences(doc, &[("GET", "/")]),
        ["POST /users is in openapi.yaml but not routed"]
    );
}

/// The responses each operation must document, beyond its success.
#[test]
fn every_operation_documents_the_errors_that_reach_it() {
    let ops = operations(DOC);
    for ((method, path), block) in &ops {
        let has = |status: &str| block.contains(&format!("\"{status}\":"));
        let op = format!("{method} {path}");
        // Any handler can fail or panic; any other method on the path is a 405.
        assert!(has("500"), "{op} documents no 500");
        assert!(has("405"), "{op} documents no 405");
        if block.contains("requestBody:") && block.contains("x-www-form-urlencoded") {
            assert!(has("400"), "{op} takes a form but documents no 400");
            assert!(has("413"), "{op} takes a body but documents no 413");
        }
    }
    let block = |method: &str, path: &str| &ops[&(method.to_owned(), path.to_owned())];
    let sessions = block("POST", "/sessions");
    for needle in [
        "\"200\":",
        "Set-Cookie:",
        "\"401\":",
        "\"429\":",
        "Retry-After:",
        "\"503\":",
    ] {
        assert!(sessions.contains(needle), "POST /sessions lacks {needle}");
    }
    let logout = block("DELETE", "/sessions");
    for needle in [
        "\"302\":",
        "Location:",
        "Set-Cookie:",
        "\"403\":",
        "in: cookie",
    ] {
        assert!(
            logout.contains(needle) || DOC.contains(needle),
            "DELETE /sessions lacks {needle}"
        );
    }
    assert!(block("GET", "/profile").contains("\"403\":"));
    assert!(block("POST", "/users").contains("\"503\":"));
    assert!(block("PUT", "/reset_password").contains("\"403\":"));
    assert!(block("POST", "/reset_password").contains("\"403\":"));
    assert!(block("GET", "/health").contains("\"503\":"));
    assert!(block("GET", "/metrics").contains("\"404\":"));
    // The shared responses carry their headers.
    let components = &DOC[DOC.find("\ncomponents:").expect("a components section")..];
    let allow = &components[components.find("    MethodNotAllowed:").unwrap()..];
    assert!(allow[..allow.find("content:").unwrap()].contains("Allow:"));
    let busy = &components[components.find("    Busy:").unwrap()..];
    assert!(busy[..busy.find("content:").unwrap()].contains("Retry-After:"));
}

/// The cookie the document describes is the one the app sets.
#[test]
fn the_documented_cookie_is_the_apps() {
    let name = auth_service::app::SESSION_COOKIE;
    assert!(DOC.contains(&format!("name: {name}\n      in: cookie")));
    assert!(DOC.contains(&format!(
        "pattern: \"^{name}=[0-9a-f-]{{36}}; Path=/; HttpOnly"
    )));
}
