//! Full-rate connection churn on loopback (bounded: about 10 s). The tracer's own paths (ring
//! buffer, maps, decoding) must lose nothing; every socket's transitions must come in order;
//! and every transition the kernel made must be either reported or counted as lost, exactly.
//! Both with the plain stream and with `--anomalies`, whose aggregator reconciles every 5 s
//! while events keep arriving.

mod common;

use common::*;

/// Whether `t` appears in `seq` in order (not necessarily contiguously).
fn is_subsequence(t: &[String], seq: &[&str]) -> bool {
    let mut it = seq.iter();
    t.iter().all(|x| it.any(|s| s == x))
}

/// The fields of each record that socket lives are checked on.
const LIFE_FIELDS: [&str; 8] = [
    "type",
    "sk",
    "pid",
    "old_state",
    "new_state",
    "sport",
    "dport",
    "time",
];

/// Legal complete lives: the normal ones, their endings when a peer resets, and a discarded
/// passive child (see [`DISCARDED_CHILD`]).
fn legal_lives() -> [&'static [&'static str]; 6] {
    const CLIENT_RESET: [&str; 4] = [
        "CLOSE->SYN_SENT",
        "SYN_SENT->ESTABLISHED",
        "ESTABLISHED->FIN_WAIT1",
        "FIN_WAIT1->CLOSE",
    ];
    const SERVER_RESET: [&str; 4] = [
        "LISTEN->SYN_RECV",
        "SYN_RECV->ESTABLISHED",
        "ESTABLISHED->CLOSE_WAIT",
        "CLOSE_WAIT->CLOSE",
    ];
    [
        &ACTIVE_CLOSE_CLIENT,
        &PASSIVE_CLOSE_SERVER,
        &CLIENT_RESET,
        &SERVER_RESET,
        &["CLOSE->LISTEN", "LISTEN->CLOSE"],
        &DISCARDED_CHILD,
    ]
}

#[test]
fn full_rate_churn_is_accounted_exactly() {
    churn_accounted_exactly("full_rate_churn_is_accounted_exactly", &[]);
}

/// The events a reconciliation applies while it runs (those that queued during its socket
/// dump) are printed too: once they were applied but never printed, silently.
#[test]
fn full_rate_churn_with_anomalies_is_accounted_exactly() {
    churn_accounted_exactly(
        "full_rate_churn_with_anomalies_is_accounted_exactly",
        &["--anomalies"],
    );
}

/// A socket table of 9,363 sets rather than 37,450: two CPUs enter sockets of one set at the
/// same instant four times as often, and each such collision must keep both sockets (the
/// per-set claim). The churn keeps 1,000-2,000 sockets alive (mostly CLOSE_WAIT and FIN_WAIT2),
/// which never fill a set of 7 here, so nothing may be evicted either (1,024 slots overflowed
/// constantly).
#[test]
fn full_rate_churn_in_a_quarter_of_the_socket_table_is_accounted_exactly() {
    churn_accounted_exactly(
        "full_rate_churn_in_a_quarter_of_the_socket_table_is_accounted_exactly",
        &["--max-sockets", "65536"],
    );
}

/// With the owners and times worked out in the reader: the time-ordered stream must give each
/// socket's transitions in order at the full rate, or a life comes out wrong.
#[test]
fn full_rate_churn_attributed_in_userspace_is_accounted_exactly() {
    churn_accounted_exactly(
        "full_rate_churn_attributed_in_userspace_is_accounted_exactly",
        &["--attribution", "userspace"],
    );
}

/// Runs `tracer stream --json EXTRA...` during a churn and checks every life it printed.
fn churn_accounted_exactly(test: &str, extra: &[&str]) {
    if !kernel_available(test) {
        return;
    }
    // Two full-rate churns at once on two cores would measure contention, not the tracer.
    let _serial = serial();
    let port = port();
    let p = port.to_string();
    // ~1 GB of JSON goes to a file on this VM's disk in 10 s; writeback can stall the writer
    // for a few hundred ms, longer than the default output queue holds at this rate (~0.1 s).
    // A queue of 1M events absorbs such stalls (and a 128M ring any lag of the drain): what is
    // tested here is that the tracer's own paths keep up.
    let tracer = Tracer::start(
        &[
            extra,
            &[
                "--port",
                &p,
                "--type",
                "state",
                "--ring-size",
                "128M",
                "--output-queue",
                "1048576",
            ],
        ]
        .concat(),
    );
    let (pid, summary) = churn_at(port, 10, 400_000, &["--dst-spread", "16"]);
    let connections = summary["connections"].as_u64().unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(
        connections > 10_000,
        "churn too slow to mean anything: {summary}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let run = tracer.stop_slim(&LIFE_FIELDS);
    let stop = run.stderr.lines().last().unwrap_or_default().to_owned();
    eprintln!("{test}: {summary}; {stop}");

    for cause in [
        "ringbuf_full",
        "sock_map_full",
        "listener_map_full",
        "decode_error",
        "output_queue_full",
    ] {
        assert_eq!(summary_loss(&stop, cause), 0, "{cause}: {stop}");
    }
    let reported_lost =
        summary_loss(&stop, "recursion_miss") + summary_loss(&stop, "kernel_undelivered");
    // A socket left out of the table while another CPU held its set (that CPU interrupted
    // inside its few instructions): counted, and rare. A claim word left held would fail
    // every later insert of its set, several a second here.
    let busy = summary_loss(&stop, "sock_table_busy");
    assert!(busy <= connections / 10_000, "sock_table_busy: {stop}");

    let legal = legal_lives();
    let (mut complete, mut partial, mut duplicates, mut missing_total) = (0u64, 0u64, 0u64, 0u64);
    let mut unowned = Vec::new();
    let mut duplicated = Vec::new();
    for life in lives(&run.events) {
        // Never a wrong owner; unknown (0) only where a lost transition left none recorded.
        let pids = life.pids();
        assert!(
            pids.iter().all(|&p| p == u64::from(pid) || p == 0),
            "owner: {life:?}"
        );
        let mut t = life.transitions();
        let before = t.len();
        t.dedup();
        if t.len() < before {
            duplicates += (before - t.len()) as u64;
            duplicated.push(life.timed());
        }
        // In order: a subsequence of some legal life; what it lacks must have been lost. When
        // both the end of one socket's life and the start of the next at the same address were
        // lost, the two run together: then each part must fit a legal life of its own.
        let fit = |t: &[String]| {
            legal
                .iter()
                .filter(|seq| is_subsequence(t, seq))
                .map(|seq| seq.len() - t.len())
                .min()
        };
        let merged = || {
            (1..t.len())
                .filter_map(|k| Some(fit(&t[..k])? + fit(&t[k..])?))
                .min()
        };
        let Some(missing) = fit(&t).or_else(|| merged().inspect(|_| partial += 1)) else {
            panic!("out of order or foreign transitions: {t:?}");
        };
        if missing == 0 {
            complete += 1;
            // Only a socket the table left out lacks its owner where no transition was lost.
            if !pids.iter().all(|&p| p == u64::from(pid)) {
                unowned.push(life.timed());
            }
        } else {
            partial += 1;
            missing_total += missing as u64;
        }
    }
    eprintln!(
        "{test}: {connections} connections, {complete} complete lives, {partial} incomplete \
         ({missing_total} transitions missing), {duplicates} duplicated transitions, \
         {reported_lost} transitions reported lost"
    );
    assert_eq!(duplicates, 0, "transitions reported twice: {duplicated:#?}");
    assert!(
        unowned.len() as u64 <= busy,
        "complete lives without their owner, {busy} sockets left out: {unowned:#?}"
    );
    // Every transition missing from a life is covered by a reported loss (a life split in two
    // by a lost first transition counts it at most twice; two lives run together count their
    // lost end and start once), and no connection vanished unreported.
    assert!(
        missing_total <= 2 * reported_lost,
        "{missing_total} transitions missing from {partial} lives, {reported_lost} reported lost"
    );
    assert!(
        complete + 2 * reported_lost > 2 * connections,
        "{complete} complete lives for {connections} connections, {reported_lost} reported lost"
    );
}

/// Stopping in the middle of a full-rate churn: the stream drains what the rings hold, prints
/// every event it counted before its summary, and loses none on the way out.
#[test]
fn stop_mid_churn_prints_every_counted_event() {
    let test = "stop_mid_churn_prints_every_counted_event";
    if !kernel_available(test) {
        return;
    }
    let _serial = serial();
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start(&["--port", &p, "--type", "state", "--ring-size", "64M"]);
    let churn = std::thread::spawn(move || churn_at(port, 4, 200_000, &["--dst-spread", "16"]));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let run = tracer.stop_slim(&LIFE_FIELDS);
    let (_, summary) = churn.join().expect("churn thread");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(run.status.success(), "{}", run.stderr);

    let stop = run
        .stderr
        .lines()
        .find(|l| l.starts_with("tracer: ") && l.contains(" events (state "))
        .unwrap_or_else(|| panic!("no stop summary in {}", run.stderr))
        .to_owned();
    eprintln!("{test}: {summary}; {stop}");
    let counted = summary_number(&stop, "(state ", ',');
    let printed = run.events.iter().filter(|e| e["type"] == "state").count() as u64;
    assert!(
        counted > 20_000,
        "stopped too early or too late to test anything: {stop}"
    );
    assert_eq!(printed, counted, "events counted but not printed: {stop}");
    for cause in ["ringbuf_full", "decode_error", "output_queue_full"] {
        assert_eq!(summary_loss(&stop, cause), 0, "{cause}: {stop}");
    }

    // The stop cuts every life at one moment: what was printed of a life is its beginning,
    // not a beginning with holes, beyond what the kernel-side losses explain.
    let legal = legal_lives();
    let (mut cut, mut gapped) = (0u64, Vec::new());
    for life in lives(&run.events) {
        let t = life.transitions();
        if legal
            .iter()
            .any(|seq| t.len() <= seq.len() && seq[..t.len()] == t[..])
        {
            cut += u64::from(legal.iter().all(|seq| seq.len() != t.len()));
        } else {
            gapped.push(life.timed());
        }
    }
    let kernel_lost =
        summary_loss(&stop, "recursion_miss") + summary_loss(&stop, "kernel_undelivered");
    eprintln!(
        "{test}: {cut} lives cut by the stop, {} with holes, {kernel_lost} lost in the kernel",
        gapped.len()
    );
    assert!(
        gapped.len() as u64 <= 2 * kernel_lost,
        "{} lives with holes, {kernel_lost} transitions lost in the kernel: {:#?}",
        gapped.len(),
        &gapped[..gapped.len().min(20)]
    );
}
