//! Routes and their matching: a path template per route, unknown path → 404,
//! wrong method → 405 with `Allow`.

use http::Method;
use lambda_http::{Request, RequestExt};

/// One route of a function: method, path template (`/v1/jobs/{id}`), the
/// handler's own identifier for it, and the scope a caller's token must carry
/// (`None`: public). Routes are declared with [`Route::public`] or
/// [`Route::protected`], so being public is always a visible decision.
#[derive(Debug, Clone)]
pub struct Route<R> {
    pub method: Method,
    pub template: &'static str,
    pub id: R,
    pub scope: Option<&'static str>,
    /// Takes a slot of the policy's bulkhead before anything else that costs.
    pub sheds_when_busy: bool,
    /// The rate-limit check runs while the handler works, not before it (see
    /// [`Route::rate_limited_alongside`]).
    pub rate_limited_alongside: bool,
}

impl<R> Route<R> {
    pub const fn public(method: Method, template: &'static str, id: R) -> Self {
        Self {
            method,
            template,
            id,
            scope: None,
            sheds_when_busy: false,
            rate_limited_alongside: false,
        }
    }

    /// The same route, answered 503 at once (no rate-limit write, no quota
    /// reservation) when the policy's bulkhead is full; the handler gets the slot
    /// as [`ApiRequest::permit`].
    pub const fn sheds_when_busy(mut self) -> Self {
        self.sheds_when_busy = true;
        self
    }

    /// The same route, its rate-limit check started before the handler and
    /// awaited by it ([`crate::http::request::ApiRequest::rate_limit`]) together
    /// with its own admission write, so both cost one round trip. The handler
    /// must pass the check before anything with an effect; the pipeline checks
    /// it after the handler too and answers 429 whatever the handler said.
    pub const fn rate_limited_alongside(mut self) -> Self {
        self.rate_limited_alongside = true;
        self
    }

    pub const fn protected(
        method: Method,
        template: &'static str,
        id: R,
        scope: &'static str,
    ) -> Self {
        Self {
            method,
            template,
            id,
            scope: Some(scope),
            sheds_when_busy: false,
            rate_limited_alongside: false,
        }
    }
}

/// The request path as the client sent it, without the API Gateway stage.
pub(crate) fn request_path(request: &Request) -> String {
    let raw = request.raw_http_path();
    let path = if raw.is_empty() {
        request.uri().path()
    } else {
        raw
    };
    if path.len() > 1 {
        path.trim_end_matches('/').to_owned()
    } else {
        "/".to_owned()
    }
}

pub(crate) enum RouteMatch<'r, R> {
    Found(&'r Route<R>, Vec<(&'static str, String)>),
    WrongMethod(String),
    Missing,
}

pub(crate) fn match_route<'r, R>(
    routes: &'r [Route<R>],
    method: &Method,
    path: &str,
) -> RouteMatch<'r, R> {
    let mut allowed: Vec<&str> = Vec::new();
    for route in routes {
        let Some(params) = match_template(route.template, path) else {
            continue;
        };
        if route.method == *method {
            return RouteMatch::Found(route, params);
        }
        allowed.push(route.method.as_str());
    }
    if allowed.is_empty() {
        RouteMatch::Missing
    } else {
        allowed.dedup();
        RouteMatch::WrongMethod(allowed.join(", "))
    }
}

pub(crate) fn match_template(
    template: &'static str,
    path: &str,
) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    let mut template_parts = template.split('/');
    let mut path_parts = path.split('/');
    loop {
        match (template_parts.next(), path_parts.next()) {
            (None, None) => return Some(params),
            (Some(t), Some(p)) => {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    if p.is_empty() {
                        return None;
                    }
                    params.push((name, p.to_owned()));
                } else if t != p {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_segments() {
        assert!(match_template("/v1/things/{id}", "/v1/things/42").is_some());
        assert!(match_template("/v1/things/{id}", "/v1/things").is_none());
        assert!(match_template("/v1/things/{id}", "/v1/things/42/x").is_none());
        assert!(match_template("/v1/things/{id}", "/v1/things/").is_none());
    }
}
