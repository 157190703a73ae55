//! `GET /dashboard`: the dashboard as a web page for people.
//!
//! **How a browser gets in.** The API takes bearer tokens only, and a page
//! cannot send one with its own navigation. So the page (`/dashboard`, public,
//! no data) is a shell with a sign-in form and one script (`app.js`, served
//! here, no CDN): the script trades the API key typed into the form for a
//! short-lived access token at `POST /v1/auth/token` (15 minutes), clears the
//! field, keeps the token in a variable only (no cookie, no storage), and
//! fetches `GET /dashboard/view` with it: the same document as
//! `/v1/dashboard`, rendered here as HTML. Why that is safe: no cookie means no
//! CSRF and nothing a stolen disk or another tab can read; the token dies with
//! the tab and in 15 minutes at the latest; the strict CSP (`script-src
//! 'self'`, no `unsafe-inline`, `connect-src 'self'`, `form-action 'none'`)
//! keeps injected markup from running or sending anything anywhere, and every
//! value in the HTML is escaped by the template engine.
//!
//! Charts are inline SVG drawn from presentation attributes and CSS classes
//! (no `style` attributes, which the CSP refuses): 30-day request and cost
//! sparklines per tenant, burn-rate bars per SLO, spend bars per budget.

use askama::Template;
use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Response};
use serde_json::Value;
use sophia_shared::problem::ApiError;

/// The page's and the view's policy: only our own script, styles and API.
// `img-src data:` for the empty icon only (else the browser asks for /favicon.ico).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub const SHELL: &str = include_str!("../assets/dashboard.html");
pub const SCRIPT: &str = include_str!("../assets/app.js");
pub const STYLES: &str = include_str!("../assets/app.css");

/// A text answer with the page's CSP.
pub fn text_response(content_type: &str, body: String) -> Result<Response<Body>, ApiError> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header("content-security-policy", CSP)
        .body(Body::Text(body))
        .map_err(|error| ApiError::internal(format!("building a response: {error}")))
}

#[derive(Template)]
#[template(path = "view.html")]
struct View {
    generated_at: String,
    viewer: String,
    cards: Vec<Card>,
}

struct Card {
    id: String,
    title: &'static str,
    error: Option<String>,
    freshness: String,
    body: CardBody,
}

enum CardBody {
    Slos(Vec<SloRow>),
    Fleet(Vec<FleetRow>),
    Queues(Vec<QueueRow>),
    Usage(UsageView),
    Budgets(Vec<BudgetRow>),
    Jobs(Vec<JobsRow>),
    Drift(DriftView),
    Secrets(Vec<SecretRow>),
    Alerts(AlertsView),
}

struct SecretRow {
    secret: String,
    age: String,
    policy: String,
    overdue: bool,
}

struct SloRow {
    name: String,
    target: String,
    budget: String,
    /// Width of the budget bar; `None` before the SLO was first checked.
    budget_bar: Option<f64>,
    burn: Vec<(String, String, f64)>,
    exhaustion: String,
    firing: String,
}

struct FleetRow {
    endpoint: String,
    status: String,
    failures: String,
    breaker: String,
    latency: String,
}

struct QueueRow {
    name: String,
    depth: String,
    in_flight: String,
    oldest: String,
    dead_letters: String,
    alert: bool,
}

struct UsageView {
    range: String,
    tenants: Vec<TenantRow>,
    top_models: Vec<(String, String, String)>,
    shown: String,
}

struct TenantRow {
    tenant: String,
    today: String,
    requests: String,
    cost: String,
    request_points: String,
    cost_points: String,
}

/// One period of one tenant's budget.
struct BudgetRow {
    tenant: String,
    period: String,
    spent: String,
    /// Width of the spend bar (0 to 100); `over`: the budget is spent.
    bar: f64,
    over: bool,
    state: String,
}

/// One tenant's jobs by status (`tenant` is "all tenants" on the totals row).
struct JobsRow {
    tenant: String,
    pending: String,
    running: String,
    done: String,
    failed: String,
    failures: bool,
}

struct DriftView {
    summary: String,
    findings: Vec<String>,
}

struct AlertsView {
    firing: Vec<String>,
    recent: Vec<(String, String, String)>,
}

/// The dashboard document as the HTML fragment the page shows.
pub fn render(document: &Value) -> Result<String, ApiError> {
    let viewer = match document["view"]["tenant"].as_str() {
        Some(tenant) => format!("tenant {tenant}"),
        None => "every tenant".to_owned(),
    };
    let sections = &document["sections"];
    let order = [
        ("slos", "SLOs"),
        ("fleet", "Fleet"),
        ("queues", "Queues"),
        ("usage", "Usage and cost"),
        ("budgets", "Budgets"),
        ("jobs", "Jobs"),
        ("drift", "Drift"),
        ("secrets", "Secret ages"),
        ("alerts", "Alerts"),
    ];
    let cards = order
        .iter()
        .filter(|(id, _)| sections.get(*id).is_some())
        .map(|(id, title)| card(id, title, &sections[*id]))
        .collect();
    View {
        generated_at: text(&document["generated_at"]),
        viewer,
        cards,
    }
    .render()
    .map_err(|error| ApiError::internal(format!("rendering the dashboard: {error}")))
}

fn card(id: &str, title: &'static str, section: &Value) -> Card {
    let data = &section["data"];
    let body = match id {
        "slos" => CardBody::Slos(rows(data).iter().map(slo_row).collect()),
        "fleet" => CardBody::Fleet(rows(data).iter().map(fleet_row).collect()),
        "queues" => CardBody::Queues(rows(&data["queues"]).iter().map(queue_row).collect()),
        "usage" => CardBody::Usage(usage_view(data)),
        "budgets" => CardBody::Budgets(budget_rows(data)),
        "jobs" => CardBody::Jobs(jobs_rows(data)),
        "drift" => CardBody::Drift(drift_view(data)),
        "secrets" => CardBody::Secrets(
            rows(&data["secrets"])
                .iter()
                .map(|s| SecretRow {
                    secret: text(&s["secret"]),
                    age: format!("{} days", text(&s["age_days"])),
                    policy: format!("{} days", text(&s["max_age_days"])),
                    overdue: s["overdue"] == true,
                })
                .collect(),
        ),
        _ => CardBody::Alerts(alerts_view(data)),
    };
    let freshness = match section["stale_seconds"].as_u64() {
        Some(secs) => format!("data from {} ({} ago)", text(&section["as_of"]), age(secs)),
        None => "read live".to_owned(),
    };
    Card {
        id: id.to_owned(),
        title,
        error: section["error"].as_str().map(str::to_owned),
        freshness,
        body,
    }
}

fn rows(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "–".to_owned(),
        other => other.to_string(),
    }
}

fn age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// A count stored as a JSON number (DynamoDB numbers arrive as floats).
fn count(value: &Value) -> String {
    format!("{:.0}", value.as_f64().unwrap_or(0.0))
}

/// Dollars to the cent, or to the hundredth of a cent below one cent.
fn dollars(value: &Value) -> String {
    let usd = value.as_f64().unwrap_or(0.0);
    if usd > 0.0 && usd < 0.0001 {
        "< $0.0001".to_owned()
    } else if usd > 0.0 && usd < 0.01 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

fn percent(ratio: f64) -> String {
    format!("{:.1} %", ratio * 100.0)
}

fn slo_row(slo: &Value) -> SloRow {
    let remaining = slo["budget_remaining"].as_f64();
    let burn = ["5m", "1h", "6h", "3d"]
        .iter()
        .filter_map(|w| {
            let rate = slo["burn_rates"][*w].as_f64()?;
            // Bars up to 20× (the page-fast threshold is 14.4×).
            Some((
                (*w).to_owned(),
                format!("{rate:.1}×"),
                (rate / 20.0).clamp(0.0, 1.0) * 100.0,
            ))
        })
        .collect();
    SloRow {
        name: text(&slo["name"]),
        target: format!(
            "{} % {} · {} {}",
            text(&slo["objective_percent"]),
            text(&slo["sli"]),
            text(&slo["service"]),
            text(&slo["route"])
        ),
        budget: match remaining {
            Some(r) => percent(r),
            None => "never checked".to_owned(),
        },
        budget_bar: remaining.map(|r| r.clamp(0.0, 1.0) * 100.0),
        burn,
        exhaustion: match slo["time_to_exhaustion_hours"].as_f64() {
            Some(h) if h <= 0.0 => "exhausted".to_owned(),
            Some(h) => format!("in {h:.0} h"),
            None => "not burning".to_owned(),
        },
        firing: slo["firing"]
            .as_array()
            .map(|f| f.iter().map(text).collect::<Vec<_>>().join(", "))
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "none".to_owned()),
    }
}

fn fleet_row(endpoint: &Value) -> FleetRow {
    FleetRow {
        endpoint: text(&endpoint["endpoint"]),
        status: text(&endpoint["status"]),
        failures: match endpoint["failure_rate_15m"].as_f64() {
            Some(rate) => format!("{} of {}", percent(rate), count(&endpoint["attempts_15m"])),
            None => "no attempts".to_owned(),
        },
        breaker: endpoint["breaker"]["state"]
            .as_str()
            .unwrap_or("no change in 1 h")
            .to_owned(),
        latency: match endpoint["latency_ms"].as_f64() {
            Some(ms) => format!("{ms:.0} ms"),
            None => "–".to_owned(),
        },
    }
}

fn queue_row(queue: &Value) -> QueueRow {
    let dead = queue["dead_letter_depth"].as_u64();
    QueueRow {
        name: text(&queue["name"]),
        depth: text(&queue["depth"]),
        in_flight: text(&queue["in_flight"]),
        oldest: match queue["oldest_message_age_seconds"].as_f64() {
            Some(secs) => age(secs as u64),
            None => "–".to_owned(),
        },
        dead_letters: dead.map_or("–".to_owned(), |d| d.to_string()),
        alert: dead.unwrap_or(0) > 0 || queue["error"].is_string(),
    }
}

/// SVG polyline points of `values` in a 120 × 24 box (0 at the bottom).
fn sparkline(values: &[f64]) -> String {
    let max = values.iter().copied().fold(0.0, f64::max);
    let step = 120.0 / (values.len().max(2) - 1) as f64;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if max > 0.0 {
                22.0 - v / max * 20.0
            } else {
                22.0
            };
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn usage_view(usage: &Value) -> UsageView {
    let tenants = rows(&usage["tenants"])
        .iter()
        .map(|tenant| {
            let days = rows(&tenant["days"]);
            let series = |field: &str| -> Vec<f64> {
                days.iter()
                    .map(|d| d[field].as_f64().unwrap_or(0.0))
                    .collect()
            };
            TenantRow {
                tenant: text(&tenant["tenant"]),
                today: format!(
                    "{} requests · {}",
                    count(&tenant["today"]["requests"]),
                    dollars(&tenant["today"]["cost_usd"])
                ),
                requests: count(&tenant["requests"]),
                cost: dollars(&tenant["cost_usd"]),
                request_points: sparkline(&series("requests")),
                cost_points: sparkline(&series("cost_usd")),
            }
        })
        .collect();
    UsageView {
        range: format!(
            "{} to {} (UTC days)",
            text(&usage["from"]),
            text(&usage["to"])
        ),
        top_models: rows(&usage["top_models"])
            .iter()
            .map(|m| {
                (
                    text(&m["model"]),
                    count(&m["requests"]),
                    dollars(&m["cost_usd"]),
                )
            })
            .collect(),
        shown: format!(
            "{} of {} tenants",
            text(&usage["tenants_shown"]),
            text(&usage["tenants_total"])
        ),
        tenants,
    }
}

fn budget_rows(budgets: &Value) -> Vec<BudgetRow> {
    rows(&budgets["budgets"])
        .iter()
        .flat_map(|budget| {
            let blocked = budget["blocked_until"].as_str().map(str::to_owned);
            rows(&budget["periods"])
                .into_iter()
                .map(move |period| {
                    let used = period["percent"].as_f64().unwrap_or(0.0);
                    let over = used >= 100.0;
                    BudgetRow {
                        tenant: text(&budget["tenant"]),
                        period: format!("{} {}", text(&period["period"]), text(&period["id"])),
                        spent: format!(
                            "{} of {} ({used:.0} %)",
                            dollars(&period["spent_usd"]),
                            dollars(&period["budget_usd"])
                        ),
                        bar: used.clamp(0.0, 100.0),
                        over,
                        state: match (&blocked, over) {
                            (Some(until), true) => format!("refused until {until}"),
                            (_, true) => "spent (alerts only)".to_owned(),
                            _ => format!("resets {}", text(&period["resets_at"])),
                        },
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn jobs_rows(jobs: &Value) -> Vec<JobsRow> {
    let row = |tenant: String, counts: &Value| JobsRow {
        tenant,
        pending: count(&counts["pending"]),
        running: count(&counts["running"]),
        done: count(&counts["done"]),
        failed: count(&counts["failed"]),
        failures: counts["failed"].as_f64().unwrap_or(0.0) > 0.0,
    };
    let tenants = rows(&jobs["tenants"]);
    let mut out: Vec<JobsRow> = tenants.iter().map(|t| row(text(&t["tenant"]), t)).collect();
    if tenants.len() > 1 {
        out.push(row("all tenants".to_owned(), &jobs["totals"]));
    }
    out
}

fn drift_view(drift: &Value) -> DriftView {
    if drift["never_run"] == true {
        return DriftView {
            summary: "drift detection has not run yet".to_owned(),
            findings: Vec::new(),
        };
    }
    let report = &drift["report"];
    let findings: Vec<String> = rows(&report["missing"])
        .iter()
        .map(|m| format!("missing: {}", text(&m["name"])))
        .chain(rows(&report["changed"]).iter().map(|c| {
            format!(
                "changed: {} {}: expected {}, found {}",
                text(&c["name"]),
                text(&c["property"]),
                text(&c["expected"]),
                text(&c["actual"])
            )
        }))
        .chain(
            rows(&report["extras"])
                .iter()
                .map(|e| format!("unmanaged: {}", text(&e["name"]))),
        )
        .take(20)
        .collect();
    DriftView {
        summary: if drift["drifted"] == true {
            format!("{} drifted", text(&drift["stack"]))
        } else {
            format!("{} matches the template", text(&drift["stack"]))
        },
        findings,
    }
}

fn alerts_view(alerts: &Value) -> AlertsView {
    AlertsView {
        firing: rows(&alerts["firing"]).iter().map(text).collect(),
        recent: rows(&alerts["recent"])
            .iter()
            .take(10)
            .map(|a| {
                (
                    if a["firing"] == true {
                        "fired"
                    } else {
                        "resolved"
                    }
                    .to_owned(),
                    text(&a["key"]),
                    text(&a["summary"]),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_section_is_drawn_and_values_are_escaped() {
        let document = json!({
            "generated_at": "2026-12-03T10:00:00Z",
            "view": {"tenants": "all"},
            "sections": {
                "slos": {"data": [{"name": "chat", "service": "api-chat", "route": "/v1", "sli": "availability",
                    "objective_percent": 99.9, "budget_remaining": 0.4, "burn_rates": {"5m": 30.0, "1h": 2.0},
                    "time_to_exhaustion_hours": 144.0, "firing": ["page-fast"]}], "as_of": "2026-12-03T09:59:00Z", "stale_seconds": 60},
                "fleet": {"error": "not read within 2000 ms"},
                "queues": {"data": {"queues": [{"name": "jobs", "depth": 3, "in_flight": 1, "dead_letter_depth": 2}]}},
                "usage": {"data": {"from": "2026-11-04", "to": "2026-12-03", "tenants_shown": 1, "tenants_total": 1,
                    "tenants": [{"tenant": "<script>alert(1)</script>", "requests": 5.0, "cost_usd": 1.5,
                        "today": {"requests": 2.0, "cost_usd": 0.5}, "days": [{"requests": 3.0, "cost_usd": 1.0}, {"requests": 2.0, "cost_usd": 0.5}]}],
                    "top_models": [{"model": "small", "requests": 5.0, "cost_usd": 1.5}]}},
                "budgets": {"data": {"blocked": 1, "budgets": [{"tenant": "acme", "blocked_until": "2027-01-01T00:00:00Z",
                    "periods": [{"period": "monthly", "id": "2026-12", "budget_usd": 10.0, "spent_usd": 10.5, "percent": 105.0,
                        "resets_at": "2027-01-01T00:00:00Z"}]}]}},
                "jobs": {"data": {"totals": {"pending": 1, "running": 0, "done": 7, "failed": 2},
                    "tenants": [{"tenant": "acme", "pending": 1, "running": 0, "done": 5, "failed": 2},
                                {"tenant": "beta", "pending": 0, "running": 0, "done": 2, "failed": 0}]}},
                "drift": {"data": {"stack": "s", "never_run": true}},
                "secrets": {"data": {"overdue": 1, "secrets": [{"secret": "keys", "age_days": 40, "max_age_days": 30, "overdue": true}]}},
                "alerts": {"data": {"firing": ["slo#chat#page-fast"], "recent": [{"key": "slo#chat#page-fast", "firing": true, "summary": "burning"}]}},
            }
        });
        let html = render(&document).unwrap();
        for id in [
            "slos", "fleet", "queues", "usage", "budgets", "jobs", "drift", "secrets", "alerts",
        ] {
            assert!(html.contains(&format!("data-section=\"{id}\"")), "{id}");
        }
        assert!(html.contains("not read within 2000 ms"));
        assert!(html.contains("in 144 h"));
        assert!(html.contains("$10.50 of $10.00 (105 %)"));
        assert!(html.contains("refused until 2027-01-01T00:00:00Z"));
        assert!(html.contains("all tenants"));
        assert_eq!(dollars(&json!(0.000004)), "< $0.0001");
        assert_eq!(dollars(&json!(0.0042)), "$0.0042");
        assert_eq!(dollars(&json!(0.0)), "$0.00");
        assert!(html.contains("overdue"));
        assert!(html.contains("<polyline"));
        assert!(!html.contains("<script>"), "values are escaped");
        assert!(html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"));
        assert!(!html.contains("style="), "the CSP refuses style attributes");
    }

    #[test]
    fn a_flat_series_sits_on_the_baseline() {
        assert_eq!(sparkline(&[0.0, 0.0]), "0.0,22.0 120.0,22.0");
        assert_eq!(sparkline(&[0.0, 2.0]), "0.0,22.0 120.0,2.0");
    }
}
