//! The API's contract agrees with itself: the routes in the functions' code, the
//! OpenAPI document (`api/openapi.json`), the SAM template's events and the
//! `cargo lambda watch` router in Cargo.toml all name the same routes, scopes
//! and owners. A route added in one place and forgotten in another fails here.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use harness::{python, workspace_root};
use serde_json::Value;

/// (function, method, path template, scope) of every route in the code.
fn code_routes() -> Vec<(&'static str, String, &'static str, Option<&'static str>)> {
    let mut routes = Vec::new();
    macro_rules! collect {
        ($function:literal, $routes:expr) => {
            for route in $routes.iter() {
                routes.push((
                    $function,
                    route.method.as_str().to_ascii_lowercase(),
                    route.template,
                    route.scope,
                ));
            }
        };
    }
    collect!("api-health", api_health::handler::ROUTES);
    collect!("api-auth", api_auth::handler::ROUTES);
    collect!("api-admin", api_admin::handler::ROUTES);
    collect!("api-chat", api_chat::handler::ROUTES);
    collect!("api-jobs", api_jobs::handler::ROUTES);
    collect!("api-dashboard", api_dashboard::handler::ROUTES);
    collect!("api-memory", api_memory::handler::ROUTES);
    collect!("api-mcp", api_mcp::handler::ROUTES);
    routes
}

fn document() -> Value {
    serde_json::from_str(api_health::handler::OPENAPI).expect("api/openapi.json is JSON")
}

#[test]
fn the_document_is_the_output_of_its_source() {
    let status = std::process::Command::new(python())
        .arg(workspace_root().join("api/openapi.py"))
        .arg("--check")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "api/openapi.json is stale: run api/openapi.py"
    );
}

#[test]
fn every_route_in_code_is_documented_and_nothing_else() {
    let doc = document();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let in_code: BTreeSet<(String, String)> = code_routes()
        .into_iter()
        .map(|(_, method, path, _)| (method, path.to_owned()))
        .collect();
    let missing: Vec<_> = in_code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        missing.is_empty(),
        "routes in code but not in api/openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "routes in api/openapi.json but not in code: {extra:?}"
    );
}

#[test]
fn documented_security_matches_each_routes_scope() {
    let doc = document();
    for (_, method, path, scope) in code_routes() {
        let operation = &doc["paths"][path][&method];
        let security = operation["security"].as_array().unwrap();
        match scope {
            None => assert!(security.is_empty(), "{method} {path} is public in code"),
            Some(scope) => {
                assert_eq!(security[0]["bearerAuth"][0], scope, "{method} {path}");
                let statuses = operation["responses"].as_object().unwrap();
                for status in ["401", "403", "429"] {
                    assert!(
                        statuses.contains_key(status),
                        "{method} {path} documents {status}"
                    );
                }
            }
        }
        let statuses = operation["responses"].as_object().unwrap();
        assert!(
            statuses.contains_key("400"),
            "{method} {path} documents 400"
        );
        assert!(
            statuses.keys().all(|status| status != "500"),
            "{method} {path}: a 500 is a bug, never part of the contract"
        );
    }
}

#[test]
fn the_template_gives_each_function_exactly_its_paths() {
    let output = std::process::Command::new(python())
        .arg(workspace_root().join("infra/template_routes.py"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let template: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&output.stdout).unwrap();
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (function, _, path, _) in code_routes() {
        expected
            .entry(function.to_owned())
            .or_default()
            .insert(path.to_owned());
    }
    // api-health also takes the root and every unknown path (404 problems).
    expected
        .get_mut("api-health")
        .unwrap()
        .extend(["/".to_owned(), "/{proxy+}".to_owned()]);
    for (function, paths) in &expected {
        let events = template
            .get(function)
            .unwrap_or_else(|| panic!("{function} has no API events"));
        let declared: BTreeSet<String> = events
            .iter()
            .map(|event| event["path"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            &declared, paths,
            "{function}'s API events in infra/template.yaml"
        );
        for event in events {
            // Every method reaches the function: 405 and CORS come from our pipeline.
            assert_eq!(event["method"], "ANY", "{function} {event}");
            assert_eq!(
                event["streaming"],
                function == "api-chat",
                "only api-chat streams: {event}"
            );
        }
    }
    let functions: BTreeSet<&String> = template.keys().collect();
    let owners: BTreeSet<&String> = expected.keys().collect();
    assert_eq!(functions, owners, "functions with API events");
}

/// The router's patterns: `{x}` matches one segment, `{*x}` the rest.
fn router() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let section = text
        .split("[workspace.metadata.lambda.watch.router]")
        .nth(1)
        .expect("the watch router in Cargo.toml");
    section
        .lines()
        .take_while(|line| !line.starts_with('['))
        .filter_map(|line| {
            let (pattern, function) = line.split_once(" = ")?;
            Some((
                pattern.trim().trim_matches('"').to_owned(),
                function.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect()
}

fn router_matches(pattern: &str, path: &str) -> bool {
    let (mut pattern, mut path) = (pattern.split('/'), path.split('/'));
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some(p), Some(_)) if p.starts_with("{*") => return true,
            (Some(p), Some(s)) if p.starts_with('{') || p == s => {}
            _ => return false,
        }
    }
}

#[test]
fn the_local_router_sends_each_route_to_its_function() {
    let router = router();
    assert!(router.len() > 5, "{router:?}");
    for (function, _, path, _) in code_routes() {
        // The first pattern that matches wins, as in cargo lambda watch: list
        // specific paths before wildcards.
        let concrete = path.replace("{id}", "x").replace("{tenant}", "t");
        let owner = router
            .iter()
            .find(|(pattern, _)| router_matches(pattern, &concrete))
            .map(|(_, owner)| owner.as_str());
        assert_eq!(owner, Some(function), "{path} in the router");
    }
    assert_eq!(
        router.last().map(|(p, f)| (p.as_str(), f.as_str())),
        Some(("/{*unmatched}", "api-health")),
        "unknown paths get api-health's 404 problem"
    );
}
