//! Full-rate connection churn on loopback (bounded: about 10 s): no event may be lost and every
//! connection must show exactly its ten transitions.

mod common;

use std::collections::HashMap;

use common::*;

#[test]
fn full_rate_churn_loses_nothing() {
    if !kernel_available("full_rate_churn_loses_nothing") {
        return;
    }
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start(&["--port", &p]);
    let (_, summary) = loadgen(
        &[],
        &[
            "churn", "--addr", "127.0.0.1", "--port", &p, "--threads", "2", "--duration-secs", "10",
            "--dst-spread", "16", "--max-connections", "400000",
        ],
    );
    let connections = summary["connections"].as_u64().unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(connections > 10_000, "churn too slow to mean anything: {summary}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let run = tracer.stop();
    eprintln!("churn: {summary}; tracer: {}", run.stderr.lines().last().unwrap_or_default());
    run.assert_no_loss();

    let all = lives(&run.events);
    let mut shapes: HashMap<Vec<String>, usize> = HashMap::new();
    for life in &all {
        *shapes.entry(life.transitions()).or_default() += 1;
    }
    let listener = vec!["CLOSE->LISTEN".to_owned(), "LISTEN->CLOSE".to_owned()];
    let client: Vec<String> = ACTIVE_CLOSE_CLIENT.iter().map(|s| s.to_string()).collect();
    let server: Vec<String> = PASSIVE_CLOSE_SERVER.iter().map(|s| s.to_string()).collect();
    assert_eq!(shapes.get(&listener), Some(&1), "{shapes:#?}");
    assert_eq!(shapes.get(&client), Some(&(connections as usize)), "{shapes:#?}");
    assert_eq!(shapes.get(&server), Some(&(connections as usize)), "{shapes:#?}");
    assert_eq!(shapes.len(), 3, "unexpected lifecycles: {shapes:#?}");
    assert_eq!(run.of_type("state").len() as u64, 2 + 10 * connections);
}
