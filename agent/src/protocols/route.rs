//! HTTP routes: what becomes the `http_route` label, bounded by construction.
//!
//! Three layers, each a bound on the one before:
//! 1. [`RoutePatterns`]: the user's `--http-route` patterns; a path that matches one is
//!    that pattern, and nothing below changes it.
//! 2. [`normalize_route`]: the path without query and fragment, identifier-like segments
//!    (numbers, UUIDs, long hex strings, long letter-and-digit tokens) as `{id}`, at most
//!    [`MAX_SEGMENTS`] segments and [`MAX_ROUTE`] bytes. It is pure and sees one path, so
//!    slugs, short codes and random words pass it unchanged.
//! 3. [`RouteBudget`]: learned per service from its traffic. Under one prefix a segment may
//!    take [`SEGMENT_VALUES`] distinct values; a further value collapses that position to
//!    [`PLACEHOLDER`] for every later request (the values already seen stay). A service
//!    has at most its route limit of distinct routes, [`OTHER_ROUTE`] included; past it,
//!    new routes are `_OTHER`. Each relabelled request is counted with its [`Collapse`]
//!    reason. Memory is bounded: 64-bit hashes, not strings, at most
//!    [`PREFIXES_PER_ROUTE`] prefixes per allowed route, at most [`MAX_SERVICES`] services.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::Arc,
};

/// Longest route, in bytes.
pub const MAX_ROUTE: usize = 128;
/// Path segments a normalised route keeps before `/...`.
pub const MAX_SEGMENTS: usize = 6;
/// Most route patterns accepted.
pub const MAX_PATTERNS: usize = 1000;
/// Distinct routes per service (and side and port) by default, `_OTHER` included.
pub const DEFAULT_ROUTE_LIMIT: usize = 100;
/// Distinct values a segment may take under one prefix before it becomes [`PLACEHOLDER`].
pub const SEGMENT_VALUES: usize = 25;
/// What a segment with too many values under one prefix becomes.
pub const PLACEHOLDER: &str = "{param}";
/// The route of requests past their service's route limit.
pub const OTHER_ROUTE: &str = "_OTHER";
/// Prefixes learned per allowed route (a route has at most [`MAX_SEGMENTS`] + 1 segments).
pub const PREFIXES_PER_ROUTE: usize = MAX_SEGMENTS + 1;
/// Services whose routes are learned; routes of services past it are `_OTHER`.
pub const MAX_SERVICES: usize = 2000;

/// The path of a request target: without `scheme://authority` (absolute form), query and
/// fragment.
fn path_of(target: &str) -> &str {
    let mut path = target;
    for scheme in ["http://", "https://"] {
        let b = path.as_bytes();
        if b.len() >= scheme.len() && b[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes()) {
            let rest = &path[scheme.len()..];
            path = rest.find('/').map_or("", |i| &rest[i..]);
            break;
        }
    }
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether a path segment is an identifier: a number, a UUID, a hex string of 8 characters
/// or more, or a letters-and-digits token of 16 characters or more with a digit in it.
fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.iter().all(u8::is_ascii_digit)
        || is_uuid(b)
        || (b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit))
        || (b.len() >= 16
            && b.iter().all(u8::is_ascii_alphanumeric)
            && b.iter().any(u8::is_ascii_digit))
}

/// A low-cardinality route for a request path (or target): the query string and fragment
/// are dropped (so are `scheme://host` of an absolute-form target and empty segments),
/// identifier segments become `{id}` (numbers, UUIDs, hex strings of 8 or more characters,
/// letters-and-digits tokens of 16 or more with a digit), at most [`MAX_SEGMENTS`] segments
/// are kept, then `/...`, and the result is at most [`MAX_ROUTE`] bytes (cut at a segment
/// boundary, ending with `/...`). `*` stays `*`; an empty path is `/`.
///
/// `/users/42/orders?x=1` -> `/users/{id}/orders`.
pub fn normalize_route(path: &str) -> String {
    normalize(path, false)
}

/// `truncated`: `target` is only the start of the real target: the route ends with `/...`,
/// without the last segment when that may be partial.
pub fn normalize(target: &str, truncated: bool) -> String {
    let path = path_of(target);
    if path == "*" {
        return "*".to_string();
    }
    let mut out = String::with_capacity(32);
    let mut segments = path.split('/').filter(|s| !s.is_empty()).peekable();
    // What follows the cut is unknown: the route ends with "/..." and a partial last
    // segment (one not followed by '/') is dropped.
    let partial = truncated && !path.ends_with('/');
    let mut kept = 0;
    let mut cut = truncated;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (partial && last) || kept == MAX_SEGMENTS {
            cut = true;
            break;
        }
        let seg = if is_id(seg) { "{id}" } else { seg };
        // Room for "/..." after it, unless it is the last segment and fits as it is.
        let room = if last && !truncated {
            MAX_ROUTE
        } else {
            MAX_ROUTE - 4
        };
        if out.len() + 1 + seg.len() > room {
            cut = true;
            break;
        }
        out.push('/');
        out.push_str(seg);
        kept += 1;
    }
    if cut {
        out.push_str("/...");
    } else if out.is_empty() {
        out.push('/');
    }
    out
}

/// A user route pattern could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutePatternError {
    #[error("route pattern {pattern:?} does not start with '/'")]
    NotAbsolute { pattern: String },
    #[error("route pattern {pattern:?} is longer than {max} bytes")]
    TooLong { pattern: String, max: usize },
    #[error("route pattern {pattern:?} has '*' in segment {segment:?}: '*' must be the whole last segment")]
    MisplacedWildcard { pattern: String, segment: String },
    #[error("route pattern {pattern:?} has a bad parameter in segment {segment:?}: a parameter is a whole segment, '{{name}}'")]
    BadParameter { pattern: String, segment: String },
    #[error("route pattern {pattern:?} has a query or fragment: patterns match paths only")]
    QueryOrFragment { pattern: String },
    #[error("more than {max} route patterns")]
    TooMany { max: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternSegment {
    Literal(Box<str>),
    /// `{name}`: any one segment.
    Param,
}

#[derive(Clone, Debug)]
struct Pattern {
    text: Box<str>,
    segments: Vec<PatternSegment>,
    /// Ends with `*`: any further segments, none included.
    rest: bool,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, RoutePatternError> {
        let err_seg = |seg: &str, f: fn(String, String) -> RoutePatternError| {
            f(text.to_string(), seg.to_string())
        };
        if !text.starts_with('/') {
            return Err(RoutePatternError::NotAbsolute {
                pattern: text.to_string(),
            });
        }
        if text.len() > MAX_ROUTE {
            return Err(RoutePatternError::TooLong {
                pattern: text.to_string(),
                max: MAX_ROUTE,
            });
        }
        if text.contains(['?', '#']) {
            return Err(RoutePatternError::QueryOrFragment {
                pattern: text.to_string(),
            });
        }
        let all: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(all.len());
        let mut rest = false;
        for (i, seg) in all.iter().enumerate() {
            if seg.contains('*') {
                if *seg != "*" || i + 1 != all.len() {
                    return Err(err_seg(seg, |pattern, segment| {
                        RoutePatternError::MisplacedWildcard { pattern, segment }
                    }));
                }
                rest = true;
            } else if seg.contains(['{', '}']) {
                let name = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
                let ok = name.is_some_and(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
                if !ok {
                    return Err(err_seg(seg, |pattern, segment| {
                        RoutePatternError::BadParameter { pattern, segment }
                    }));
                }
                segments.push(PatternSegment::Param);
            } else {
                segments.push(PatternSegment::Literal((*seg).into()));
            }
        }
        Ok(Self {
            text: text.into(),
            segments,
            rest,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut segs = path.split('/').filter(|s| !s.is_empty());
        for p in &self.segments {
            match (p, segs.next()) {
                (_, None) => return false,
                (PatternSegment::Literal(l), Some(s)) if **l != *s => return false,
                _ => {}
            }
        }
        self.rest || segs.next().is_none()
    }
}

/// Route patterns given by the user, such as `/users/{id}/orders` (`{name}` matches one path
/// segment) or `/api/*` (`*`, as the last segment only, matches any further segments, none
/// included). Empty segments, the query and the fragment of a path are ignored when
/// matching. Patterns are tried in the order given; the first that matches is the route.
#[derive(Clone, Debug, Default)]
pub struct RoutePatterns {
    patterns: Vec<Pattern>,
    /// The patterns as given, to tell a route that is one of them.
    texts: HashSet<Box<str>>,
}

impl RoutePatterns {
    /// Checks and compiles the patterns (at most [`MAX_PATTERNS`], each at most
    /// [`MAX_ROUTE`] bytes, since a pattern becomes a label value).
    pub fn new<I, S>(patterns: I) -> Result<Self, RoutePatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for p in patterns {
            if out.len() == MAX_PATTERNS {
                return Err(RoutePatternError::TooMany { max: MAX_PATTERNS });
            }
            out.push(Pattern::parse(p.as_ref())?);
        }
        let texts = out.iter().map(|p| p.text.clone()).collect();
        Ok(Self {
            patterns: out,
            texts,
        })
    }

    /// Whether `route` is one of the patterns, as given.
    pub fn is_pattern(&self, route: &str) -> bool {
        self.texts.contains(route)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// The first pattern that matches a request path (or target), as it was given.
    pub fn matches(&self, path: &str) -> Option<&str> {
        let path = path_of(path);
        self.patterns
            .iter()
            .find(|p| p.matches(path))
            .map(|p| &*p.text)
    }

    /// The route of a path: the matching pattern, otherwise [`normalize_route`].
    pub fn route(&self, path: &str) -> String {
        match self.matches(path) {
            Some(p) => p.to_string(),
            None => normalize_route(path),
        }
    }
}

// ---- learned bounds ---------------------------------------------------------------------------

/// Why a request's route was relabelled (the `reason` label of the collapse counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collapse {
    /// A segment took too many values under its prefix and became [`PLACEHOLDER`].
    Placeholder,
    /// The service had its limit of routes (or the agent its limit of services): `_OTHER`.
    Limit,
}

impl Collapse {
    pub fn label(self) -> &'static str {
        match self {
            Collapse::Placeholder => "placeholder",
            Collapse::Limit => "limit",
        }
    }
}

fn hash_of(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The values one position took under one prefix (at most [`SEGMENT_VALUES`]), and
/// whether a further value came: then new values are [`PLACEHOLDER`]; the ones seen
/// before stay themselves, so a route never changes its label.
#[derive(Default)]
struct Position {
    values: HashSet<u64>,
    collapsed: bool,
}

/// What one service's routes taught: by prefix (the hash of the route so far, segments
/// already resolved), the values of the next segment; and the routes given out.
#[derive(Default)]
struct ServiceRoutes {
    positions: HashMap<u64, Position>,
    routes: HashSet<u64>,
}

impl ServiceRoutes {
    /// Resolves a normalised route: collapses positions with too many values, learns the
    /// values it is allowed to, and returns the route with placeholders.
    fn resolve<'r>(&mut self, route: &'r str, limit: usize) -> (std::borrow::Cow<'r, str>, bool) {
        let mut out = String::with_capacity(route.len());
        let mut collapsed = false;
        let room = limit.saturating_mul(PREFIXES_PER_ROUTE);
        for seg in route.split('/').skip(1) {
            let prefix = hash_of(&out);
            let full = self.positions.len() >= room;
            let position = match self.positions.get_mut(&prefix) {
                Some(p) => Some(p),
                None if full => None,
                None => Some(self.positions.entry(prefix).or_default()),
            };
            // No room to learn a new prefix: its values are vouched for by nobody.
            let keep = position.is_some_and(|p| {
                let h = hash_of(seg);
                if p.values.contains(&h) {
                    true
                } else if !p.collapsed && p.values.len() < SEGMENT_VALUES {
                    p.values.insert(h);
                    true
                } else {
                    p.collapsed = true;
                    false
                }
            });
            out.push('/');
            if keep || seg == PLACEHOLDER {
                out.push_str(seg);
            } else {
                out.push_str(PLACEHOLDER);
                collapsed = true;
            }
        }
        if collapsed {
            (out.into(), true)
        } else {
            (route.into(), false)
        }
    }
}

/// Per-service route bounds learned from traffic (see the module documentation). `K` names
/// a service: whatever the caller keeps routes apart by (side, port, workload).
pub struct RouteBudget<K> {
    limit: usize,
    patterns: Arc<RoutePatterns>,
    services: HashMap<K, ServiceRoutes>,
}

impl<K: Hash + Eq> RouteBudget<K> {
    /// At most `limit` routes per service (`_OTHER` included; at least 1); routes that are
    /// one of `patterns` are the user's and pass unchanged.
    pub fn new(limit: usize, patterns: Arc<RoutePatterns>) -> Self {
        Self {
            limit: limit.max(1),
            patterns,
            services: HashMap::new(),
        }
    }

    /// The route to label a request of `service` with, and why it differs from `route`
    /// (a normalised route or a user pattern) if it does.
    pub fn bound<'r>(
        &mut self,
        service: K,
        route: &'r str,
    ) -> (std::borrow::Cow<'r, str>, Option<Collapse>) {
        // The user's patterns win; `*` (OPTIONS *) and "" (CONNECT) are closed sets.
        if !route.starts_with('/') || self.patterns.is_pattern(route) {
            return (route.into(), None);
        }
        let other = || (OTHER_ROUTE.into(), Some(Collapse::Limit));
        let services = self.services.len();
        let known = match self.services.entry(service) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if services >= MAX_SERVICES => {
                return other()
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(ServiceRoutes::default()),
        };
        let (resolved, collapsed) = known.resolve(route, self.limit);
        let h = hash_of(&resolved);
        // One place is kept for `_OTHER`.
        if !known.routes.contains(&h) {
            if known.routes.len() + 1 >= self.limit {
                return other();
            }
            known.routes.insert(h);
        }
        (resolved, collapsed.then_some(Collapse::Placeholder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes_are_normalised() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("/users/42", "/users/{id}"),
            ("/users/42/orders?x=1#frag", "/users/{id}/orders"),
            ("/users/42#frag?x", "/users/{id}"),
            ("/v1/users", "/v1/users"),
            ("/v2", "/v2"),
            (
                "/orders/550e8400-E29B-41d4-a716-446655440000/items",
                "/orders/{id}/items",
            ),
            (
                "/commits/9fceb02d0ae598e95dc970b74767f19372d61af8",
                "/commits/{id}",
            ),
            ("/blob/deadbeef", "/blob/{id}"),
            ("/blob/deadbee", "/blob/deadbee"),
            ("/t/AbCdEf1234567890xyz", "/t/{id}"),
            ("/t/abcdefghijklmnopqrstu", "/t/abcdefghijklmnopqrstu"),
            ("/t/abc-1234567890-xyz", "/t/abc-1234567890-xyz"),
            ("//a//b/", "/a/b"),
            ("/a/b/c/d/e/f", "/a/b/c/d/e/f"),
            ("/a/b/c/d/e/f/g", "/a/b/c/d/e/f/..."),
            ("/1/2/3/4/5/6/7/8", "/{id}/{id}/{id}/{id}/{id}/{id}/..."),
            ("http://example.com:8080/x/1?q", "/x/{id}"),
            ("HTTPS://example.com", "/"),
            ("*", "*"),
            ("/caf%C3%A9/2", "/caf%C3%A9/{id}"),
            ("/café/2", "/café/{id}"),
        ];
        for (path, route) in cases {
            assert_eq!(normalize_route(path), route, "{path:?}");
        }
        let long = format!("/{}", "z".repeat(200));
        assert_eq!(normalize_route(&long), "/...");
        // Six segments of 20 bytes fit (126 bytes); with a seventh, the sixth does not leave
        // room for "/...".
        let seg = "/abcdefghij-klmnopqrs";
        assert_eq!(normalize_route(&seg.repeat(6)), seg.repeat(6));
        assert_eq!(normalize_route(&seg.repeat(7)), seg.repeat(5) + "/...");
        assert_eq!(normalize(&seg.repeat(6), true), seg.repeat(5) + "/...");
        assert_eq!(
            normalize(&(seg.repeat(6) + "/"), true),
            seg.repeat(5) + "/..."
        );
        // A last segment that fits without the "/..." reserve is kept.
        let exact = format!("/{}/{}", "x".repeat(63), "y".repeat(63));
        assert_eq!(exact.len(), MAX_ROUTE);
        assert_eq!(normalize_route(&exact), exact);
        // A path cut short loses its partial last segment.
        assert_eq!(normalize("/users/42/ord", true), "/users/{id}/...");
        assert_eq!(normalize("/users/42/", true), "/users/{id}/...");
        assert_eq!(normalize("/use", true), "/...");
        assert_eq!(normalize("/", true), "/...");
    }

    #[test]
    fn route_patterns() {
        let p = RoutePatterns::new(["/users/{id}/orders", "/api/*", "/api/v1/special", "/"])
            .expect("valid patterns");
        assert_eq!(p.len(), 4);
        assert_eq!(
            p.matches("/users/42/orders?x=1"),
            Some("/users/{id}/orders")
        );
        assert_eq!(
            p.matches("/users/alice/orders/"),
            Some("/users/{id}/orders")
        );
        assert_eq!(p.matches("/users/42"), None);
        assert_eq!(p.matches("/users/42/orders/7"), None);
        assert_eq!(p.matches("/api"), Some("/api/*"));
        assert_eq!(
            p.matches("/api/v1/special"),
            Some("/api/*"),
            "first match wins"
        );
        assert_eq!(p.matches("/apix"), None);
        assert_eq!(p.matches("http://h/api/x/y/z"), Some("/api/*"));
        assert_eq!(p.matches("/"), Some("/"));
        assert_eq!(p.matches(""), Some("/"));
        // Patterns also match normalised routes (what an exchange carries).
        assert_eq!(p.matches("/users/{id}/orders"), Some("/users/{id}/orders"));
        assert_eq!(p.route("/users/1/orders"), "/users/{id}/orders");
        assert_eq!(p.route("/items/9"), "/items/{id}");
        assert!(RoutePatterns::default().is_empty());

        use RoutePatternError as E;
        let err = |s: &str| RoutePatterns::new([s]).unwrap_err();
        assert!(matches!(err("users/{id}"), E::NotAbsolute { .. }));
        assert!(matches!(err("/a/*/b"), E::MisplacedWildcard { .. }));
        assert!(matches!(err("/a/x*"), E::MisplacedWildcard { .. }));
        assert!(matches!(err("/a/{}"), E::BadParameter { .. }));
        assert!(matches!(err("/a/{id"), E::BadParameter { .. }));
        assert!(matches!(err("/a/x{id}"), E::BadParameter { .. }));
        assert!(matches!(err("/a/{i-d}"), E::BadParameter { .. }));
        assert!(matches!(err("/a?x=1"), E::QueryOrFragment { .. }));
        assert!(matches!(err(&"/a".repeat(65)), E::TooLong { .. }));
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("/p{i}")).collect();
        assert_eq!(
            RoutePatterns::new(&many).unwrap_err(),
            E::TooMany { max: MAX_PATTERNS }
        );
        assert_eq!(
            err("/a/*/b").to_string(),
            "route pattern \"/a/*/b\" has '*' in segment \"*\": '*' must be the whole last segment"
        );
        assert_eq!(
            err("/a/{}").to_string(),
            "route pattern \"/a/{}\" has a bad parameter in segment \"{}\": a parameter is a whole segment, '{name}'"
        );
    }

    #[test]
    fn normalize_route_is_bounded() {
        proptest!(|(path in "[/a-z0-9?#%-]{0,400}")| {
            let r = normalize_route(&path);
            prop_assert!(r.len() <= MAX_ROUTE, "{}", r);
            prop_assert!(r.starts_with('/') || r == "*", "{}", r);
        });
    }

    #[test]
    fn random_paths_stay_within_the_route_limit_and_real_routes_stay_distinct() {
        let mut budget = RouteBudget::new(DEFAULT_ROUTE_LIMIT, Arc::new(RoutePatterns::default()));
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut word = |len: usize| {
            (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (b'a' + (rng % 26) as u8) as char
                })
                .collect::<String>()
        };
        let real = ["/api/users/17", "/health", "/api/orders"];
        let mut routes = HashSet::new();
        let mut real_routes = HashSet::new();
        let mut collapses = 0;
        for i in 0..5000 {
            let path = format!("/{}/{}?q={}", word(6), word(10), word(4));
            let normal = normalize_route(&path);
            let (r, why) = budget.bound("svc", &normal);
            collapses += usize::from(why.is_some());
            routes.insert(r.into_owned());
            let normal = normalize_route(real[i % 3]);
            let (r, why) = budget.bound("svc", &normal);
            assert_eq!(why, None, "{:?} collapsed", real[i % 3]);
            real_routes.insert(r.into_owned());
        }
        routes.extend(real_routes.iter().cloned());
        assert!(
            routes.len() <= DEFAULT_ROUTE_LIMIT,
            "{} routes",
            routes.len()
        );
        let want: HashSet<String> = ["/api/users/{id}", "/health", "/api/orders"]
            .map(String::from)
            .into();
        assert_eq!(real_routes, want);
        assert!(collapses > 4000, "only {collapses} collapses counted");
        // Another service learns on its own.
        assert_eq!(budget.bound("other", "/abcdef/ghij").0, "/abcdef/ghij");
    }

    #[test]
    fn a_position_collapses_after_its_values_and_keeps_the_ones_it_had() {
        let mut b = RouteBudget::new(1000, Arc::new(RoutePatterns::default()));
        for i in 0..SEGMENT_VALUES {
            let r = format!("/shop/item{i}x/reviews");
            assert_eq!(b.bound(0, &r), (r.clone().into(), None));
        }
        assert_eq!(
            b.bound(0, "/shop/newone/reviews"),
            ("/shop/{param}/reviews".into(), Some(Collapse::Placeholder))
        );
        assert_eq!(
            b.bound(0, "/shop/another/reviews"),
            ("/shop/{param}/reviews".into(), Some(Collapse::Placeholder))
        );
        assert_eq!(
            b.bound(0, "/shop/item3x/reviews").1,
            None,
            "seen before the collapse"
        );
        assert_eq!(b.bound(0, "/shop").1, None, "a shorter route is its own");
    }

    #[test]
    fn the_limit_counts_other_and_user_patterns_always_win() {
        let patterns = Arc::new(RoutePatterns::new(["/u/{name}", "/static/*"]).unwrap());
        let mut b = RouteBudget::new(3, patterns);
        assert_eq!(b.bound(1, "/a").1, None);
        assert_eq!(b.bound(1, "/b").1, None);
        assert_eq!(
            b.bound(1, "/c"),
            (OTHER_ROUTE.into(), Some(Collapse::Limit))
        );
        assert_eq!(b.bound(1, "/a").1, None, "a known route stays");
        for p in ["/u/{name}", "/static/*", "*", ""] {
            assert_eq!(b.bound(1, p), (p.into(), None));
        }
        assert_eq!(
            RouteBudget::new(0, Arc::default()).bound(1, "/a").0,
            OTHER_ROUTE
        );
    }

    #[test]
    fn services_past_the_cap_are_other() {
        let mut b = RouteBudget::new(10, Arc::default());
        for s in 0..MAX_SERVICES {
            assert_eq!(b.bound(s, "/x").1, None);
        }
        assert_eq!(
            b.bound(MAX_SERVICES, "/x"),
            (OTHER_ROUTE.into(), Some(Collapse::Limit))
        );
        assert_eq!(b.bound(0, "/x").1, None);
    }

    #[test]
    fn learned_state_is_bounded() {
        proptest!(|(paths in proptest::collection::vec("(/[a-z{}]{1,4}){1,7}", 1..400))| {
            let limit = 20;
            let mut b = RouteBudget::new(limit, Arc::default());
            let mut seen = HashSet::new();
            for p in &paths {
                let (r, _) = b.bound((), p);
                seen.insert(r.into_owned());
            }
            prop_assert!(seen.len() <= limit);
            let s = &b.services[&()];
            prop_assert!(s.positions.len() <= limit * PREFIXES_PER_ROUTE);
            prop_assert!(s.routes.len() < limit);
        });
    }

    /// The RED metrics keep a series' bounded route and collapse per request route: sound
    /// only if the budget bounds a route the same way every time it sees it again.
    #[test]
    fn a_route_is_bounded_the_same_way_every_time() {
        proptest!(|(paths in proptest::collection::vec("(/[a-c{}]{1,2}){1,4}", 1..300))| {
            let mut b = RouteBudget::new(8, Arc::default());
            let mut first = HashMap::new();
            for p in &paths {
                let bounded = b.bound((), p);
                let bounded = (bounded.0.into_owned(), bounded.1);
                let earlier = first.entry(p.clone()).or_insert_with(|| bounded.clone());
                prop_assert_eq!(&*earlier, &bounded, "{}", p);
            }
        });
    }
}
