//! Unit tests: argument validation, address computation, loopback round trip.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cli::{self, Cli, CloseMode, Command};
use crate::sock;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("tracer-loadgen").chain(args.iter().copied()))
}

#[test]
fn spread_addresses() {
    let base: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(cli::target_addr(base, 1, 7), base);
    let got: Vec<_> = (0..5)
        .map(|i| cli::target_addr(base, 3, i).to_string())
        .collect();
    assert_eq!(
        got,
        [
            "127.0.0.1:8080",
            "127.0.0.2:8080",
            "127.0.0.3:8080",
            "127.0.0.1:8080",
            "127.0.0.2:8080"
        ]
    );
    assert_eq!(
        cli::target_addr(base, 250, 249).ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 250))
    );
    assert_eq!(cli::listen_addr(base.ip(), 0, 4).to_string(), "0.0.0.0:0");
    assert_eq!(
        cli::listen_addr("::1".parse().unwrap(), 9, 1).to_string(),
        "[::1]:9"
    );
}

#[test]
fn spread_needs_ipv4() {
    assert!(cli::check_spread("::1".parse().unwrap(), 2).is_err());
    assert!(cli::check_spread("::1".parse().unwrap(), 1).is_ok());
    assert!(cli::check_spread("127.0.0.1".parse().unwrap(), 250).is_ok());
}

#[test]
fn client_args() {
    let cli = parse(&[
        "client",
        "--addr",
        "::1",
        "--port",
        "80",
        "--count",
        "3",
        "--close",
        "shutdown-wait",
    ])
    .unwrap();
    let Command::Client(a) = cli.cmd else {
        panic!("not client")
    };
    assert_eq!((a.count, a.threads, a.send, a.dst_spread), (3, 1, 0, 1));
    assert_eq!(a.close, CloseMode::ShutdownWait);
    assert!(a.duration_secs.is_none());

    let base = [
        "client",
        "--addr",
        "127.0.0.1",
        "--port",
        "80",
        "--count",
        "3",
    ];
    for bad in [
        &["--dst-spread", "0"][..],
        &["--dst-spread", "251"],
        &["--close", "rst"],
        &["--threads", "0"],
    ] {
        let args: Vec<&str> = base.iter().chain(bad).copied().collect();
        assert!(parse(&args).is_err(), "accepted {bad:?}");
    }
    assert!(
        parse(&[
            "client",
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--count",
            "1"
        ])
        .is_err()
    );
    assert!(parse(&["client", "--addr", "nope", "--port", "1", "--count", "1"]).is_err());
}

#[test]
fn server_and_churn_args() {
    assert!(
        parse(&[
            "server",
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--read-bytes",
            "4"
        ])
        .is_err()
    );
    let cli = parse(&[
        "server",
        "--addr",
        "0.0.0.0",
        "--port",
        "0",
        "--close-first",
        "--read-bytes",
        "4",
        "--threads",
        "2",
    ])
    .unwrap();
    let Command::Server(a) = cli.cmd else {
        panic!("not server")
    };
    assert!(a.close_first && a.read_bytes == 4 && a.threads == 2 && a.backlog == 4096);

    assert!(
        parse(&[
            "churn",
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            "2",
            "--duration-secs",
            "0"
        ])
        .is_err()
    );
    assert!(
        parse(&[
            "churn",
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            "2",
            "--duration-secs",
            "0.5"
        ])
        .is_ok()
    );
    assert!(cli::parse_secs("nan").is_err() && cli::parse_secs("-1").is_err());
    assert_eq!(cli::parse_rate("22000"), Ok(22_000.0));
    assert!(cli::parse_rate("0").is_err() && cli::parse_rate("inf").is_err());
}

#[test]
fn hold_auto_spread() {
    let hold = |args: &[&str]| match parse(args).unwrap().cmd {
        Command::Hold(h) => h.spread(),
        _ => unreachable!(),
    };
    assert_eq!(
        hold(&[
            "hold",
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--count",
            "20000"
        ]),
        1
    );
    assert_eq!(
        hold(&[
            "hold",
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--count",
            "20001"
        ]),
        2
    );
    assert_eq!(
        hold(&["hold", "--addr", "::1", "--port", "0", "--count", "50000"]),
        1
    );
    assert_eq!(
        hold(&[
            "hold",
            "--addr",
            "127.0.0.1",
            "--port",
            "0",
            "--count",
            "5",
            "--dst-spread",
            "3"
        ]),
        3
    );
}

#[test]
fn listener_roundtrip_v4_v6() {
    for ip in ["127.0.0.1", "::1"] {
        let addr = SocketAddr::new(ip.parse().unwrap(), 0);
        let Ok(l) = sock::listen(addr, 16) else {
            continue; // e.g. IPv6 disabled in this sandbox
        };
        let local = l.local_addr().unwrap();
        assert_eq!(local.ip(), addr.ip());
        assert_ne!(local.port(), 0);
        assert!(sock::accept_timeout(&l, 10).unwrap().is_none());
        let c = TcpStream::connect(local).unwrap();
        let s = sock::accept_timeout(&l, 1000).unwrap().expect("accepted");
        crate::client::finish(c, 100, CloseMode::Normal).unwrap();
        let d = sock::drain(&s, None, Instant::now() + Duration::from_secs(5), None);
        assert!(d.eof);
        assert_eq!(d.bytes, 100);
    }
}

#[test]
fn sockaddr_encoding() {
    let (_, len4) = sock::to_sockaddr(&"127.0.0.1:1".parse().unwrap());
    let (_, len6) = sock::to_sockaddr(&"[::1]:1".parse().unwrap());
    assert_eq!(len4 as usize, std::mem::size_of::<libc::sockaddr_in>());
    assert_eq!(len6 as usize, std::mem::size_of::<libc::sockaddr_in6>());
}
