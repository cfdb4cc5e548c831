//! `[[listen]]` tables through the real binary: extra TCP and UDP
//! addresses served at start, added and removed by reload with the
//! established connections and the other listeners untouched, a reload
//! that cannot bind changing nothing, and duplicate addresses refused by
//! `--check-config` with their location.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use support::*;

fn listen_addrs(d: &Daemon) -> Vec<SocketAddr> {
    ctl_status(d)["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect()
}

fn udp_addrs(d: &Daemon) -> Vec<SocketAddr> {
    ctl_status(d)["udp_listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect()
}

fn reload(d: &Daemon, text: &str) -> std::process::Output {
    std::fs::write(d.config_path(), text).unwrap();
    ctl(d, &["reload"])
}

fn udp_echo(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let c = UdpSocket::bind(if to.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.send_to(data, to).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = c.recv_from(&mut buf).expect("a UDP echo");
    buf[..n].to_vec()
}

#[test]
fn extra_tcp_and_udp_addresses_are_served_from_the_start() {
    let d = Daemon::start(
        "[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\naddress = \"[::1]:0\"\nprotocol = \"tcp\"\n\
         [[listen]]\naddress = \"[::1]:0\"\nprotocol = \"udp\"\n",
    );
    let addrs = d.addrs().to_vec();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    assert!(addrs[2].is_ipv6());
    assert_eq!(listen_addrs(&d), addrs);
    for (i, a) in addrs.iter().enumerate() {
        let mut s = connect(*a);
        round_trip(&mut s, format!("to listener {i}\n").as_bytes());
    }
    let udp = udp_addrs(&d);
    assert_eq!(udp.len(), 1);
    assert!(udp[0].is_ipv6());
    assert_eq!(udp_echo(udp[0], b"v6 datagram"), b"v6 datagram");
}

#[test]
fn reload_adds_and_removes_tcp_and_udp_listeners_under_load_with_no_failed_round_trip() {
    let d = Daemon::start("pool_size = 2\n");
    let main = d.addr();
    // Load on the main listener for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut s = connect(main);
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    // round_trip panics on any failure, failing the test.
                    round_trip(&mut s, format!("client {i} round {n}\n").as_bytes());
                    n += 1;
                    done.fetch_add(1, Relaxed);
                }
                n
            })
        })
        .collect();
    let with_extra = "host = \"127.0.0.1\"\nport = 0\npool_size = 2\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\n";
    let out = reload(&d, with_extra);
    assert!(out.status.success(), "{out:?}");
    let tcp = listen_addrs(&d);
    assert_eq!(tcp.len(), 2, "{tcp:?}");
    assert_eq!(tcp[0], main, "the main listener is kept");
    let extra = tcp[1];
    let udp = udp_addrs(&d)[0];
    let mut on_extra = connect(extra);
    round_trip(&mut on_extra, b"through the new listener\n");
    assert_eq!(udp_echo(udp, b"new udp"), b"new udp");
    // A reload that changes nothing keeps every socket, port 0 included.
    let out = reload(&d, with_extra);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listen_addrs(&d), tcp);
    assert_eq!(udp_addrs(&d), vec![udp]);
    // Remove both: new connects to the extra address are refused, the
    // connection made through it stays, UDP's port is closed.
    let out = reload(&d, "host = \"127.0.0.1\"\nport = 0\npool_size = 2\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listen_addrs(&d), vec![main]);
    assert!(udp_addrs(&d).is_empty());
    wait_until(IO_TIMEOUT, "the removed TCP listener to refuse", || {
        TcpStream::connect_timeout(&extra, Duration::from_secs(1)).is_err()
    });
    wait_until(IO_TIMEOUT, "the removed UDP port to be free", || {
        UdpSocket::bind(udp).is_ok()
    });
    round_trip(&mut on_extra, b"established through a removed listener\n");
    let before = done.load(Relaxed);
    wait_until(IO_TIMEOUT, "the load to go on", || {
        done.load(Relaxed) > before + 100
    });
    stop.store(true, Relaxed);
    let total: u64 = load
        .into_iter()
        .map(|t| t.join().expect("no failed round trip"))
        .sum();
    assert!(total > 100, "{total} round trips under the reloads");
}

#[test]
fn a_tcp_address_that_cannot_be_bound_fails_the_reload_and_changes_nothing() {
    let d = Daemon::start("[[listen]]\naddress = \"127.0.0.1:0\"\n");
    let before = listen_addrs(&d);
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let out = reload(
        &d,
        &format!(
            "host = \"127.0.0.1\"\nport = 0\nmax_connections = 9\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\n[[listen]]\naddress = \"{taken}\"\n"
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {taken}")), "{err}");
    assert_eq!(listen_addrs(&d), before);
    for a in &before {
        round_trip(&mut connect(*a), b"unchanged\n");
    }
}

#[test]
fn duplicate_addresses_are_refused_with_their_location() {
    let f = config_file(
        "port = 7100\nudp = true\n\n[[listen]]\naddress = \"127.0.0.1:7100\"\nprotocol = \"udp\"\n",
    );
    let out = run_with_input(
        Command::new(ECHO_LAB)
            .arg("--check-config")
            .arg("--config")
            .arg(f.path()),
        b"",
        IO_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:5:11: key 'listen[0].address': 127.0.0.1:7100 (udp) is already served by host/port with udp = true",
        f.path().display()
    );
    assert!(err.contains(&want), "{err}");
}
