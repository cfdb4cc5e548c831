//! Many clients at once on a small pool: a waiting connection costs a
//! socket, never a thread.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const CLIENTS: usize = 500;
const THREADS: usize = 4;
const ROUNDS: usize = 3;

#[test]
fn five_hundred_clients_on_two_workers() {
    let d = Daemon::start("pool_size = 2\nmax_connections = 1000\n");
    let started = Instant::now();
    let base_fds = d.fd_count();

    // All clients connected at the same time.
    let clients: Vec<(usize, TcpStream)> = (0..CLIENTS).map(|id| (id, connect(d.addr()))).collect();
    wait_until(IO_TIMEOUT, "the daemon to accept every client", || {
        d.fd_count() >= base_fds + CLIENTS
    });
    // Two workers, the accept loop, the signal thread and main: the pool
    // does not grow with the clients.
    let threads = d.thread_count();
    assert!(
        threads < 16,
        "{threads} threads for {CLIENTS} clients on pool_size = 2"
    );

    // A few threads, each interleaving many sockets: every client writes,
    // then every client reads its own echo.
    let mut groups: Vec<Vec<(usize, TcpStream)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, c) in clients.into_iter().enumerate() {
        groups[i % THREADS].push(c);
    }
    let workers: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    for (id, s) in group.iter_mut() {
                        let msg = format!("client {id} round {round}\n");
                        s.write_all(msg.as_bytes()).unwrap();
                    }
                    for (id, s) in group.iter_mut() {
                        let msg = format!("client {id} round {round}\n");
                        assert_bytes(&read_n(s, msg.len()), msg.as_bytes());
                    }
                }
                group
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().expect("a client thread failed"));
    }
    assert_eq!(all.len(), CLIENTS);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(60),
        "{CLIENTS} clients x {ROUNDS} rounds took {elapsed:?}"
    );

    // Clients that just close are cleaned up: no descriptor leaks.
    drop(all);
    wait_until(
        Duration::from_secs(20),
        "the daemon to close every connection",
        || d.fd_count() <= base_fds,
    );
    // And it still serves.
    round_trip(&mut connect(d.addr()), b"after the crowd\n");
}
