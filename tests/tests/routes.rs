//! Route cardinality is bounded by construction: a client sends 5,000 requests to random
//! alphabetic paths (`/abcdef/ghijklmnop?q=...`, what scanners and slug-heavy apps send)
//! to a real nginx, interleaved with its real routes, and the agent runs with
//! `--http-route-limit 40`. The client side of that service has at most 40 distinct
//! `http_route` values; the real routes keep their own labels with exact counts; every
//! relabelled request is counted in `nodetap_http_route_collapses_total`.

use std::{collections::BTreeMap, time::Duration};

use nodetap_tests::{
    exposition, http1::HttpClient, metric_sum, own_process_name, random_token, servers::Nginx,
    Agent,
};

const LIMIT: usize = 40;
const RANDOM: usize = 5000;

/// Client-side request counts of `service` on `port`, by route.
fn routes(text: &str, service: &str, port: u16) -> BTreeMap<String, f64> {
    let families = exposition::parse(text).expect("the agent's exposition parses");
    let port = port.to_string();
    let mut by_route = BTreeMap::new();
    for f in families {
        for s in f.samples {
            let ours = s.name == "http_client_request_duration_seconds_count"
                && s.labels.get("service_name").is_some_and(|v| v == service)
                && s.labels.get("server_port").is_some_and(|v| *v == port);
            if ours {
                *by_route
                    .entry(s.labels["http_route"].clone())
                    .or_insert(0.0) += s.value;
            }
        }
    }
    by_route
}

#[test]
fn random_paths_stay_within_the_route_limit_and_real_routes_stay_distinct() {
    let nginx = Nginx::start();
    let agent = Agent::start(&["--http-route-limit", &LIMIT.to_string()]);
    let me = own_process_name();
    let port = nginx.http1_port;

    let mut client = HttpClient::connect(port);
    let real = ["/api/users/{}", "/health", "/api/orders"];
    let mut real_sent = [0.0; 3];
    for i in 0..RANDOM {
        let path = format!(
            "/{}/{}?q={}",
            random_token(6),
            random_token(10),
            random_token(4)
        );
        client.request("GET", &path, b"");
        let which = i % 3;
        let path = real[which].replace("{}", &(i % 997).to_string());
        client.request("GET", &path, b"");
        real_sent[which] += 1.0;
    }
    drop(client);

    let total = 2.0 * RANDOM as f64;
    let text = agent.scrape_until(Duration::from_secs(20), |t| {
        routes(t, &me, port).values().sum::<f64>() >= total
    });
    let seen = routes(&text, &me, port);
    assert_eq!(
        seen.values().sum::<f64>(),
        total,
        "requests counted on the client side (tier {}): {seen:?}; records lost {}, requests \
         lost {}, degraded connections {}",
        agent.tier(),
        metric_sum(&text, "nodetap_events_lost_total", &[]),
        metric_sum(&text, "nodetap_protocol_requests_lost_total", &[]),
        metric_sum(&text, "nodetap_capture_degraded_connections_total", &[]),
    );
    assert!(
        seen.len() <= LIMIT,
        "{} distinct routes with --http-route-limit {LIMIT}: {:?}",
        seen.len(),
        seen.keys().collect::<Vec<_>>()
    );
    for (route, sent) in ["/api/users/{id}", "/health", "/api/orders"]
        .iter()
        .zip(real_sent)
    {
        assert_eq!(
            seen.get(*route).copied(),
            Some(sent),
            "real route {route}: {seen:?}"
        );
    }
    // Every random request not under a route of its own was counted as collapsed (the
    // learned routes that kept their names are the distinct routes minus the real ones
    // and the collapsed labels).
    let collapsed = metric_sum(&text, "nodetap_http_route_collapses_total", &[]);
    let own_label: f64 = seen
        .iter()
        .filter(|(r, _)| {
            !r.contains("{param}")
                && *r != "_OTHER"
                && !real.iter().any(|x| x.replace("{}", "{id}") == **r)
        })
        .map(|(_, n)| n)
        .sum();
    assert!(
        collapsed >= RANDOM as f64 - own_label,
        "{collapsed} collapses counted for {} random requests, {own_label} kept their own route",
        RANDOM
    );
}
